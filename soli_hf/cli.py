"""The `soli` command line.

    soli caption IMAGE... [--model DIR|HUB_ID | --onnx DIR] [--num-beams N] [--json] [--output FILE] [--html PAGE]
    soli export --model DIR --out DIR [--quantize arm64|avx2|avx512] [--inference-branches lr] [--backend ...]
    soli evaluate --model DIR [DIR ...] --data PATH --split S --out DIR [--protocol paper] [--sizes ...]
    soli push FOLDER USER/NAME [--private] [--revision BRANCH] [--commit-message TEXT] [--dry-run]
    soli info --model DIR

`soli caption` writes one line per image as soon as its batch is captioned: `path<TAB>caption`, or with `--json`
JSON Lines (one `{"path": ..., "caption": ...}` object per line). With `--output FILE` the lines are appended to
FILE instead of stdout, flushed one by one; running the same command again after a crash or a kill leaves out the
images FILE already holds (and drops a last line cut off by the kill). A file that cannot be read (missing, not a
regular file, not an image, corrupt, too many pixels, NaN values) is skipped with `soli caption: PATH: REASON,
skipped` on stderr, and the exit code is then 1. `--html` writes its page when the run ends, from what was made.
Integer flags are checked when parsed: a value below 1 is a usage error (exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .caption_files import (
    DEFAULT_MODEL_DIR,
    FileCaptioner,
    ResultsFile,
    SkippedImage,
    caption_files,
    find_images,
    format_result,
    load_captioner,
    onnx_captioner,
    pytorch_captioner,
)
from .bench.html_gallery import GalleryCard, GalleryWriter


def positive_int(text: str) -> int:
    """The argparse type of integer flags that must be at least 1: a one-line usage error naming the flag else."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {value}")
    return value


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
    from .bench.flops import model_summary

    model = SoliForConditionalGeneration.from_pretrained(args.model)
    summary = model_summary(model)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _batch_captioner(args: argparse.Namespace) -> tuple[FileCaptioner, str]:
    """The captioner `soli caption` asked for (ONNX folder, model folder or the shipped model) and its name."""
    decoding = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    if args.onnx is not None:
        from .onnx import SoliOnnxCaptioner

        return onnx_captioner(SoliOnnxCaptioner(args.onnx, num_threads=args.num_threads), **decoding), args.onnx.name
    if args.model is None and not DEFAULT_MODEL_DIR.is_dir():
        raise ValueError(f"no default model at {DEFAULT_MODEL_DIR}; pass --model DIR or --onnx DIR")
    model_name = args.model or str(DEFAULT_MODEL_DIR)
    return pytorch_captioner(*load_captioner(model_name), **decoding), Path(model_name).name


def _open_results(args: argparse.Namespace, paths: list[Path]) -> tuple[ResultsFile | None, list[Path]]:
    """The --output file (None: stdout) and the paths it does not hold yet, saying on stderr what it held."""
    if args.output is None:
        return None, paths
    results = ResultsFile.open(args.output, args.json)
    if results.dropped_cut_line:
        print(f"soli caption: {args.output}: dropped its last line, cut off when a run was killed", file=sys.stderr)
    todo = [path for path in paths if str(path) not in results.done]
    if len(todo) < len(paths):
        print(
            f"soli caption: {args.output} already holds {len(paths) - len(todo)} of the {len(paths)} images, "
            f"skipping them; {len(todo)} left to caption",
            file=sys.stderr,
        )
    return results, todo


def _show_caption_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Show a warning of `soli caption` (e.g. an image's values outside its pixel range) as one line on stderr."""
    tqdm.write(f"soli caption: warning: {message}", file=sys.stderr)


def _caption_and_write(
    args: argparse.Namespace, captioner: FileCaptioner, paths: list[Path], results: ResultsFile | None, title: str
) -> int:
    """Caption `paths`, writing each result as it comes (to `results` or stdout, and to the --html page); naming
    each skipped file on stderr. Returns how many were skipped."""
    skipped = 0
    with contextlib.ExitStack() as stack:
        page = stack.enter_context(GalleryWriter(args.html, title)) if args.html is not None else None
        stack.enter_context(warnings.catch_warnings())
        warnings.showwarning = _show_caption_warning
        for result in caption_files(captioner, paths, batch_size=args.batch_size):
            if isinstance(result, SkippedImage):
                skipped += 1
                tqdm.write(f"soli caption: {result.path}: {result.reason}, skipped", file=sys.stderr)
                continue
            if results is not None:
                results.write(result.path, result.caption)
            else:  # above the progress bar, at once
                tqdm.write(format_result(result.path, result.caption, args.json), file=sys.stdout)
                sys.stdout.flush()
            if page is not None:
                page.add(GalleryCard(result.lr_image, str(result.path), [("", result.caption)]))
    return skipped


def run_caption(args: argparse.Namespace) -> int:
    """Caption images, writing each result as soon as it is made (see the module docstring). Returns 2 for a usage
    error (nothing captioned), 1 when a file was skipped, else 0."""
    if args.onnx is not None and args.model is not None:
        print("soli caption: error: give --model or --onnx, not both", file=sys.stderr)
        return 2
    try:
        paths = find_images(args.images)
        captioner, model_name = _batch_captioner(args)
        results, todo = _open_results(args, paths)
    except (ValueError, OSError) as error:
        print(f"soli caption: error: {error}", file=sys.stderr)
        return 2
    try:
        with results if results is not None else contextlib.nullcontext():
            skipped = _caption_and_write(args, captioner, todo, results, f"SOLI captions ({model_name})")
    except BrokenPipeError:
        # Whoever read stdout has gone (`soli caption ... | head`): stop quietly, as the shell's tools do; what
        # `--output` holds is complete. stdout is pointed at /dev/null so that Python's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1 if skipped else 0


def run_export(args: argparse.Namespace) -> int:
    """Export a saved SOLI folder to ONNX (and optionally quantize it to int8); print the files written."""
    from .onnx.export import export_onnx
    from .onnx.folder import check_output_folder
    from .onnx.quantize import quantize_onnx

    try:
        check_output_folder(args.out)  # refused before the float32 export that --quantize makes first
        model, processor = load_captioner(args.model, args.inference_branches)
        export = {"processor": processor, "opset": args.opset, "backend": args.backend}
        if args.quantize is None:
            written = export_onnx(model, args.out, **export)
        else:
            with tempfile.TemporaryDirectory() as float32_dir:
                export_onnx(model, float32_dir, **export)
                written = quantize_onnx(float32_dir, args.out, target=args.quantize)
    except (ValueError, OSError) as error:
        print(f"soli export: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli export` (also those of scripts/export_onnx.py)."""
    from .onnx.spec import DEFAULT_OPSET, EXPORT_BACKENDS, QUANTIZATION_TARGETS

    parser.add_argument("--model", type=Path, required=True, help="a saved SOLI folder (model + processor)")
    parser.add_argument(
        "--out", type=Path, required=True,
        help="the folder to write: new, empty or an earlier export (replaced whole, never half-written)",
    )  # fmt: skip
    parser.add_argument(
        "--quantize", choices=QUANTIZATION_TARGETS, default=None,
        help="write dynamic int8 graphs for this CPU (arm64: Raspberry Pi and other ARM boards) instead of float32",
    )  # fmt: skip
    parser.add_argument("--backend", choices=EXPORT_BACKENDS, default="auto", help="exporter: Optimum's or torch.onnx")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX opset of both graphs")
    parser.add_argument(
        "--inference-branches", choices=["both", "lr"], default=None,
        help="export this inference mode instead of the saved one (lr: no SR branch, a smaller, faster encoder)",
    )  # fmt: skip


def run_push(args: argparse.Namespace) -> int:
    """Upload a saved SOLI folder to a Hub model repo (or list what would be sent with --dry-run)."""
    from .hub import files_to_publish, push_to_hub

    try:
        if args.dry_run:
            print("\n".join(files_to_publish(args.folder)))
            return 0
        url = push_to_hub(
            args.folder, args.repo_id, private=args.private, revision=args.revision,
            commit_message=args.commit_message,
        )  # fmt: skip
    except ValueError as error:
        print(f"soli push: error: {error}", file=sys.stderr)
        return 2
    print(url)
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated pixel sizes, e.g. 16,32,64; got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes wants positive pixel sizes, got {text!r}")
    return sizes


def run_evaluate(args: argparse.Namespace) -> int:
    """Caption a split with one or more models (at 64x64, over the paper protocol and/or fixed sizes), score it
    and write the report."""
    import logging

    from .evaluation import LowResCondition, fixed_sizes, paper_protocol, run_evaluation

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    conditions = [LowResCondition(args.degradation)]
    if args.protocol == "paper":
        conditions += paper_protocol()
    if args.sizes:
        conditions += fixed_sizes(args.sizes, args.degradation)
    try:
        run_evaluation(
            args.model, args.data, args.split, args.out, conditions=conditions, data_format=args.data_format,
            num_beams=args.num_beams, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            max_images=args.max_images, inference_branches=args.inference_branches, meteor=not args.no_meteor,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        print(f"soli evaluate: error: {error}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text(encoding="utf-8"))
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli evaluate` (also those of scripts/evaluate.py)."""
    from .image_transforms_soli import DEGRADATIONS

    parser.add_argument("--model", required=True, nargs="+", help="saved SOLI folder(s); several are compared")
    parser.add_argument("--data", required=True, help="a dataset folder or JSON file (any soli_hf.data format)")
    parser.add_argument(
        "--data-format", default=None,
        help="a format of soli_hf.data (flickr8k, coco, karpathy, imagefolder); detected when left out",
    )  # fmt: skip
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", required=True, type=Path, help="report folder (created)")
    parser.add_argument("--num-beams", type=positive_int, default=1)
    parser.add_argument("--max-new-tokens", type=positive_int, default=20)
    parser.add_argument("--batch-size", type=positive_int, default=50)
    parser.add_argument("--max-images", type=positive_int, default=None, help="only the first N images of the split")
    parser.add_argument(
        "--degradation", choices=DEGRADATIONS, default="bicubic", help="of the main condition and of --sizes"
    )
    parser.add_argument(
        "--protocol", choices=["paper"], default=None,
        help="paper: scale factors 0.5/0.2/0.1/0.05 x bilinear/step/step_gaussian",
    )  # fmt: skip
    parser.add_argument("--sizes", type=_sizes, default=None, help="fixed LR sizes, e.g. 16,24,32,48,64,96,128")
    parser.add_argument("--inference-branches", choices=["both", "lr"], default=None, help="override the saved mode")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (the only Java metric)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soli", description="SOLI low-resolution image captioner")
    commands = parser.add_subparsers(dest="command", required=True)
    caption = commands.add_parser("caption", help="caption image files, folders or globs")
    caption.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    caption.add_argument("--model", default=None, help="a saved SOLI folder or Hub id (default: the shipped model)")
    caption.add_argument("--onnx", type=Path, default=None, help="caption with an exported ONNX folder instead")
    caption.add_argument("--num-threads", type=positive_int, default=None, help="onnxruntime threads (with --onnx)")
    caption.add_argument("--num-beams", type=positive_int, default=3)
    caption.add_argument("--max-new-tokens", type=positive_int, default=20)
    caption.add_argument("--batch-size", type=positive_int, default=16)
    caption.add_argument(
        "--json", action="store_true",
        help='write JSON Lines, one {"path": ..., "caption": ...} object per image, instead of path<TAB>caption lines',
    )  # fmt: skip
    caption.add_argument(
        "--output", type=Path, default=None,
        help="append the result lines to this file (flushed per image) instead of printing them; run the same "
        "command again to continue a run that was stopped: the images it holds are left out",
    )  # fmt: skip
    caption.add_argument(
        "--html", type=Path, default=None, help="also write a page of the LR inputs and captions (when the run ends)"
    )
    caption.set_defaults(handler=run_caption)
    export = commands.add_parser("export", help="export a saved SOLI folder to ONNX (float32 or int8)")
    add_export_arguments(export)
    export.set_defaults(handler=run_export)
    push = commands.add_parser("push", help="publish a saved SOLI folder to the Hugging Face Hub")
    push.add_argument("folder", type=Path, help="a saved SOLI folder with its model card (README.md)")
    push.add_argument("repo_id", help="user/name of the model repo (created if needed)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None, help="a branch (created if needed); default: main")
    push.add_argument("--commit-message", default="Upload SOLI model")
    push.add_argument("--dry-run", action="store_true", help="list the files that would be sent, send nothing")
    push.set_defaults(handler=run_push)
    info = commands.add_parser("info", help="parameters, FLOPs, vocabulary and input size of a model")
    info.add_argument("--model", required=True, help="a saved SOLI folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=run_info)
    evaluate = commands.add_parser("evaluate", help="caption a split, score it, write a report (HTML samples, plots)")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `soli` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
