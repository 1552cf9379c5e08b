"""`soli caption`: find image files (paths, folders, globs), caption them in batches with any `Captioner` (a SOLI
folder or Hub id in PyTorch, or an ONNX folder), and write each result as soon as it is made. Imports neither torch
nor transformers at import time, so it serves a torch-free install too.

A run never loses what it made: each file is turned into its small LR input the moment it is opened (a batch
holds those, never full-size photos), a file that cannot be read is skipped with its reason, and results are
written one line per image, flushed at once. With an output file (`ResultsFile`) a killed run is continued by
running the same command again: the images already captioned are left out.

`soli caption --ray INPUT... --out DIR` runs the same captioning on a pool of Ray Data workers
(`soli_hf.batch.caption_archive`): Parquet part files (path, caption, error) in DIR, resumed the same way.

`soli caption PHOTO --model DIR --box X0,Y0,X1,Y1 [--box ...]` (or `--regions auto`) describes regions of one photo
with a region captioner (`RegionCaptioner`, an AlignCap folder): one `x0,y0,x1,y1<TAB>caption` line per box (JSON
Lines with `--json`), and with `--html` a page that draws the numbered boxes over the photo with their captions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from ..batch import SkippedImage, caption_archive, caption_files, find_images
from ..bench.html_gallery import GalleryCard, GalleryRegion, GalleryWriter, write_gallery
from ..captioner import DEFAULT_MODEL_ID, Captioner, RegionCaption, RegionCaptioner, default_model, load_captioner
from ..image_transforms_soli import ImageInputError, to_rgb_image
from .arguments import add_decoding_arguments, add_inference_branches_argument, positive_int

#: The flags of one run in a single process, and those of a run on Ray (`--ray`), which the other refuses.
SINGLE_PROCESS_FLAGS = {
    "output": "--output",
    "html": "--html",
    "json": "--json",
    "box": "--box",
    "regions": "--regions",
}
#: The flags of whole-photo captioning that a run on regions (--box, --regions) refuses.
WHOLE_PHOTO_FLAGS = {"output": "--output", "onnx": "--onnx"}


@dataclass(frozen=True)
class BoxArgument:
    """A `--box` value: the text as given and its (x0, y0, x1, y1)."""

    text: str
    box: tuple[float, float, float, float]


def box_argument(text: str) -> BoxArgument:
    """The argparse type of `--box X0,Y0,X1,Y1` (pixels of the photo as shown): four finite numbers, none negative,
    x0 < x1 and y0 < y1; a usage error naming the value else. Whether the box lies inside the photo is checked when
    the photo is open (`box_outside_photo`)."""
    try:
        box = tuple(float(part) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(value) for value in box):
        raise argparse.ArgumentTypeError(f"{text!r}: expected X0,Y0,X1,Y1, four numbers separated by commas")
    x0, y0, x1, y1 = box
    if min(box) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} has a negative coordinate: pixels of the photo start at 0")
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(f"{text!r} is inverted (x1 < x0 or y1 < y0): give X0,Y0,X1,Y1")
    if x1 == x0 or y1 == y0:
        raise argparse.ArgumentTypeError(f"{text!r} has zero area (x0 = x1 or y0 = y1)")
    return BoxArgument(text, box)


def box_outside_photo(argument: BoxArgument, path: Path, size: tuple[int, int]) -> str | None:
    """What is wrong with a `--box` that reaches past its photo of `size` (width, height), or None."""
    width, height = size
    x0, y0, x1, y1 = argument.box
    if x1 <= width and y1 <= height:
        return None
    return (
        f"--box {argument.text} reaches outside {path} ({width}x{height} pixels): boxes are in the photo's own pixels, "
        f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}"
    )


def format_box(box: tuple[float, float, float, float]) -> str:
    """`x0,y0,x1,y1`, whole numbers without decimals."""
    return ",".join(f"{value:g}" for value in box)


def format_region(path: Path, region: RegionCaption, as_json: bool) -> str:
    """One region result line (no newline): `x0,y0,x1,y1<TAB>caption`, or a JSON object with the path, the box, the
    caption and, for a proposed region, its class name and score."""
    if not as_json:
        return f"{format_box(region.box)}\t{region.caption}"
    record = {"path": str(path), "box": list(region.box), "caption": region.caption}
    if region.class_name is not None:
        record |= {"class_name": region.class_name, "score": region.score}
    return json.dumps(record)


RAY_FLAGS = {"out": "--out", "workers": "--workers", "column": "--column"}


def format_result(path: Path | str, caption: str, as_json: bool) -> str:
    """One result line (no newline): a JSON object `{"path", "caption"}` or `path<TAB>caption`."""
    return json.dumps({"path": str(path), "caption": caption}) if as_json else f"{path}\t{caption}"


def _parsed_path(line: str, as_json: bool) -> str | None:
    """The path of a result line, or None when the line is not one `format_result` writes."""
    if not as_json:
        return line.rsplit("\t", 1)[0] if "\t" in line else None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("path"), str) and isinstance(record.get("caption"), str)
    return record["path"] if ok else None


@dataclass
class ResultsFile:
    """The `--output` file of `soli caption`: one `format_result` line per image, appended and flushed as each
    caption is made, so that a killed run loses nothing it wrote.

    Opening it reads the paths it already holds (`done`), to be left out of this run. A last line without its
    newline was cut off by a kill while being written: it is dropped (`dropped_cut_line`) and that image is
    captioned again.
    """

    path: Path
    as_json: bool
    done: set[str]
    dropped_cut_line: bool
    stream: TextIO

    @classmethod
    def open(cls, path: Path, as_json: bool) -> ResultsFile:
        """Read what `path` holds (if it exists) and open it for appending; blank lines are ignored.

        Raises:
            ValueError: a complete line that is not a result of this format, naming the file and line.
        """
        path = Path(path)
        data = path.read_bytes() if path.exists() else b""
        complete = data.rfind(b"\n") + 1  # the bytes up to the last newline; 0 when there is none
        done = set()
        for number, line in enumerate(data[:complete].decode("utf-8", "surrogateescape").split("\n")[:-1], 1):
            if not line.strip():
                continue
            parsed = _parsed_path(line, as_json)
            if parsed is None:
                kind = 'a JSON object with "path" and "caption"' if as_json else "path<TAB>caption"
                raise ValueError(f"{path} line {number}: not a result line ({kind}); give another --output file")
            done.add(parsed)
        if complete < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(complete)
        stream = open(path, "a", encoding="utf-8", errors="surrogateescape")
        return cls(path, as_json, done, complete < len(data), stream)

    def write(self, path: Path, caption: str) -> None:
        """Append one result line and flush it to the operating system."""
        self.stream.write(format_result(path, caption, self.as_json) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Flush the file to disk and close it."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
    args: argparse.Namespace, captioner: Captioner, paths: list[Path], results: ResultsFile | None
) -> int:
    """Caption `paths`, writing each result as it comes (to `results` or stdout, and to the --html page); naming
    each skipped file on stderr. Returns how many were skipped."""
    skipped = 0
    decoding = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    with contextlib.ExitStack() as stack:
        title = f"SOLI captions ({captioner.name})"
        page = stack.enter_context(GalleryWriter(args.html, title)) if args.html is not None else None
        stack.enter_context(warnings.catch_warnings())
        warnings.showwarning = _show_caption_warning
        for result in caption_files(captioner, paths, batch_size=args.batch_size, **decoding):
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
    """Caption images, writing each result as soon as it is made (see `soli_hf.cli`). Returns 2 for a usage error
    (nothing captioned), 1 when a file was skipped, else 0."""
    if args.ray:
        return run_ray_caption(args)
    misplaced = [flag for name, flag in RAY_FLAGS.items() if getattr(args, name) is not None]
    if misplaced:
        print(f"soli caption: error: {', '.join(misplaced)} apply to a run on Ray (--ray)", file=sys.stderr)
        return 2
    if args.box or args.regions:
        return run_region_caption(args)
    try:
        paths = find_images(args.images)
        captioner = load_captioner(
            args.model,
            onnx=args.onnx,
            inference_branches=args.inference_branches,
            device=args.device,
            num_threads=args.num_threads,
        )
        results, todo = _open_results(args, paths)
    except (ValueError, OSError) as error:
        print(f"soli caption: error: {error}", file=sys.stderr)
        return 2
    if isinstance(captioner, RegionCaptioner):
        print(
            f"soli caption: {captioner.name} is a region captioner: it describes each whole photo (its full-photo "
            "box); give --box X0,Y0,X1,Y1 or --regions auto to describe regions",
            file=sys.stderr,
        )
    try:
        with results if results is not None else contextlib.nullcontext():
            skipped = _caption_and_write(args, captioner, todo, results)
    except BrokenPipeError:
        # Whoever read stdout has gone (`soli caption ... | head`): stop quietly, as the shell's tools do; what
        # `--output` holds is complete. stdout is pointed at /dev/null so that Python's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1 if skipped else 0


def _region_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags of a run on regions (`--box` or `--regions`), or None."""
    if args.box and args.regions:
        return "give boxes (--box) or --regions auto, not both"
    misplaced = [flag for name, flag in WHOLE_PHOTO_FLAGS.items() if getattr(args, name) is not None]
    if misplaced:
        return (
            f"{', '.join(misplaced)} apply to whole-photo captioning, not to --box / --regions (these describe one "
            "photo's regions with --model, a region captioner folder, and print them)"
        )
    return None


def _load_region_captioner(args: argparse.Namespace) -> tuple[Path, RegionCaptioner]:
    """The one photo and the region captioner of a run on regions; `ValueError` (or `OSError`) naming the problem."""
    problem = _region_usage_problem(args)
    if problem is not None:
        raise ValueError(problem)
    paths = find_images(args.images)
    flag = "--box" if args.box else "--regions"
    if len(paths) != 1:
        raise ValueError(f"{flag} describes regions of one photo, got {len(paths)} photos: run once per photo")
    captioner = load_captioner(args.model, inference_branches=args.inference_branches, device=args.device)
    if not isinstance(captioner, RegionCaptioner):
        raise ValueError(
            f"{flag} needs a region captioner (an AlignCap folder: --model DIR); {args.model or default_model()} "
            "captions whole photos only: leave out --box / --regions"
        )
    return paths[0], captioner


def run_region_caption(args: argparse.Namespace) -> int:
    """`soli caption PHOTO --box ...` / `--regions auto`: describe the given boxes, or the regions the model's
    segmenter proposes, of one photo; print one line per region and write the --html page. Returns 2 for a usage
    error (a bad box, a whole-photo model, several photos), 1 when the photo cannot be read, else 0."""
    try:
        path, captioner = _load_region_captioner(args)
    except (ValueError, OSError) as error:
        print(f"soli caption: error: {error}", file=sys.stderr)
        return 2
    try:
        photo = to_rgb_image(path)  # its EXIF orientation applied: boxes are in the photo as it is shown
    except ImageInputError as error:
        print(f"soli caption: {path}: {error.reason}, skipped", file=sys.stderr)
        return 1
    problems = [box_outside_photo(argument, path, photo.size) for argument in args.box or ()]
    problems = [problem for problem in problems if problem is not None]
    if problems:
        print(f"soli caption: error: {problems[0]}", file=sys.stderr)
        return 2
    boxes = None if args.regions else [[argument.box for argument in args.box]]
    decoding = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    try:
        regions = captioner.caption_regions(photo, boxes, **decoding)[0]
    except ValueError as error:  # e.g. --regions auto with a model that has no segmenter
        print(f"soli caption: error: {path}: {error}", file=sys.stderr)
        return 2
    if args.regions and regions[0].class_name is None:
        print(f"soli caption: {path}: the segmenter found no object; described the whole photo", file=sys.stderr)
    for region in regions:
        print(format_region(path, region, args.json))
    if args.html is not None:
        lr_image = captioner.lr_images(captioner.preprocess([photo]))[0]
        notes = [
            format_box(r.box) + ("" if r.class_name is None else f", {r.class_name} {r.score:.2f}") for r in regions
        ]
        drawn = [GalleryRegion(r.box, r.caption, note) for r, note in zip(regions, notes, strict=True)]
        card = GalleryCard(lr_image, str(path), [], photo=photo, regions=drawn)
        write_gallery(args.html, f"Regions of {path.name} ({captioner.name})", [card])
    return 0


def _ray_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags of `soli caption --ray`, or None."""
    if args.out is None:
        return "--ray writes Parquet part files into a folder: give it with --out DIR"
    misplaced = [flag for name, flag in SINGLE_PROCESS_FLAGS.items() if getattr(args, name) not in (None, False)]
    return f"{', '.join(misplaced)} apply to a run in one process, not to --ray" if misplaced else None


def run_ray_caption(args: argparse.Namespace) -> int:
    """`soli caption --ray`: caption the inputs on Ray Data into the Parquet part files of `--out`
    (`soli_hf.batch.caption_archive`), saying on stderr what the run did. Returns 2 for a usage error (nothing
    captioned), 1 when a photo could not be read (an error row), else 0."""
    problem = _ray_usage_problem(args)
    if problem is not None:
        print(f"soli caption: error: {problem}", file=sys.stderr)
        return 2
    try:
        run = caption_archive(
            args.images,
            args.out,
            model=args.model,
            onnx=args.onnx,
            column=args.column,
            workers=args.workers,
            batch_size=args.batch_size,
            device=args.device,
            threads_per_worker=args.num_threads or 1,
            inference_branches=args.inference_branches,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
        )
    except (ImportError, ValueError, OSError) as error:
        print(f"soli caption: error: {error}", file=sys.stderr)
        return 2
    print(
        f"soli caption: {run.out}: {run.captioned} captioned and {run.errors} unreadable (error rows) by "
        f"{run.workers} worker(s) into {run.parts} part file(s); {run.already_done} of the {run.total} photos were "
        "there already",
        file=sys.stderr,
    )
    return 1 if run.errors else 0


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `soli caption`."""
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders or glob patterns; with --ray also text lists of paths (.txt, .lst) and Parquet or "
        "CSV tables with a column of paths (.parquet, .csv)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"a saved captioner folder or Hub id (default: the shipped model, {DEFAULT_MODEL_ID}); a region "
        "captioner (AlignCap) folder describes each whole photo's full-photo box, or the regions of --box / --regions",
    )
    parser.add_argument("--onnx", type=Path, default=None, help="caption with an exported ONNX folder instead")
    parser.add_argument(
        "--num-threads",
        type=positive_int,
        default=None,
        help="onnxruntime threads (with --onnx); with --ray the CPUs each worker takes (default 1), which are its "
        "onnxruntime or torch threads",
    )
    parser.add_argument("--device", default=None, help="the PyTorch device: cpu (default), cuda, cuda:1, ...")
    add_inference_branches_argument(
        parser,
        "run the model in this mode instead of the saved one (lr: no SR branch, faster); with --onnx, the "
        "mode the folder was exported with",
    )
    add_decoding_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--json",
        action="store_true",
        help='write JSON Lines, one {"path": ..., "caption": ...} object per image, instead of path<TAB>caption lines',
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="append the result lines to this file (flushed per image) instead of printing them; run the same "
        "command again to continue a run that was stopped: the images it holds are left out",
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        help="also write a page of the LR inputs and captions (when the run ends); with --box / --regions, the photo "
        "with each box drawn and numbered, its caption beside it",
    )
    regions = parser.add_argument_group(
        "regions (a region captioner: --model an AlignCap folder)",
        "describe regions of ONE photo: one x0,y0,x1,y1<TAB>caption line per region (with --json, JSON Lines)",
    )
    regions.add_argument(
        "--box",
        type=box_argument,
        action="append",
        default=None,
        metavar="X0,Y0,X1,Y1",
        help="describe this box, in the photo's own pixels (as shown: EXIF orientation applied); repeat for more",
    )
    regions.add_argument(
        "--regions",
        choices=["auto"],
        default=None,
        help="auto: describe the regions the model's segmenter proposes (up to 5 connected object segments, "
        "largest and most confident first; the whole photo when it finds none)",
    )
    ray = parser.add_argument_group(
        "on Ray (pip install 'soli-hf[scale]')",
        "caption on a pool of Ray Data workers (a local Ray, or the cluster RAY_ADDRESS names) into Parquet part "
        "files (path, caption, error) of a folder; the same command again captions only the photos it lacks",
    )
    ray.add_argument("--ray", action="store_true", help="caption on Ray Data; needs --out")
    ray.add_argument("--out", type=Path, default=None, help="the folder of Parquet part files (with --ray)")
    ray.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="captioner actors (default: the cluster's CPUs divided by --num-threads, or its GPUs with --device cuda)",
    )
    ray.add_argument("--column", default=None, help="the column of paths of a Parquet or CSV input (default: path)")
