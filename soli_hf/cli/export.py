"""`soli export`: a saved SOLI folder (or Hub id) -> ONNX graphs, float32 or int8 (dynamic, or the encoder static,
calibrated on the training photos of a caption dataset)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..captioner import PytorchCaptioner
from ..onnx.spec import DEFAULT_CALIBRATION_IMAGES
from .arguments import add_inference_branches_argument, positive_int


def run_export(args: argparse.Namespace) -> int:
    """Export a saved SOLI folder to ONNX (and optionally quantize it to int8); print the files written."""
    from ..onnx.export import export_onnx
    from ..onnx.folder import check_output_folder
    from ..onnx.quantize import quantize_onnx
    from ..onnx.spec import CALIBRATED_MODES

    try:
        calibrated = ", ".join(CALIBRATED_MODES[:-1]) + " or " + CALIBRATED_MODES[-1]
        if (args.quantization_mode in CALIBRATED_MODES) != (args.calibration_data is not None):
            raise ValueError(
                f"--quantization-mode {calibrated} needs --calibration-data, and --calibration-data needs one of them"
            )
        if args.calibration_data is not None and args.quantize is None:
            raise ValueError(f"--quantization-mode {args.quantization_mode} needs --quantize TARGET")
        check_output_folder(args.out)  # refused before the float32 export that --quantize makes first
        calibration = None
        if args.calibration_data is not None:
            calibration = calibration_photos(args.calibration_data, args.calibration_split, args.calibration_images)
        captioner = PytorchCaptioner.from_pretrained(args.model, inference_branches=args.inference_branches)
        export = {"processor": captioner.processor, "opset": args.opset, "backend": args.backend}
        if args.quantize is None:
            written = export_onnx(captioner.model, args.out, **export)
        else:
            with tempfile.TemporaryDirectory() as float32_dir:
                export_onnx(captioner.model, float32_dir, **export)
                written = quantize_onnx(
                    float32_dir,
                    args.out,
                    target=args.quantize,
                    mode=args.quantization_mode,
                    calibration=calibration,
                    size_budget_mb=args.size_budget_mb,
                )
    except (ValueError, OSError) as error:
        print(f"soli export: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def calibration_photos(data: str | Path, split: str = "train", count: int = DEFAULT_CALIBRATION_IMAGES) -> list[str]:
    """`count` photos of a caption dataset's `split` (as `soli train` reads it: a Flickr8k folder, a COCO or
    Karpathy JSON, an image folder), spread evenly over the split in its order: what static int8 is calibrated on.
    Use a training split, never the photos the model is evaluated on."""
    from ..data import load_caption_dataset

    paths = load_caption_dataset(data, split=split, verify_images=False)["image_path"]
    if count < 1 or not paths:
        raise ValueError(f"calibration: {count} photos asked of the {len(paths)} of split {split!r} of {data}")
    count = min(count, len(paths))
    return [paths[index * len(paths) // count] for index in range(count)]


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli export` (also those of scripts/export_onnx.py)."""
    from ..onnx.spec import (
        DEFAULT_CALIBRATION_IMAGES,
        DEFAULT_OPSET,
        DEFAULT_SIZE_BUDGET_MB,
        EXPORT_BACKENDS,
        QUANTIZATION_MODES,
        QUANTIZATION_TARGETS,
    )

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
        help="write int8 graphs for this CPU (arm64: Raspberry Pi and other ARM boards) instead of float32",
    )
    parser.add_argument(
        "--quantization-mode",
        choices=QUANTIZATION_MODES,
        default="dynamic",
        help="with --quantize: dynamic int8 for both graphs; static for the encoder's convolutions (QDQ, "
        "calibrated on --calibration-data; the decoder step stays dynamic); fast: dynamic, with the encoder's "
        "last-stage 1x1 convolutions as int8 products (GPTQ weights calibrated on --calibration-data; for "
        "inference_branches both); or compact: dynamic, with the encoder's convolution weights stored in float16 "
        "and int8 (GPTQ, calibrated) to fit --size-budget-mb (for lr)",
    )
    parser.add_argument(
        "--calibration-data",
        default=None,
        help="static, fast and compact modes: a caption dataset (a Flickr8k folder, COCO/Karpathy JSON, image "
        "folder) whose --calibration-split photos calibrate the activations' scales (static) or the int8 weights",
    )
    parser.add_argument("--calibration-split", default="train", help="its split to take the photos from (not dev)")
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="photos to calibrate on, spread over the split",
    )
    parser.add_argument(
        "--size-budget-mb",
        type=float,
        default=DEFAULT_SIZE_BUDGET_MB,
        help="compact mode: the most both graphs may weigh together, in MB (10^6 bytes)",
    )
    parser.add_argument("--backend", choices=EXPORT_BACKENDS, default="auto", help="exporter: Optimum's or torch.onnx")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX opset of both graphs")
    add_inference_branches_argument(
        parser, "export this inference mode instead of the saved one (lr: no SR branch, a smaller, faster encoder)"
    )
