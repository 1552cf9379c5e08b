"""Captioning a whole archive on Ray Data: `caption_archive` spreads the photos over a pool of captioner actors
(`map_batches` on `ray.data.ActorPoolStrategy`), each holding one captioner that `load_captioner` builds once
(ONNX, or PyTorch on a CPU or a GPU), and writes the results as Parquet part files while the run goes on.

The output folder holds `part-<run>-<n>.parquet` files of rows (path, caption, error): the absolute path, its
caption ("" when it could not be read) and the reason it could not be read (null when it was captioned). Each part
is written under a hidden temporary name, flushed to disk and renamed into place, so a part file is complete or
absent; a killed run loses only the parts in flight. Running the same call again captions only the paths that no
part file holds (an error row counts as done), so that each path is written exactly once.

Ray and pyarrow are the `scale` extra (`pip install 'soli-hf[scale]'`), imported when a run starts. Ray starts a
local instance unless one is running or `RAY_ADDRESS` names a cluster (`ray start --head`), whose nodes must see
the photos and the model at the same paths; the part files are written by this process (the driver).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..captioner import load_captioner
from ..storage import write_file_atomically
from ..storage.atomic import TEMPORARY_MARK  # a part being written: `.<part name>.tmp-<pid>`, never read
from .files import SkippedImage, caption_files
from .inputs import archive_paths

if TYPE_CHECKING:
    import pyarrow as pa

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
#: Batches of each part file: the most a kill can lose per worker, and how many rows the output files hold.
DEFAULT_BATCHES_PER_PART = 32
SCALE_EXTRA_HINT = "pip install 'soli-hf[scale]'"


@dataclass(frozen=True)
class ArchiveRun:
    """What one `caption_archive` call did.

    Attributes:
        out: the output folder.
        total: the paths of the inputs.
        already_done: those that the folder's part files held before this run (left out).
        captioned: the paths this run captioned.
        errors: the paths this run wrote as error rows (unreadable files).
        parts: the part files this run wrote.
        workers: the size of the actor pool (0 when nothing was left to caption).
    """

    out: Path
    total: int
    already_done: int
    captioned: int
    errors: int
    parts: int
    workers: int


def import_ray() -> ModuleType:
    """`ray` with Ray Data; an `ImportError` that names the extra to install when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is its own extra of ray
    except ImportError as error:
        raise ImportError(
            f"captioning on Ray needs Ray Data, the `scale` extra: {SCALE_EXTRA_HINT} ({error})"
        ) from error
    return ray


def written_paths(out: Path) -> set[str]:
    """The paths that the part files of `out` hold (none when it does not exist).

    Raises:
        ValueError: a part file that cannot be read or has no `path` column, naming it.
    """
    import pyarrow as pa
    import pyarrow.parquet

    done: set[str] = set()
    for part in part_files(out):
        try:
            done.update(pyarrow.parquet.read_table(part, columns=["path"]).column("path").to_pylist())
        except (pa.ArrowException, KeyError, OSError) as error:
            raise ValueError(
                f"{part}: not a part file of soli caption --ray ({error}); move it out of {out}"
            ) from error
    return done


def part_files(out: Path) -> list[Path]:
    """The complete part files of an output folder, sorted."""
    return sorted(Path(out).glob(f"{PART_PREFIX}*{PART_SUFFIX}"))


def read_archive_results(out: Path) -> pa.Table:
    """All rows (path, caption, error) of an output folder, as one table."""
    import pyarrow as pa
    import pyarrow.parquet

    return pa.concat_tables([pyarrow.parquet.read_table(part) for part in part_files(out)] or [_results_table([])])


class ArchiveCaptioner:
    """A Ray Data actor of `caption_archive`: one captioner, loaded once, captioning batches of paths into rows
    (path, caption, error) as `caption_files` does for `soli caption`."""

    def __init__(self, loading: dict[str, Any], decoding: dict[str, int | None]) -> None:
        self.captioner = load_captioner(**loading)
        self.decoding = decoding

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The result rows of a batch with a `path` column, in its order."""
        paths = [Path(path) for path in batch.column("path").to_pylist()]
        results = {
            result.path: result
            for result in caption_files(self.captioner, paths, batch_size=len(paths), **self.decoding)
        }
        return _results_table([results[path] for path in paths])


def _results_table(results: Sequence[Any]) -> pa.Table:
    """Rows (path, caption, error) of `CaptionedImage`s and `SkippedImage`s."""
    import pyarrow as pa

    skipped = [isinstance(result, SkippedImage) for result in results]
    columns = {
        "path": [str(result.path) for result in results],
        "caption": ["" if bad else result.caption for result, bad in zip(results, skipped, strict=True)],
        "error": [result.reason if bad else None for result, bad in zip(results, skipped, strict=True)],
    }
    schema = pa.schema([("path", pa.string()), ("caption", pa.string()), ("error", pa.string())])
    return pa.table(columns, schema=schema)


def _write_part(table: pa.Table, path: Path) -> None:
    """Write a part file in one step (`storage.write_file_atomically`): complete or absent, never half written."""
    import pyarrow.parquet

    write_file_atomically(path, lambda tmp: pyarrow.parquet.write_table(table, tmp))


def _remove_unfinished_parts(out: Path) -> None:
    """Delete the temporary files of parts that a killed run was writing."""
    for tmp in Path(out).glob(f".{PART_PREFIX}*{TEMPORARY_MARK}*"):
        tmp.unlink()


def _local_or_hub(model: str | os.PathLike | None) -> str | None:
    """A model folder or ONNX folder as an absolute path (the actors may run elsewhere); a Hub id as it is."""
    if model is None:
        return None
    return os.path.abspath(model) if Path(model).exists() else os.fspath(model)


def _pool_size(ray: ModuleType, workers: int | None, gpu: bool, threads_per_worker: int) -> int:
    """`workers`, or as many as the Ray cluster's GPUs (with a GPU device) or CPUs hold now, at least 1."""
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        return workers
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 0) if gpu else resources.get("CPU", 1) // threads_per_worker))


def _part_rows(paths: int, batch_size: int, workers: int, batches_per_part: int) -> int:
    """Rows of each block (and so of each part file): `batches_per_part` batches, fewer when that would leave
    fewer than about four blocks per worker."""
    batches = math.ceil(paths / batch_size)
    return batch_size * max(1, min(batches_per_part, math.ceil(batches / (4 * workers))))


def caption_archive(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    column: str | None = None,
    workers: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    threads_per_worker: int = 1,
    inference_branches: str | None = None,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    batches_per_part: int = DEFAULT_BATCHES_PER_PART,
) -> ArchiveRun:
    """Caption every photo of `inputs` on Ray Data, writing Parquet part files (path, caption, error) into `out` as
    the run goes; the paths that `out` already holds are left out (resume).

    Args:
        inputs: image files, folders, globs, text lists of paths, Parquet or CSV tables (see `archive_paths`).
        out: the output folder (made if missing).
        model: a saved SOLI folder or Hub id, for PyTorch (default: `default_model()`).
        onnx: an exported ONNX folder instead (CPU only).
        column: the tables' column of paths (default "path").
        workers: actors in the pool (default: the cluster's GPUs with a GPU device, else its CPUs divided by
            `threads_per_worker`).
        batch_size: photos per `generate` call of an actor.
        device: the PyTorch device of each actor ("cpu", "cuda"); with "cuda" each actor takes one GPU.
        threads_per_worker: CPUs each actor reserves from Ray; the onnxruntime threads of an ONNX actor (Ray sets
            OMP_NUM_THREADS, which torch follows, to the same number).
        inference_branches: "both" or "lr" (see `load_captioner`).
        num_beams, max_new_tokens: decoding; None keeps the model's generation config.
        batches_per_part: batches per part file at most.

    Returns:
        What the run did (`ArchiveRun`).

    Raises:
        ImportError: Ray Data is not installed (naming the `scale` extra).
        ValueError: bad inputs (see `archive_paths`), a model that cannot be loaded, settings that do not apply to
            it, an `out` that is a file or holds an unreadable part file.
    """
    ray = import_ray()
    if batch_size < 1 or batches_per_part < 1 or threads_per_worker < 1:
        raise ValueError("batch_size, batches_per_part and threads_per_worker must be positive integers")
    paths = archive_paths(inputs, column)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: not a folder (the output of a Ray run is a folder of Parquet part files)")
    out.mkdir(parents=True, exist_ok=True)
    _remove_unfinished_parts(out)
    done = written_paths(out)
    todo = [path for path in paths if path not in done]
    loading = {
        "model": _local_or_hub(model),
        "onnx": _local_or_hub(onnx),
        "inference_branches": inference_branches,
        "device": device,
        "num_threads": threads_per_worker if onnx is not None else None,
    }
    # Loaded once here, on the CPU, so that a bad folder or setting fails at once with its message rather than in
    # every actor; a PyTorch model is moved to `device` by the actors only (the driver may have no GPU).
    load_captioner(**(loading if onnx is not None else loading | {"device": None}))
    if not todo:
        return ArchiveRun(out, len(paths), len(paths) - len(todo), 0, 0, 0, 0)
    if not ray.is_initialized():
        ray.init()
    gpu = device is not None and device.startswith("cuda")
    pool = _pool_size(ray, workers, gpu, threads_per_worker)
    rows = _part_rows(len(todo), batch_size, pool, batches_per_part)
    import pyarrow as pa

    blocks = [
        pa.table({"path": pa.array(todo[start : start + rows], pa.string())}) for start in range(0, len(todo), rows)
    ]
    results = ray.data.from_arrow(blocks).map_batches(
        ArchiveCaptioner,
        fn_constructor_kwargs={
            "loading": loading,
            "decoding": {"num_beams": num_beams, "max_new_tokens": max_new_tokens},
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=threads_per_worker,
        num_gpus=1 if gpu else None,
        udf_modifying_row_count=False,
        # An ONNX actor needs neither torch nor transformers: `import soli_hf` leaves them out (lighter, faster start).
        runtime_env={"env_vars": {"SOLI_HF_NO_TORCH": "1"}} if onnx is not None else None,
    )
    run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    parts = captioned = errors = 0
    for table in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        _write_part(table, out / f"{PART_PREFIX}{run}-{parts:05d}{PART_SUFFIX}")
        parts += 1
        readable = table.column("error").null_count  # an error row has its reason there, a caption row a null
        captioned += readable
        errors += len(table) - readable
    return ArchiveRun(out, len(paths), len(paths) - len(todo), captioned, errors, parts, pool)
