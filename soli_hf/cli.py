"""The `soli` command line: `soli info --model DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _format_count(value: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def _print_summary(summary: dict[str, Any]) -> None:
    print("parameters:")
    for part, count in summary["parameters"].items():
        print(f"  {part:<34} {_format_count(count):>8}")
    print(f"vocabulary size:                     {summary['vocab_size']}")
    print(f"input (LR) size:                     {'x'.join(map(str, summary['input_size']))}")
    print(f"super-resolved size:                 {'x'.join(map(str, summary['sr_size']))}")
    print(f"default inference branches:          {summary['default_inference_branches']}")
    print("FLOPs per image (torch.utils.flop_counter):")
    for branches, flops in summary["flops_per_image"].items():
        print(
            f"  inference_branches={branches:<5} encoder {_format_count(flops['encoder']):>8}  "
            f"decoder/token {_format_count(flops['decoder_per_token']):>8}  "
            f"total ({flops['caption_tokens']} tokens) {_format_count(flops['total']):>8}"
        )


def run_info(args: argparse.Namespace) -> int:
    """Print parameter count, FLOPs per image for each inference mode, vocabulary and input size."""
    from .modeling_soli import SoliForConditionalGeneration
    from .profiling import model_summary

    model = SoliForConditionalGeneration.from_pretrained(args.model)
    summary = model_summary(model)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soli", description="SOLI low-resolution image captioner")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="parameters, FLOPs, vocabulary and input size of a model")
    info.add_argument("--model", required=True, help="a saved SOLI folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=run_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `soli` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
