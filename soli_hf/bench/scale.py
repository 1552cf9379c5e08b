"""Captioning throughput in one process against Ray Data workers (`soli_hf.batch.caption_archive`): the same photos,
model and batch size, photos per second from the start of a run to its last caption (the model's loading and the
actors' start included, as a user waits for them).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..batch import archive_paths, caption_archive, caption_files
from ..captioner import load_captioner
from .markdown import markdown_table


def benchmark_scale(
    photos: Sequence[str],
    *,
    model: str | None = None,
    onnx: str | None = None,
    limit: int | None = None,
    workers: Sequence[int] = (1, 2),
    batch_size: int = 16,
    threads: int = 1,
) -> dict[str, Any]:
    """Time `caption_files` in this process, then `caption_archive` with each pool size of `workers` (on the Ray
    that is running, or a local one of this machine's CPUs), on the first `limit` photos of `photos`.

    `threads`: onnxruntime threads of the single process and of each worker (ONNX); with PyTorch the single process
    uses torch's default threads and each worker `threads` (Ray's OMP_NUM_THREADS).
    """
    from ..batch.archive import import_ray

    ray = import_ray()
    paths = archive_paths(photos)[:limit]
    start = time.perf_counter()
    captioner = load_captioner(model, onnx=onnx, num_threads=threads if onnx is not None else None)
    list(caption_files(captioner, [Path(path) for path in paths], batch_size=batch_size))
    runs = [{"setting": "single process", "workers": 0, "seconds": time.perf_counter() - start}]
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count())
    for size in workers:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            caption_archive(
                paths, out, model=model, onnx=onnx, workers=size, batch_size=batch_size, threads_per_worker=threads
            )
            runs.append({"setting": f"Ray, {size} worker(s)", "workers": size, "seconds": time.perf_counter() - start})
    for run in runs:
        run["photos_per_s"] = len(paths) / run["seconds"]
    backend = f"onnx {onnx}" if onnx is not None else f"pytorch {model or 'default model'}"
    settings = {"photos": len(paths), "backend": backend, "batch_size": batch_size, "threads": threads}
    return settings | {"cpus": os.cpu_count(), "runs": runs}


def scale_markdown(results: dict[str, Any]) -> str:
    """The runs of `benchmark_scale` as a Markdown table, with the setting in a line above it."""
    rows = [(run["setting"], f"{run['seconds']:.1f}", f"{run['photos_per_s']:.1f}") for run in results["runs"]]
    heading = (
        f"{results['photos']} photos, {results['backend']}, batch {results['batch_size']}, "
        f"{results['threads']} thread(s) per worker, {results['cpus']} CPUs"
    )
    return heading + "\n\n" + markdown_table(["setting", "seconds", "photos/s"], rows)
