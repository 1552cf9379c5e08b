"""The latency benchmark of `scripts/benchmark.py latency`: SOLI in PyTorch eager, onnxruntime fp32, onnxruntime
int8 (the "arm64" settings, exported and quantized into a temporary folder) and, given calibration photos, static
int8, each inference mode, with 1 thread and all threads, then the peers (`soli_hf.bench.peers`), on scikit-image's
sample photos, at batch 1; then the throughput at a larger batch (`batch_size`, all threads) of PyTorch, both int8
and the peers. Every configuration runs in its own subprocess (`soli_hf.bench.latency.measure_in_subprocess`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .exports import export_soli, inference_modes
from .latency import (
    ORT_INT8,
    ORT_INT8_COMPACT,
    ORT_INT8_FAST,
    ORT_INT8_STATIC,
    PYTORCH,
    SOLI,
    LatencySetup,
    measure_in_subprocess,
)
from .latency_report import soli_over_peer, target_check
from .machine import library_versions, machine

#: Every caption's new tokens in the latency benchmark (min_new_tokens = max_new_tokens).
DEFAULT_TOKENS = 12
TOKENS_NOTE = (
    "about the mean Flickr8k caption: the training captions average 11.8 words, 11.0 SOLI tokens, 12 with the end token"
)
DECODING = (
    "batch 1, greedy (num_beams=1), min_new_tokens = max_new_tokens = tokens; SOLI keeps its saved "
    "no_repeat_ngram_size and suppress_tokens, the peers their config defaults"
)
SOLI_WARMUP, PEER_PHOTOS, PEER_WARMUP, PEER_REPEATS = 3, 3, 1, 1
#: The batch of the throughput rows (one untimed batch first), and the backends timed there (with the peers).
BATCH_SIZE, BATCH_BACKENDS = 32, (PYTORCH, ORT_INT8, ORT_INT8_STATIC, ORT_INT8_FAST, ORT_INT8_COMPACT)


def latency_setups(
    artifacts: dict[tuple[str, str], Path],
    photos: list[str],
    tokens: int,
    repeats: int,
    peers: bool,
    batch_size: int = BATCH_SIZE,
) -> list[LatencySetup]:
    """Every configuration: SOLI's backends x inference modes x {1, all} threads, then the peers, at batch 1; then
    (unless `batch_size` is 1) SOLI's `BATCH_BACKENDS` x inference modes and the peers at `batch_size`, all
    threads, `repeats` timed batches each (one for the peers)."""
    from .peers import PEERS

    all_threads = os.cpu_count() or 1
    thread_counts = sorted({1, all_threads})
    setups = [
        LatencySetup(SOLI, backend, threads, tokens, tuple(photos), str(artifact), mode, repeats, SOLI_WARMUP)
        for (backend, mode), artifact in artifacts.items()
        for threads in thread_counts
    ]
    if peers:
        peer_photos = tuple(photos[:PEER_PHOTOS])
        setups += [
            LatencySetup(name, PYTORCH, threads, tokens, peer_photos, repeats=PEER_REPEATS, warmup=PEER_WARMUP)
            for name in PEERS
            for threads in thread_counts
        ]
    if batch_size == 1:
        return setups
    batched = {"threads": all_threads, "tokens": tokens, "photos": tuple(photos), "batch_size": batch_size}
    setups += [
        LatencySetup(SOLI, backend, **batched, artifact=str(artifact), inference_branches=mode, repeats=repeats)
        for (backend, mode), artifact in artifacts.items()
        if backend in BATCH_BACKENDS
    ]
    if peers:
        setups += [LatencySetup(name, PYTORCH, **batched, repeats=PEER_REPEATS) for name in PEERS]
    return setups


def benchmark_latency(
    model_dir: Path,
    tokens: int,
    repeats: int,
    peers: bool,
    batch_size: int = BATCH_SIZE,
    calibration: Sequence[str] = (),
) -> dict[str, Any]:
    """Latency of every configuration, each in its own subprocess, on scikit-image's sample photos: the report
    (JSON-ready) that `latency_report` reads. `calibration`: the photos static and fast int8 are calibrated on
    (training photos; none: no such rows); `batch_size` 1: no throughput rows."""
    from tqdm import tqdm

    from .peers import PEERS
    from .sample_photos import load_sample_photos

    modes = inference_modes(model_dir)
    with tempfile.TemporaryDirectory(prefix="soli_latency_") as scratch:
        folder = Path(scratch)
        photos = []
        for name, photo in load_sample_photos().items():
            photo.save(folder / f"{name}.png")
            photos.append(str(folder / f"{name}.png"))
        artifacts = export_soli(model_dir, modes, folder, calibration)
        setups = latency_setups(artifacts, photos, tokens, repeats, peers, batch_size)
        results = []
        for setup in (progress := tqdm(setups, unit="config")):
            progress.set_description(
                f"{setup.system} {setup.backend} {setup.inference_branches or '-'} x{setup.threads} "
                f"batch {setup.batch_size}"
            )
            results.append(measure_in_subprocess(setup).to_dict())
    single = [r for r in results if r["batch_size"] == 1]
    soli_rows = [r for r in single if r["system"] == SOLI]
    peer_rows = [
        r | {"like": PEERS[r["system"]].like, "soli_over_peer": soli_over_peer(soli_rows, r)}
        for r in single
        if r["system"] != SOLI
    ]
    return {
        "model": str(model_dir),
        "machine": machine(),
        "versions": library_versions(),
        "photos": [Path(p).stem for p in photos],
        "tokens": tokens,
        "tokens_note": TOKENS_NOTE,
        "decoding": DECODING,
        "repeats": repeats,
        "target": target_check(soli_rows),
        "fast_target": target_check(soli_rows, ORT_INT8_FAST),
        "compact_target": target_check(soli_rows, ORT_INT8_COMPACT),
        "results": soli_rows,
        "peers": peer_rows,
        "throughput": [r for r in results if r["batch_size"] > 1],
    }
