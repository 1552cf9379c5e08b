"""Export a saved SOLI model to ONNX (encoder + decoder step + soli_onnx.json), as `soli export` does:

    python scripts/export_onnx.py --model models/soli-flickr8k-lr64 --out onnx/soli-flickr8k-lr64
        [--quantize arm64|avx2|avx512] [--backend auto|optimum|torch] [--opset 18]
        [--verify IMAGE ... [--num-threads N]]

`--out` is written whole or not at all: the export goes to a temporary folder beside it, renamed to `--out` once
complete, so an interrupted run leaves the previous export there intact. `--out` must therefore be a new folder, an
empty one or a previous export; a folder holding other files is refused (exit status 2), never emptied.

`--verify` captions the given images with PyTorch `generate()` (in the exported inference mode) and with the exported
graphs, both loaded by `soli_hf.captioner.load_captioner`, greedy and with the model's default beam size, and prints
how many captions agree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from soli_hf.captioner import load_captioner
from soli_hf.cli.export import add_export_arguments, run_export


def verify(args: argparse.Namespace) -> None:
    """Print, for greedy search and the default beam size, how many of the `--verify` images get identical
    captions from the model and from its export."""
    images = args.verify
    expected_captioner = load_captioner(args.model, inference_branches=args.inference_branches)
    onnx_captioner = load_captioner(onnx=args.out, num_threads=args.num_threads)
    for num_beams in sorted({1, onnx_captioner.generation_defaults["num_beams"]}):
        expected = expected_captioner.caption(images, num_beams=num_beams)
        got = onnx_captioner.caption(images, num_beams=num_beams)
        same = sum(a == b for a, b in zip(expected, got, strict=True))
        print(f"num_beams={num_beams}: {same}/{len(images)} captions identical to PyTorch generate()")
        for image, a, b in zip(images, expected, got, strict=True):
            if a != b:
                print(f"  {image}\n    torch: {a}\n    onnx:  {b}")


def main(argv: Sequence[str] | None = None) -> int:
    """`soli export` with `--verify`; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_export_arguments(parser)
    parser.add_argument("--verify", nargs="+", metavar="IMAGE", help="compare ONNX and PyTorch captions on these")
    parser.add_argument("--num-threads", type=int, help="onnxruntime threads for --verify (default: its choice)")
    args = parser.parse_args(argv)
    status = run_export(args)
    if status == 0 and args.verify:
        verify(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
