"""Caption latency of a SOLI model in PyTorch eager mode: batch 1, greedy, per thread count and inference mode,
image preprocessing included (what a user waits for between a photo and its caption)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from .modeling_soli import SoliForConditionalGeneration
from .processing_soli import SoliProcessor


@dataclass
class LatencyResult:
    """Per-image wall times of one (inference mode, thread count) configuration."""

    backend: str
    inference_branches: str
    threads: int
    median_ms: float
    p90_ms: float
    measurements: int
    mean_caption_tokens: float

    def to_dict(self) -> dict[str, float | int | str]:
        """The JSON record."""
        return asdict(self)


@torch.no_grad()
def torch_eager_latency(
    model: SoliForConditionalGeneration,
    processor: SoliProcessor,
    images: Sequence[Image.Image],
    *,
    threads: int,
    inference_branches: str,
    repeats: int = 5,
    warmup: int = 3,
    max_new_tokens: int = 20,
) -> LatencyResult:
    """Time `processor` + greedy `generate` on each image, one at a time, `repeats` times (after `warmup` runs).

    The model's other generation defaults (e.g. `no_repeat_ngram_size`, `suppress_tokens`) stay as saved.
    """
    if inference_branches == "both" and not model.config.use_sr_branch:
        raise ValueError("this model has no SR branch (baseline variant): time it with inference_branches='lr'")
    previous_threads, previous_branches = torch.get_num_threads(), model.config.inference_branches
    torch.set_num_threads(threads)
    model.config.inference_branches = inference_branches
    model.eval()
    try:
        for image in list(images)[:warmup]:
            model.generate(**processor(images=image, return_tensors="pt"), num_beams=1, max_new_tokens=max_new_tokens)
        seconds, lengths = [], []
        for _ in range(repeats):
            for image in images:
                start = time.perf_counter()
                inputs = processor(images=image, return_tensors="pt")
                ids = model.generate(**inputs, num_beams=1, max_new_tokens=max_new_tokens)
                seconds.append(time.perf_counter() - start)
                lengths.append(ids.shape[1] - 1)
    finally:
        torch.set_num_threads(previous_threads)
        model.config.inference_branches = previous_branches
    milliseconds = sorted(1000 * s for s in seconds)
    return LatencyResult(
        backend="pytorch-eager",
        inference_branches=inference_branches,
        threads=threads,
        median_ms=statistics.median(milliseconds),
        p90_ms=milliseconds[int(0.9 * (len(milliseconds) - 1))],
        measurements=len(milliseconds),
        mean_caption_tokens=statistics.fmean(lengths),
    )
