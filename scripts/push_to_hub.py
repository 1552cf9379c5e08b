"""Publish a saved SOLI folder: `python scripts/push_to_hub.py FOLDER USER/NAME [--private] [--revision BRANCH]
[--commit-message TEXT] [--dry-run]` (the same as `soli push`). Needs a write token (`hf auth login` or HF_TOKEN)."""

import sys

from soli_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
