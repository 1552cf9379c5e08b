"""The latency measurement: behaviour only (timings belong to scripts/benchmark.py, not to tests)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from soli_hf import SoliConfig, SoliForConditionalGeneration
from soli_hf.latency import torch_eager_latency


def test_latency_measures_each_image_and_restores_the_model(tiny_model, processor) -> None:
    images = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (40, 90), (20, 30, 200))]
    threads, branches = torch.get_num_threads(), tiny_model.config.inference_branches
    result = torch_eager_latency(
        tiny_model, processor, images, threads=1, inference_branches="lr", repeats=2, warmup=1, max_new_tokens=4
    )
    assert result.measurements == 4 and 0 < result.median_ms <= result.p90_ms
    assert 1 <= result.mean_caption_tokens <= 4
    assert result.to_dict()["inference_branches"] == "lr"
    assert torch.get_num_threads() == threads and tiny_model.config.inference_branches == branches


def test_latency_refuses_both_branches_without_an_sr_module(tokenizer, processor) -> None:
    baseline = SoliForConditionalGeneration(SoliConfig(vocab_size=len(tokenizer), use_sr_branch=False))
    with pytest.raises(ValueError, match="no SR branch"):
        torch_eager_latency(baseline, processor, [Image.new("RGB", (8, 8))], threads=1, inference_branches="both")
