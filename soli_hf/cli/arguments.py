"""argparse types shared by the `soli` commands."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """The argparse type of integer flags that must be at least 1: a one-line usage error naming the flag else."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {value}")
    return value


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """`--num-beams` and `--max-new-tokens`, left unset by default: the model's generation config decides."""
    parser.add_argument(
        "--num-beams", type=positive_int, default=None, help="beam size (default: the model's generation config)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="caption length limit in tokens (default: the model's generation config)",
    )


def add_inference_branches_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--inference-branches {both,lr}` (default: the saved mode). The choices are configuration_soli's
    INFERENCE_BRANCHES, written out so that the command line loads without transformers (the torch-free install)."""
    parser.add_argument("--inference-branches", choices=["both", "lr"], default=None, help=help_text)
