"""The `soli` command line, one module per command.

    soli caption IMAGE... [--model DIR|HUB_ID | --onnx DIR] [--inference-branches both|lr] [--num-beams N]
                 [--max-new-tokens N] [--num-threads N] [--json] [--output FILE] [--html PAGE]
    soli caption PHOTO --model DIR (--box X0,Y0,X1,Y1 [--box ...] | --regions auto) [--json] [--html PAGE]
    soli caption --ray INPUT --out DIR [--model DIR | --onnx DIR] [--workers N] [--batch-size B] [--column NAME]
                 [--device cpu|cuda]
    soli export --model DIR --out DIR [--quantize arm64|avx2|avx512] [--inference-branches lr] [--backend ...]
    soli evaluate [--model DIR [DIR ...]] [--onnx DIR [DIR ...]] --data PATH --split S --out DIR [--protocol paper]
                  [--sizes ...] [--num-beams N] [--max-new-tokens N]
    soli push FOLDER USER/NAME [--private] [--revision BRANCH] [--commit-message TEXT] [--dry-run]
    soli info [--model DIR|HUB_ID]

Without `--model`, `soli caption` and `soli info` use the default model (`soli_hf.captioner.default_model()`: the
source checkout's models/soli-flickr8k-lr64, else the Hub's soli-hf/soli-flickr8k-lr64, downloaded once and cached
by huggingface_hub). Decoding flags left out: the model's own generation config decides (the shipped model: beam
search 3, 24 tokens at most).

`soli caption` writes one line per image as soon as its batch is captioned: `path<TAB>caption`, or with `--json`
JSON Lines (one `{"path": ..., "caption": ...}` object per line). With `--output FILE` the lines are appended to
FILE instead of stdout, flushed one by one; running the same command again after a crash or a kill leaves out the
images FILE already holds (and drops a last line cut off by the kill). A file that cannot be read (missing, not a
regular file, not an image, corrupt, too many pixels, NaN values) is skipped with `soli caption: PATH: REASON,
skipped` on stderr, and the exit code is then 1. `--html` writes its page when the run ends, from what was made.
With `--box` or `--regions auto` and a region captioner's folder (AlignCap) one photo's regions are described
instead: one `x0,y0,x1,y1<TAB>caption` line per region, and with `--html` the photo with its numbered boxes (see
`soli_hf.cli.caption`). With `--ray` (the `scale` extra) a folder, a glob, a list file or a Parquet/CSV column
of paths is captioned by a pool of Ray actors into Parquet part files in DIR (path, caption, error); rerunning
resumes (`soli_hf.batch`).
Integer flags are checked when parsed: a value below 1 is a usage error (exit code 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .caption import add_caption_arguments, run_caption
from .evaluate import add_evaluate_arguments, run_evaluate
from .export import add_export_arguments, run_export
from .info import add_info_arguments, run_info
from .push import add_push_arguments, run_push

#: Each command: its help line, the function that adds its flags and the one that runs it.
COMMANDS = {
    "caption": ("caption image files, folders or globs", add_caption_arguments, run_caption),
    "export": ("export a saved SOLI folder to ONNX (float32 or int8)", add_export_arguments, run_export),
    "push": ("publish a saved SOLI folder to the Hugging Face Hub", add_push_arguments, run_push),
    "info": ("parameters, FLOPs, vocabulary and input size of a model", add_info_arguments, run_info),
    "evaluate": (
        "caption a split with one or more models (PyTorch or ONNX), score it, write a report (HTML samples, plots)",
        add_evaluate_arguments,
        run_evaluate,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `soli` argument parser, one subcommand per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="soli", description="SOLI low-resolution image captioner")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, handler) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `soli` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


__all__ = ["build_parser", "main"]
