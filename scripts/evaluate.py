"""Evaluate SOLI models: `python scripts/evaluate.py --model DIR [DIR ...] --data PATH --split dev --out DIR
[--num-beams N] [--protocol paper] [--sizes 16,24,32,48,64,96,128]` (the same as `soli evaluate`)."""

import sys

from soli_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
