"""`soli evaluate`: caption a split with one or more models (PyTorch folders and/or ONNX folders), score it, write
the report (see `soli_hf.evaluation`). On region data (flickr30k_entities) the models are region captioners
(AlignCap folders): every box is described and scored, beside each model's tag-only baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..image_transforms_soli import DEGRADATIONS
from .arguments import add_decoding_arguments, add_inference_branches_argument, positive_int


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes wants comma-separated pixel sizes, e.g. 16,32,64; got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes wants positive pixel sizes, got {text!r}")
    return sizes


def run_evaluate(args: argparse.Namespace) -> int:
    """Caption a split with one or more models (at the model's input size, over the paper protocol and/or fixed
    sizes), score it and write the report."""
    import logging

    from ..evaluation import LowResCondition, fixed_sizes, paper_protocol, run_evaluation

    if not args.model and not args.onnx:
        print("soli evaluate: error: give --model DIR [DIR ...] and/or --onnx DIR [DIR ...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    conditions = [LowResCondition(args.degradation)]
    if args.protocol == "paper":
        conditions += paper_protocol()
    if args.sizes:
        conditions += fixed_sizes(args.sizes, args.degradation)
    try:
        run_evaluation(
            args.model or [],
            args.data,
            args.split,
            args.out,
            onnx_dirs=args.onnx or [],
            conditions=conditions,
            data_format=args.data_format,
            num_beams=args.num_beams,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_images=args.max_images,
            inference_branches=args.inference_branches,
            num_threads=args.num_threads,
            meteor=not args.no_meteor,
            latency_photos=args.latency_photos,
            resume=args.resume,
        )
    except (ValueError, OSError) as error:
        print(f"soli evaluate: error: {error}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text(encoding="utf-8"))
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli evaluate` (also those of scripts/evaluate.py)."""
    parser.add_argument(
        "--model",
        nargs="+",
        default=None,
        help="saved model folder(s) or Hub id(s), run in PyTorch; several compared (region data: AlignCap folders)",
    )
    parser.add_argument(
        "--onnx",
        nargs="+",
        type=Path,
        default=None,
        help="ONNX folder(s) of soli export, compared with each other and with the --model ones (after them)",
    )
    parser.add_argument("--data", required=True, help="a dataset folder or JSON file (any soli_hf.data format)")
    parser.add_argument(
        "--data-format",
        default=None,
        help="a format of soli_hf.data (flickr8k, coco, karpathy, imagefolder; flickr30k_entities: regions); "
        "detected when left out",
    )
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", required=True, type=Path, help="report folder (created)")
    add_decoding_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=50)
    parser.add_argument(
        "--max-images", type=positive_int, default=None, help="only the first N images of the split (regions: theirs)"
    )
    parser.add_argument(
        "--degradation", choices=DEGRADATIONS, default="bicubic", help="of the main condition and of --sizes"
    )
    parser.add_argument(
        "--protocol",
        choices=["paper"],
        default=None,
        help="paper: scale factors 0.5/0.2/0.1/0.05 x bilinear/step/step_gaussian",
    )
    parser.add_argument("--sizes", type=_sizes, default=None, help="fixed LR sizes, e.g. 16,24,32,48,64,96,128")
    add_inference_branches_argument(
        parser, "run the --model ones in this mode instead of the saved one; the --onnx ones must have it"
    )
    parser.add_argument("--num-threads", type=positive_int, default=None, help="onnxruntime threads (with --onnx)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (the only Java metric)")
    parser.add_argument(
        "--latency-photos",
        type=int,
        default=0,
        help="time each --model's one-thread ms per caption on this many photos (0: not timed; an idle machine)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the captions an interrupted evaluation into the same --out saved (same models, settings, split)",
    )
