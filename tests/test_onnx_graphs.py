"""The layers the ONNX encoder graph swaps in compute what the model's own layers compute, and the graph leaves the
model as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from soli_hf.modeling_soli import BicubicUpsample
from soli_hf.onnx.graphs import (
    ConvBicubicUpsample,
    SoliDecoderStepGraph,
    SoliEncoderGraph,
    SplitInputLSTMCell,
    StaticGridPool,
    bicubic_phase_kernels,
)


@pytest.mark.parametrize("side", [4, 8, 6])
def test_static_grid_pool_is_the_adaptive_pool(side) -> None:
    """Exactly equal where the side is a multiple of the grid (a fixed kernel), the adaptive pool otherwise."""
    features = torch.randn(3, 5, side, side)
    np.testing.assert_array_equal(StaticGridPool(4)(features).numpy(), nn.AdaptiveAvgPool2d(4)(features).numpy())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_phase_kernels_interpolate(scale) -> None:
    """Every phase's weights sum to one, and phases mirror each other about the source pixel's centre."""
    kernels = bicubic_phase_kernels(scale)
    torch.testing.assert_close(kernels.sum(dim=1), torch.ones(scale, dtype=torch.float64))
    torch.testing.assert_close(kernels, kernels.flip(0, 1))


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("height, width", [(64, 64), (7, 5), (1, 3)])
def test_conv_bicubic_upsample_equals_interpolate(scale, height, width) -> None:
    """Edges included (PyTorch clamps the source index; the graph pads by repeating the border). The reference is
    computed in float64: in float32, PyTorch's source coordinates for scale 3 carry the rounding of 1/3."""
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, height, width) * 2
    expected = F.interpolate(pixels.double(), scale_factor=scale, mode="bicubic", align_corners=False).float()
    torch.testing.assert_close(ConvBicubicUpsample(scale)(pixels), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("inference_branches", ["both", "lr"])
def test_encoder_graph_equals_the_encoder_and_leaves_the_model_as_it_is(tiny_model, inference_branches) -> None:
    tiny_model.config.inference_branches = inference_branches
    graph = SoliEncoderGraph(tiny_model)
    assert isinstance(graph.encoder.pool, StaticGridPool)
    assert isinstance(graph.encoder.super_resolution.upsample, ConvBicubicUpsample)
    assert isinstance(tiny_model.encoder.pool, nn.AdaptiveAvgPool2d)
    assert isinstance(tiny_model.encoder.super_resolution.upsample, BicubicUpsample)
    # The graph's backbone is a copy with the batch norms folded into the convolutions; the model keeps its own.
    assert not any(isinstance(module, nn.BatchNorm2d) for module in graph.encoder.backbone.modules())
    assert any(isinstance(module, nn.BatchNorm2d) for module in tiny_model.encoder.backbone.modules())
    assert graph.encoder.super_resolution.body is tiny_model.encoder.super_resolution.body
    outside_backbone = {f"encoder.{key}" for key in tiny_model.encoder.state_dict() if not key.startswith("backbone.")}
    assert {key for key in graph.state_dict() if not key.startswith("encoder.backbone.")} == outside_backbone | {
        f"decoder.{key}" for key in tiny_model.decoder.state_dict()
    }
    pixel_values = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        memory, keys, hidden, cell = graph(pixel_values)
        encoded = tiny_model.get_encoder()(pixel_values)
        expected_state = tiny_model.decoder.initial_state(encoded.last_hidden_state)
    torch.testing.assert_close(memory, encoded.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keys, encoded.attention_keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((hidden, cell), expected_state, atol=1e-5, rtol=1e-5)


def test_split_input_lstm_cell_is_the_lstm_cell() -> None:
    torch.manual_seed(0)
    cell = nn.LSTMCell(6 + 10, 10)
    split = SplitInputLSTMCell(cell, 6)
    inputs, state = torch.randn(4, 16), (torch.randn(4, 10), torch.randn(4, 10))
    with torch.no_grad():
        torch.testing.assert_close(split(inputs, state), cell(inputs, state), atol=1e-6, rtol=1e-6)


def test_decoder_step_graph_equals_a_decoder_step_and_leaves_the_model_as_it_is(tiny_model) -> None:
    graph = SoliDecoderStepGraph(tiny_model)
    assert isinstance(graph.decoder.lstm, SplitInputLSTMCell) and isinstance(tiny_model.decoder.lstm, nn.LSTMCell)
    assert (
        graph.decoder.attention is tiny_model.decoder.attention and graph.decoder.lm_head is tiny_model.decoder.lm_head
    )
    with torch.no_grad():
        encoded = tiny_model.get_encoder()(torch.randn(2, 3, 64, 64))
        memory, keys = encoded.last_hidden_state, encoded.attention_keys
        hidden, cell = tiny_model.decoder.initial_state(memory)
        tokens = torch.tensor([1, 5])
        log_probs, next_hidden, next_cell = graph(tokens, memory, keys, hidden, cell)
        logits, expected_state, _ = tiny_model.decoder(tokens[:, None], memory, keys, (hidden, cell))
    torch.testing.assert_close(log_probs, logits[:, -1].log_softmax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((next_hidden, next_cell), expected_state, atol=1e-5, rtol=1e-5)
