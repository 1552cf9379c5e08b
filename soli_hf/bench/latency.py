"""Caption latency of one configuration (system, backend, inference mode, thread count, batch size): greedy, every
caption exactly `tokens` new tokens, preprocessing from the decoded photo included (what a user waits for between
a photo in memory and its caption ids). At batch 1 that is the latency; at a larger batch (`batch_size`) each timed
call captions that many photos at once, and the result gives the throughput (`images_per_second`).

Every system is a `soli_hf.captioner.Captioner`, loaded as a user would (`load_captioner`; the peers are
`soli_hf.bench.peers.PeerCaptioner`), and timed by one function (`time_captions`). Each configuration runs in a
fresh subprocess (`measure_in_subprocess`, which runs `python -m soli_hf.bench.latency`), so that the peak RSS it
reports (`peak_rss_mib`) is that configuration's alone. The onnxruntime configurations run with
`SOLI_HF_NO_TORCH=1`, as a device would, and record that torch was not loaded.

This module imports neither torch nor transformers: the PyTorch captioners import them when built, and `peers`
(torch + transformers) only when a peer is; the dependency goes one way, `peers` imports nothing of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..captioner import WEIGHTS_NAME, Captioner, OnnxCaptioner, load_captioner
from ..onnx.manifest import graph_files, quantization_kind
from .memory import peak_rss_mib

PYTORCH, ORT_FP32, ORT_INT8 = "pytorch-eager", "ort-fp32", "ort-int8"
ORT_INT8_STATIC, ORT_INT8_FAST, ORT_INT8_COMPACT = "ort-int8-static", "ort-int8-fast", "ort-int8-compact"
BACKENDS = (PYTORCH, ORT_FP32, ORT_INT8, ORT_INT8_STATIC, ORT_INT8_FAST, ORT_INT8_COMPACT)
#: The graphs each onnxruntime backend must load (`quantization_kind`).
_ONNX_WEIGHTS = {
    ORT_FP32: "float32",
    ORT_INT8: "int8",
    ORT_INT8_STATIC: "static int8",
    ORT_INT8_FAST: "fast int8",
    ORT_INT8_COMPACT: "compact int8",
}
SOLI = "soli"


@dataclass(frozen=True)
class LatencySetup:
    """One configuration to time.

    Args:
        system: "soli" or a peer name of `soli_hf.bench.peers.PEERS`.
        backend: one of `BACKENDS` (peers: "pytorch-eager").
        threads: intra-op threads of torch or onnxruntime (and OMP_NUM_THREADS of the subprocess).
        tokens: new tokens of every caption (min_new_tokens = max_new_tokens).
        photos: image files, decoded before timing.
        artifact: SOLI's saved model folder (pytorch-eager) or ONNX folder (ort-*); unused for peers.
        inference_branches: SOLI's "both" or "lr"; None for peers.
        repeats: timed passes over `photos`.
        warmup: untimed calls before them (of the first photos, cycling).
        batch_size: photos per timed call (`generate` on a batch of them, the photos cycling to fill it).
    """

    system: str
    backend: str
    threads: int
    tokens: int
    photos: tuple[str, ...]
    artifact: str = ""
    inference_branches: str | None = None
    repeats: int = 1
    warmup: int = 1
    batch_size: int = 1

    @property
    def uses_torch(self) -> bool:
        """True for PyTorch configurations; the others run with SOLI_HF_NO_TORCH=1."""
        return self.backend == PYTORCH


@dataclass
class Footprint:
    """What a loaded captioner weighs: its files on disk (or fp32 parameters), its parameter count and how many of
    those are frozen pretrained parts (`frozen_modules()` of the families built on them; None for ONNX graphs)."""

    size_mib: float
    parameters: int | None
    size_source: str
    frozen_parameters: int | None = None


@dataclass
class LatencyResult:
    """Per-image latency of one configuration, its footprint and the peak RSS of its process; at a batch size
    above 1 the times are those of a call divided by its photos, and `images_per_second` the throughput."""

    system: str
    backend: str
    inference_branches: str | None
    threads: int
    median_ms: float
    p90_ms: float
    measurements: int
    warmup: int
    caption_tokens: int
    size_mib: float
    size_source: str
    parameters: int | None
    peak_rss_mib: float
    torch_loaded: bool
    per_image_ms: list[float] = field(repr=False)
    batch_size: int = 1
    images_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        return asdict(self)


def caption_tokens(captioner: Captioner, images: Sequence[Image.Image], tokens: int) -> int:
    """One timed call: `preprocess` the decoded photos, then greedy `generate` of exactly `tokens` new tokens;
    returns how many new tokens the ids hold (after the captioner's `start_tokens`)."""
    pixel_values = captioner.preprocess(list(images))
    ids = captioner.generate(pixel_values, num_beams=1, min_new_tokens=tokens, max_new_tokens=tokens)
    return ids.shape[1] - captioner.start_tokens


def time_captions(
    captioner: Captioner,
    images: Sequence[Image.Image],
    *,
    repeats: int,
    warmup: int,
    tokens: int,
    batch_size: int = 1,
) -> list[float]:
    """Wall seconds of `caption_tokens` for each batch of `batch_size` images (`batches`), `repeats` passes, after
    `warmup` untimed calls; every caption must have exactly `tokens` new tokens (`AssertionError` otherwise)."""
    pass_batches = batches(images, batch_size)
    for index in range(warmup):
        _check_length(caption_tokens(captioner, pass_batches[index % len(pass_batches)], tokens), tokens)
    seconds = []
    for _ in range(repeats):
        for batch in pass_batches:
            start = time.perf_counter()
            length = caption_tokens(captioner, batch, tokens)
            seconds.append(time.perf_counter() - start)
            _check_length(length, tokens)
    return seconds


def batches(images: Sequence[Image.Image], batch_size: int) -> list[list[Image.Image]]:
    """One pass over `images` in batches of `batch_size`: as many batches as it takes to hold every image once, the
    images cycling to fill the last one (and a batch larger than `images`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    count = -(-len(images) // batch_size)
    return [[images[(b * batch_size + i) % len(images)] for i in range(batch_size)] for b in range(count)]


def _check_length(length: int, tokens: int) -> None:
    assert length == tokens, f"a caption has {length} new tokens, expected exactly {tokens}"


def footprint(captioner: Captioner, artifact: str | os.PathLike = "") -> Footprint:
    """What a loaded captioner weighs: its graph files (ONNX), its weights file (a saved folder `artifact`), or for a
    model without one (the random-weight peers, a Hub id) its fp32 parameters at 4 bytes each."""
    if isinstance(captioner, OnnxCaptioner):
        files = graph_files(captioner.runtime.manifest)
        size = sum((Path(artifact) / name).stat().st_size for name in files)
        return Footprint(size / 2**20, None, " + ".join(files))
    model = captioner.model
    parameters = sum(p.numel() for p in model.parameters())
    frozen_modules = model.frozen_modules() if hasattr(model, "frozen_modules") else []
    frozen = sum(p.numel() for module in frozen_modules for p in module.parameters())
    weights = Path(artifact) / WEIGHTS_NAME if artifact else None
    if weights is not None and weights.is_file():
        return Footprint(weights.stat().st_size / 2**20, parameters, WEIGHTS_NAME, frozen)
    return Footprint(4 * parameters / 2**20, parameters, "fp32 parameters x 4 bytes", frozen)


def build_captioner(setup: LatencySetup) -> Captioner:
    """The captioner of a configuration, loaded as a user would (`load_captioner`), with `setup.threads` intra-op
    threads; an onnxruntime one must have been exported with `setup.inference_branches` and be int8 exactly for
    "ort-int8" (`ValueError` otherwise)."""
    if setup.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {setup.backend!r}")
    if setup.uses_torch:
        import torch

        torch.set_num_threads(setup.threads)
    if setup.system != SOLI:
        from .peers import PeerCaptioner

        return PeerCaptioner(setup.system)
    if setup.inference_branches is None:
        raise ValueError("a SOLI configuration needs its inference_branches ('both' or 'lr')")
    if setup.uses_torch:
        return load_captioner(setup.artifact, inference_branches=setup.inference_branches)
    captioner = load_captioner(
        onnx=setup.artifact, inference_branches=setup.inference_branches, num_threads=setup.threads
    )
    wanted, found = _ONNX_WEIGHTS[setup.backend], quantization_kind(captioner.quantization)
    if found != wanted:
        raise ValueError(f"{setup.artifact}: {found} graphs, expected {wanted} ones for {setup.backend}")
    return captioner


def measure(setup: LatencySetup) -> LatencyResult:
    """Time one configuration in this process (its peak RSS is this process's)."""
    captioner = build_captioner(setup)
    weight = footprint(captioner, setup.artifact)
    images = [_decoded(path) for path in setup.photos]
    seconds = time_captions(
        captioner, images, repeats=setup.repeats, warmup=setup.warmup, tokens=setup.tokens, batch_size=setup.batch_size
    )
    milliseconds = [1000 * s / setup.batch_size for s in seconds]
    median_ms = float(np.median(milliseconds))
    return LatencyResult(
        system=setup.system,
        backend=setup.backend,
        inference_branches=setup.inference_branches,
        threads=setup.threads,
        median_ms=median_ms,
        p90_ms=float(np.percentile(milliseconds, 90)),
        measurements=len(milliseconds),
        warmup=setup.warmup,
        caption_tokens=setup.tokens,
        size_mib=weight.size_mib,
        size_source=weight.size_source,
        parameters=weight.parameters,
        peak_rss_mib=peak_rss_mib(),
        torch_loaded="torch" in sys.modules,
        per_image_ms=milliseconds,
        batch_size=setup.batch_size,
        images_per_second=1000 / median_ms,
    )


def _decoded(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def measure_in_subprocess(setup: LatencySetup, timeout: float = 1800) -> LatencyResult:
    """`measure(setup)` in a fresh Python process with `OMP_NUM_THREADS=threads`. onnxruntime configurations run
    with `SOLI_HF_NO_TORCH=1` and must not load torch (`RuntimeError` otherwise, or when the process fails)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(setup.threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    env["SOLI_HF_NO_TORCH"] = "0" if setup.uses_torch else "1"
    completed = subprocess.run(
        [sys.executable, "-m", "soli_hf.bench.latency", json.dumps(asdict(setup))],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"latency subprocess failed for {setup}:\n{completed.stderr[-4000:]}")
    result = LatencyResult(**json.loads(completed.stdout.strip().splitlines()[-1]))
    if not setup.uses_torch and result.torch_loaded:
        raise RuntimeError(f"{setup.backend} loaded torch in a SOLI_HF_NO_TORCH=1 process")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Subprocess entry point: one `LatencySetup` as JSON in, one `LatencyResult` as JSON on the last line out."""
    values = json.loads((sys.argv[1:] if argv is None else argv)[0])
    print(json.dumps(measure(LatencySetup(**{**values, "photos": tuple(values["photos"])})).to_dict()))


if __name__ == "__main__":
    main()
