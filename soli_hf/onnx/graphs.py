"""The two modules both export routes turn into ONNX graphs, the export-friendly layers they swap in,
`load_for_export` (the model and processor an export starts from) and `drop_exporter_metadata` (what both routes
do to the graph files they write).

`SoliEncoderGraph` runs the model's own encoder with two of its weightless layers replaced by ones that compute the
same numbers in operators ONNX runtimes handle well:

- `StaticGridPool` for `nn.AdaptiveAvgPool2d`: the TorchScript exporter loses the feature map's spatial size after
  MobileNetV2's TF-style padding once the batch axis is dynamic, and then fails on `AdaptiveAvgPool2d` ("input
  size not accessible"); a pool with a fixed kernel exports with a dynamic batch.
- `ConvBicubicUpsample` for every `BicubicUpsample` (`F.interpolate(..., mode="bicubic")`: the SR module's, and
  the bicubic branch B or upsampled LR branch of the ablation variants): onnxruntime's cubic `Resize`
  took 5.0 of the 14.4 ms of the one-thread encoder with both branches; a fixed depthwise convolution +
  depth-to-space does the same in about 0.3 ms (`python scripts/benchmark.py profile` shows the operators).

It also runs a copy of the backbone with the batch norms folded into the convolutions before them
(`fold_batch_norms`): one `Conv` with a bias where the model has `Conv` + `BatchNormalization`, the same numbers to
float32 rounding (what onnxruntime does itself when it loads a graph), so that static int8 quantization
(`quantize.py`) quantizes the folded weights. Both branches run the same folded backbone, so they still share one
set of weights in the graph.

`SoliDecoderStepGraph` runs the model's decoder with its `nn.LSTMCell` replaced by `SplitInputLSTMCell`, the same
numbers with the input product split in two: one matrix product for the word embedding and one for the attention
context, instead of one over their concatenation. The two have different ranges, so int8 needs a scale for each:
with one product over both the LSTM input weights had to stay float32 (`quantize.py`).

The model itself is left as it is: the graphs hold shallow copies that share its parameters, except the folded
backbone and the split LSTM weights, copies.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from ..modeling_soli import BicubicUpsample, SoliAttentionDecoder, SoliForConditionalGeneration, SoliSiameseEncoder
from ..processing_soli import SoliProcessor

#: PyTorch's bicubic convolution constant (`A` in Keys' kernel), as `F.interpolate` uses it.
_CUBIC_A = -0.75
#: Taps of the one-dimensional kernel, offsets -2..2 around the source pixel: enough for every integer scale.
_TAPS = 5


class StaticGridPool(nn.Module):
    """`nn.AdaptiveAvgPool2d(grid_size)` as an average pool with kernel = stride = side // grid_size: the same
    numbers, for feature maps whose sides are multiples of `grid_size` (SOLI's are).

    The sides are read as Python ints, so both exporters write a plain `AveragePool` with a constant kernel, which
    the TorchScript exporter can export with a dynamic batch. A side that is not a multiple of `grid_size` (bins of
    unequal widths, no fixed-kernel equivalent) keeps the adaptive pool, which only the dynamo exporter exports.
    """

    def __init__(self, grid_size: int) -> None:
        super().__init__()
        self.grid_size = grid_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        height, width = (int(side) for side in features.shape[-2:])
        if height % self.grid_size or width % self.grid_size:
            return F.adaptive_avg_pool2d(features, self.grid_size)
        return F.avg_pool2d(features, kernel_size=(height // self.grid_size, width // self.grid_size))


def _cubic_weights(fraction: float) -> list[float]:
    """Keys' cubic weights of the 4 source pixels around a point `fraction` past the second one."""

    def near(x: float) -> float:  # |x| <= 1
        return ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A

    return [far(fraction + 1), near(fraction), near(1 - fraction), far(2 - fraction)]


def bicubic_phase_kernels(scale: int) -> torch.Tensor:
    """(scale, 5) weights: row p interpolates output pixel `scale * i + p` from source pixels i-2..i+2.

    With `align_corners=False` that pixel sits at source coordinate `i + (p + 0.5) / scale - 0.5`, the same
    offset for every i, so each output phase is a fixed 1-D filter (and each 2-D phase the outer product of two).
    """
    kernels = torch.zeros(scale, _TAPS, dtype=torch.float64)
    for phase in range(scale):
        offset = (phase + 0.5) / scale - 0.5
        first = math.floor(offset) - 1  # the leftmost of the 4 source pixels, relative to i
        for tap, weight in enumerate(_cubic_weights(offset - math.floor(offset))):
            kernels[phase, first + tap + _TAPS // 2] = weight
    return kernels


class ConvBicubicUpsample(nn.Module):
    """`F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)` for an integer `scale` as an edge
    pad, one depthwise 5x5 convolution with a kernel per output phase, and a pixel shuffle (depth-to-space).

    Edge padding repeats the border pixels, as PyTorch clamps the source index; the result equals
    `F.interpolate`'s to float32 rounding.
    """

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        self.scale, self.channels = scale, channels
        phases = bicubic_phase_kernels(scale)
        kernel = torch.einsum("yi,xj->yxij", phases, phases).reshape(scale * scale, 1, _TAPS, _TAPS)
        self.register_buffer("weight", kernel.repeat(channels, 1, 1, 1).float(), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        padded = F.pad(pixel_values, [_TAPS // 2] * 4, mode="replicate")
        phases = F.conv2d(padded, self.weight, groups=self.channels)
        return F.pixel_shuffle(phases, self.scale)


def _with_conv_upsampling(module: nn.Module, device: torch.device) -> dict[str, nn.Module | None]:
    """`module`'s direct submodules, each `BicubicUpsample` replaced by an equal `ConvBicubicUpsample`."""
    return {
        name: ConvBicubicUpsample(child.scale).to(device) if isinstance(child, BicubicUpsample) else child
        for name, child in module._modules.items()
    }


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of `module` in which every convolution layer with a batch norm (a submodule with `convolution` and
    `normalization` children, as transformers' MobileNetV2 builds them) holds one `nn.Conv2d` with the norm's scale
    and shift folded into its weights and bias, and an `nn.Identity` in place of the norm (the eval-mode numbers).
    `module` itself is left as it is."""
    folded = copy.deepcopy(module)
    for layer in folded.modules():
        convolution, normalization = getattr(layer, "convolution", None), getattr(layer, "normalization", None)
        if isinstance(convolution, nn.Conv2d) and isinstance(normalization, nn.BatchNorm2d):
            layer.convolution = fuse_conv_bn_eval(convolution.eval(), normalization.eval())
            layer.normalization = nn.Identity()
    return folded


def exportable_encoder(encoder: SoliSiameseEncoder) -> SoliSiameseEncoder:
    """A shallow copy of `encoder` (the same parameters and submodules) that pools with `StaticGridPool`,
    upsamples with `ConvBicubicUpsample` wherever it upsamples (the SR module's bicubic path, a bicubic branch B,
    an upsampled LR branch) and runs a copy of its backbone with the batch norms folded (`fold_batch_norms`); the
    model itself is left as it is."""
    device = next(encoder.parameters()).device
    exported = copy.copy(encoder)
    exported._modules = {
        **_with_conv_upsampling(encoder, device),
        "pool": StaticGridPool(encoder.config.grid_size),
        "backbone": fold_batch_norms(encoder.backbone),
    }
    if encoder.super_resolution is not None:
        super_resolution = copy.copy(encoder.super_resolution)
        super_resolution._modules = _with_conv_upsampling(encoder.super_resolution, device)
        exported._modules["super_resolution"] = super_resolution
    return exported


class SoliEncoderGraph(nn.Module):
    """LR pixels -> attention memory, attention keys and the decoder's initial (h, c): the model's encoder (made
    exportable by `exportable_encoder`) and `decoder.initial_state`, with the SR branch when
    `config.inference_branches == "both"`."""

    def __init__(self, model: SoliForConditionalGeneration) -> None:
        super().__init__()
        self.encoder = exportable_encoder(model.get_encoder())
        self.decoder = model.decoder

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.encoder(pixel_values)
        hidden, cell = self.decoder.initial_state(encoded.last_hidden_state)
        return encoded.last_hidden_state, encoded.attention_keys, hidden, cell


class SplitInputLSTMCell(nn.Module):
    """`nn.LSTMCell` over the input [word embedding; context] with the input product split at `split`: the gates are
    `word @ W_word.T + context @ W_context.T + hidden @ W_hh.T + b_ih + b_hh`, then the cell's usual update. The
    same numbers to float32 rounding, from copies of the cell's parameters (constants of the graph, so that the
    quantizer finds each product's weights)."""

    def __init__(self, cell: nn.LSTMCell, split: int) -> None:
        super().__init__()
        weights = {
            "weight_word": cell.weight_ih[:, :split],
            "weight_context": cell.weight_ih[:, split:],
            "weight_hidden": cell.weight_hh,
            "bias": cell.bias_ih + cell.bias_hh,
        }
        for name, value in weights.items():
            self.register_buffer(name, value.detach().clone().contiguous(), persistent=False)
        self.split = split

    def forward(
        self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, cell_state = state
        gates = (
            F.linear(inputs[:, : self.split], self.weight_word)
            + F.linear(inputs[:, self.split :], self.weight_context)
            + F.linear(hidden, self.weight_hidden, self.bias)
        )
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
        cell_state = torch.sigmoid(forget_gate) * cell_state + torch.sigmoid(input_gate) * torch.tanh(candidate)
        return torch.sigmoid(output_gate) * torch.tanh(cell_state), cell_state


def exportable_decoder(decoder: SoliAttentionDecoder) -> SoliAttentionDecoder:
    """A shallow copy of `decoder` (the same parameters, the LSTM's copied) whose LSTM is a `SplitInputLSTMCell`;
    `decoder` itself is left as it is."""
    exported = copy.copy(decoder)
    exported._modules = {
        **decoder._modules,
        "lstm": SplitInputLSTMCell(decoder.lstm, decoder.embed_tokens.embedding_dim),
    }
    return exported


class SoliDecoderStepGraph(nn.Module):
    """One decoding step: the last token of every row and the LSTM state -> log-probabilities of the next token
    (what beam search scores) and the new state (the model's decoder made quantizable by `exportable_decoder`)."""

    def __init__(self, model: SoliForConditionalGeneration) -> None:
        super().__init__()
        self.decoder = exportable_decoder(model.decoder)

    def forward(
        self,
        input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_keys: torch.Tensor,
        hidden: torch.Tensor,
        cell: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        logits, (next_hidden, next_cell), _ = self.decoder(input_ids[:, None], memory, attention_keys, (hidden, cell))
        return logits[:, -1].log_softmax(dim=-1), next_hidden, next_cell


def load_for_export(
    model_dir_or_model: str | os.PathLike | SoliForConditionalGeneration, processor: SoliProcessor | None = None
) -> tuple[SoliForConditionalGeneration, SoliProcessor]:
    """The model (whose graphs both routes export) and its processor, from a saved SOLI folder or as given
    (`processor` is then required). A model with `tags_in_memory` is refused (`ValueError`) for now."""
    if isinstance(model_dir_or_model, SoliForConditionalGeneration):
        if processor is None:
            raise ValueError("export_onnx: pass `processor` (the model's SoliProcessor) when exporting a model object")
        model = model_dir_or_model
    else:
        folder = Path(model_dir_or_model)
        if not (folder / "config.json").is_file():
            raise ValueError(f"export_onnx: {folder} is not a saved SOLI model folder (no config.json)")
        model, processor = SoliForConditionalGeneration.from_pretrained(folder), SoliProcessor.from_pretrained(folder)
    if model.config.tags_in_memory:
        # The graphs themselves would export (the encoder appends the tag token), but the manifest's memory shape
        # (`spec.model_sizes`: grid_size**2 cells) does not know the extra token yet.
        raise ValueError(
            "export_onnx: a model with tags_in_memory=True cannot be exported yet (its memory holds one token more "
            "than the ONNX interface describes); train with tags_in_memory=False to export"
        )
    return model, processor


def drop_exporter_metadata(path: Path) -> None:
    """Remove what the exporter records on each node of the graph file `path` for debugging (its Python stack trace,
    module names and FX node: about 2 kB a node, with the exporting machine's paths): inference reads none of it,
    and it made up most of the decoder graphs' bytes that are not weights."""
    model = onnx.load(path)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, path)
