"""`soli push`: publish a saved SOLI folder to a Hugging Face Hub model repo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_push(args: argparse.Namespace) -> int:
    """Upload a saved SOLI folder to a Hub model repo (or list what would be sent with --dry-run)."""
    from ..hub import files_to_publish, push_to_hub

    try:
        if args.dry_run:
            print("\n".join(files_to_publish(args.folder)))
            return 0
        url = push_to_hub(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
        )
    except ValueError as error:
        print(f"soli push: error: {error}", file=sys.stderr)
        return 2
    print(url)
    return 0


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli push` (also those of scripts/push_to_hub.py)."""
    parser.add_argument("folder", type=Path, help="a saved SOLI folder with its model card (README.md)")
    parser.add_argument("repo_id", help="user/name of the model repo (created if needed)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="a branch (created if needed); default: main")
    parser.add_argument("--commit-message", default="Upload SOLI model")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be sent, send nothing")
