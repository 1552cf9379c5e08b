"""Caption latency of one configuration (system, backend, inference mode, thread count): batch 1, greedy, every
caption exactly `tokens` new tokens, preprocessing from the decoded photo included (what a user waits for between
a photo in memory and its caption ids).

Each configuration runs in a fresh subprocess (`measure_in_subprocess`, which runs `python -m soli_hf.bench.latency`),
so that the peak RSS it reports (`ru_maxrss`) is that configuration's alone. The onnxruntime configurations run
with `SOLI_HF_NO_TORCH=1`, as a device would, and record that torch was not loaded.

This module imports neither torch nor transformers; the PyTorch captioners import them when built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .memory import peak_rss_mib

PYTORCH, ORT_FP32, ORT_INT8 = "pytorch-eager", "ort-fp32", "ort-int8"
BACKENDS = (PYTORCH, ORT_FP32, ORT_INT8)
SOLI = "soli"

#: A captioner: one decoded photo in, the number of new tokens it generated out.
Captioner = Callable[[Image.Image], int]


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
        warmup: untimed captions before them (of the first photos, cycling).
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

    @property
    def uses_torch(self) -> bool:
        """True for PyTorch configurations; the others run with SOLI_HF_NO_TORCH=1."""
        return self.backend == PYTORCH


@dataclass
class Footprint:
    """What a loaded captioner weighs: its files on disk (or fp32 parameters) and its parameter count."""

    size_mib: float
    parameters: int | None
    size_source: str


@dataclass
class LatencyResult:
    """Per-image latency of one configuration, its footprint and the peak RSS of its process."""

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

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        return asdict(self)


def time_captions(
    caption: Captioner, images: Sequence[Image.Image], *, repeats: int, warmup: int, tokens: int
) -> list[float]:
    """Wall seconds of `caption(image)` for each image, `repeats` passes, after `warmup` untimed captions; every
    caption must have exactly `tokens` new tokens (`AssertionError` otherwise)."""
    for index in range(warmup):
        _check_length(caption(images[index % len(images)]), tokens)
    seconds = []
    for _ in range(repeats):
        for image in images:
            start = time.perf_counter()
            length = caption(image)
            seconds.append(time.perf_counter() - start)
            _check_length(length, tokens)
    return seconds


def _check_length(length: int, tokens: int) -> None:
    assert length == tokens, f"a caption has {length} new tokens, expected exactly {tokens}"


def soli_pytorch_captioner(
    model_dir: str | os.PathLike, inference_branches: str, tokens: int, threads: int
) -> tuple[Captioner, Footprint]:
    """SOLI in PyTorch eager: `SoliProcessor` + greedy `generate` (its other saved generation settings kept)."""
    import torch

    from ..modeling_soli import SoliForConditionalGeneration
    from ..processing_soli import SoliProcessor

    torch.set_num_threads(threads)
    model = SoliForConditionalGeneration.from_pretrained(model_dir, inference_branches=inference_branches).eval()
    processor = SoliProcessor.from_pretrained(model_dir)

    @torch.no_grad()
    def caption(image: Image.Image) -> int:
        inputs = processor(images=image, return_tensors="pt")
        ids = model.generate(**inputs, num_beams=1, do_sample=False, min_new_tokens=tokens, max_new_tokens=tokens)
        return ids.shape[1] - 1  # the start token

    weights = Path(model_dir) / "model.safetensors"
    parameters = sum(p.numel() for p in model.parameters())
    return caption, Footprint(weights.stat().st_size / 2**20, parameters, "model.safetensors")


def soli_onnx_captioner(
    onnx_dir: str | os.PathLike, inference_branches: str, quantized: bool, tokens: int, threads: int
) -> tuple[Captioner, Footprint]:
    """SOLI on onnxruntime (`SoliOnnxCaptioner`): preprocessing + greedy search over the exported graphs, which
    must have been exported with `inference_branches` and be int8 (`quantize_onnx`) when `quantized`."""
    from ..onnx.runtime import SoliOnnxCaptioner

    captioner = SoliOnnxCaptioner(onnx_dir, num_threads=threads)
    manifest = captioner.manifest
    if (manifest["inference_branches"], "quantization" in manifest) != (inference_branches, quantized):
        raise ValueError(
            f"{onnx_dir}: inference_branches={manifest['inference_branches']!r}, "
            f"quantized={'quantization' in manifest}; expected {inference_branches!r}, {quantized}"
        )

    def caption(image: Image.Image) -> int:
        pixel_values = captioner.preprocess(image)
        ids = captioner.generate(pixel_values, num_beams=1, min_new_tokens=tokens, max_new_tokens=tokens)
        return ids.shape[1] - 1

    files = [graph["file"] for graph in manifest["graphs"].values()]
    size = sum((Path(onnx_dir) / name).stat().st_size for name in files)
    return caption, Footprint(size / 2**20, None, " + ".join(files))


def build_captioner(setup: LatencySetup) -> tuple[Captioner, Footprint]:
    """The captioner of a configuration, with its footprint."""
    if setup.system != SOLI:
        from .peers import peer_captioner

        return peer_captioner(setup.system, setup.tokens, setup.threads)
    if setup.inference_branches is None:
        raise ValueError("a SOLI configuration needs its inference_branches ('both' or 'lr')")
    if setup.backend == PYTORCH:
        return soli_pytorch_captioner(setup.artifact, setup.inference_branches, setup.tokens, setup.threads)
    if setup.backend in (ORT_FP32, ORT_INT8):
        quantized = setup.backend == ORT_INT8
        return soli_onnx_captioner(setup.artifact, setup.inference_branches, quantized, setup.tokens, setup.threads)
    raise ValueError(f"backend must be one of {BACKENDS}, got {setup.backend!r}")


def measure(setup: LatencySetup) -> LatencyResult:
    """Time one configuration in this process (its peak RSS is this process's)."""
    caption, footprint = build_captioner(setup)
    images = [_decoded(path) for path in setup.photos]
    seconds = time_captions(caption, images, repeats=setup.repeats, warmup=setup.warmup, tokens=setup.tokens)
    milliseconds = [1000 * s for s in seconds]
    return LatencyResult(
        system=setup.system,
        backend=setup.backend,
        inference_branches=setup.inference_branches,
        threads=setup.threads,
        median_ms=float(np.median(milliseconds)),
        p90_ms=float(np.percentile(milliseconds, 90)),
        measurements=len(milliseconds),
        warmup=setup.warmup,
        caption_tokens=setup.tokens,
        size_mib=footprint.size_mib,
        size_source=footprint.size_source,
        parameters=footprint.parameters,
        peak_rss_mib=peak_rss_mib(),
        torch_loaded="torch" in sys.modules,
        per_image_ms=milliseconds,
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
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
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
