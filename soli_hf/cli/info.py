"""`soli info`: parameters, FLOPs per image (each inference mode), vocabulary and input size of a model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..captioner import DEFAULT_MODEL_ID, PytorchCaptioner, default_model


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
    for branch, encoded in summary["branch_inputs"].items():
        label = f"{'LR branch' if branch == 'lr' else 'branch B'} encodes:"
        print(f"{label:<37}{encoded['input']} {'x'.join(map(str, encoded['size']))}")
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
    from ..bench.flops import model_summary

    try:
        captioner = PytorchCaptioner.from_pretrained(default_model() if args.model is None else args.model)
        summary = model_summary(captioner.model)
    except (ValueError, OSError) as error:
        print(f"soli info: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli info`."""
    parser.add_argument(
        "--model", default=None, help=f"a saved SOLI folder or Hub id (default: the shipped model, {DEFAULT_MODEL_ID})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
