"""`soli caption`: find image files (paths, folders, globs), caption them in batches with any `Captioner` (a SOLI
folder or Hub id in PyTorch, or an ONNX folder), and write each result as soon as it is made. Imports neither torch
nor transformers at import time, so it serves a torch-free install too.

A run never loses what it made: each file is turned into its small LR input the moment it is opened (a batch
holds those, never full-size photos), a file that cannot be read is skipped with its reason, and results are
written one line per image, flushed at once. With an output file (`ResultsFile`) a killed run is continued by
running the same command again: the images already captioned are left out.

`soli caption --ray INPUT... --out DIR` runs the same captioning on a pool of Ray Data workers
(`soli_hf.batch.caption_archive`): Parquet part files (path, caption, error) in DIR, resumed the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from ..batch import SkippedImage, caption_archive, caption_files, find_images
from ..bench.html_gallery import GalleryCard, GalleryWriter
from ..captioner import DEFAULT_MODEL_ID, Captioner, load_captioner
from .arguments import add_decoding_arguments, add_inference_branches_argument, positive_int

#: The flags of one run in a single process, and those of a run on Ray (`--ray`), which the other refuses.
SINGLE_PROCESS_FLAGS = {"output": "--output", "html": "--html", "json": "--json"}
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
    try:
        with results if results is not None else contextlib.nullcontext():
            skipped = _caption_and_write(args, captioner, todo, results)
    except BrokenPipeError:
        # Whoever read stdout has gone (`soli caption ... | head`): stop quietly, as the shell's tools do; what
        # `--output` holds is complete. stdout is pointed at /dev/null so that Python's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1 if skipped else 0


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
        help=f"a saved SOLI folder or Hub id (default: the shipped model, {DEFAULT_MODEL_ID})",
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
        "--html", type=Path, default=None, help="also write a page of the LR inputs and captions (when the run ends)"
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
