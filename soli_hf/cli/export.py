"""`soli export`: a saved SOLI folder (or Hub id) -> ONNX graphs, float32 or dynamic int8."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..captioner import PytorchCaptioner
from .arguments import add_inference_branches_argument, positive_int


def run_export(args: argparse.Namespace) -> int:
    """Export a saved SOLI folder to ONNX (and optionally quantize it to int8); print the files written."""
    from ..onnx.export import export_onnx
    from ..onnx.folder import check_output_folder
    from ..onnx.quantize import quantize_onnx

    try:
        check_output_folder(args.out)  # refused before the float32 export that --quantize makes first
        captioner = PytorchCaptioner.from_pretrained(args.model, inference_branches=args.inference_branches)
        export = {"processor": captioner.processor, "opset": args.opset, "backend": args.backend}
        if args.quantize is None:
            written = export_onnx(captioner.model, args.out, **export)
        else:
            with tempfile.TemporaryDirectory() as float32_dir:
                export_onnx(captioner.model, float32_dir, **export)
                written = quantize_onnx(float32_dir, args.out, target=args.quantize)
    except (ValueError, OSError) as error:
        print(f"soli export: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli export` (also those of scripts/export_onnx.py)."""
    from ..onnx.spec import DEFAULT_OPSET, EXPORT_BACKENDS, QUANTIZATION_TARGETS

    parser.add_argument("--model", required=True, help="a saved SOLI folder (model + processor) or Hub id")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the folder to write: new, empty or an earlier export (replaced whole, never half-written)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATION_TARGETS,
        default=None,
        help="write dynamic int8 graphs for this CPU (arm64: Raspberry Pi and other ARM boards) instead of float32",
    )
    parser.add_argument("--backend", choices=EXPORT_BACKENDS, default="auto", help="exporter: Optimum's or torch.onnx")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX opset of both graphs")
    add_inference_branches_argument(
        parser, "export this inference mode instead of the saved one (lr: no SR branch, a smaller, faster encoder)"
    )
