"""Export a saved SOLI model to ONNX (encoder + decoder step + soli_onnx.json), as `soli export` does:

    python scripts/export_onnx.py --model models/soli-flickr8k-lr64 --out onnx/soli-flickr8k-lr64
        [--quantize arm64|avx2|avx512] [--backend auto|optimum|torch] [--opset 18] [--verify IMAGE ... [--num-threads N]]

`--out` is written whole or not at all: the export goes to a temporary folder beside it, renamed to `--out` once
complete, so an interrupted run leaves the previous export there intact. `--out` must therefore be a new folder, an
empty one or a previous export; a folder holding other files is refused (exit status 2), never emptied.

`--verify` captions the given images with PyTorch `generate()` and with the exported graphs
(`SoliOnnxCaptioner`), greedy and with the model's default beam size, and prints how many captions agree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from soli_hf.cli import add_export_arguments, run_export


def verify(model_dir: Path, onnx_dir: Path, images: list[str], num_threads: int | None) -> None:
    """Print, for greedy search and the default beam size, how many of the images get identical captions."""
    import torch

    from soli_hf import SoliForConditionalGeneration, SoliProcessor
    from soli_hf.onnx.runtime import SoliOnnxCaptioner

    model = SoliForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = SoliProcessor.from_pretrained(model_dir)
    captioner = SoliOnnxCaptioner(onnx_dir, num_threads=num_threads)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    for num_beams in sorted({1, captioner.generation.num_beams}):
        with torch.no_grad():
            ids = model.generate(pixel_values=pixel_values, num_beams=num_beams)
        expected = processor.batch_decode(ids, skip_special_tokens=True)
        got = captioner.caption(images, num_beams=num_beams)
        same = sum(a == b for a, b in zip(expected, got))
        print(f"num_beams={num_beams}: {same}/{len(images)} captions identical to PyTorch generate()")
        for image, a, b in zip(images, expected, got):
            if a != b:
                print(f"  {image}\n    torch: {a}\n    onnx:  {b}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_export_arguments(parser)
    parser.add_argument("--verify", nargs="+", metavar="IMAGE", help="compare ONNX and PyTorch captions on these")
    parser.add_argument("--num-threads", type=int, help="onnxruntime threads for --verify (default: its choice)")
    args = parser.parse_args(argv)
    status = run_export(args)
    if status == 0 and args.verify:
        verify(args.model, args.out, args.verify, args.num_threads)
    return status


if __name__ == "__main__":
    sys.exit(main())
