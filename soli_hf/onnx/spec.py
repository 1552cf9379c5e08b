"""The ONNX interface of SOLI in one place: graph files, input/output names, dtypes and shapes.

`export.py` exports with these names and writes them (sizes resolved) into `soli_onnx.json`, which the runtime
reads; the Optimum route's `OnnxConfig`s (`optimum_export.py`) build their `inputs`/`outputs` from the same
lists. Shapes name their
dimensions: `BATCH` is the dynamic axis, the other names are filled in from the model's config by `model_sizes`.
This module imports nothing beyond the standard library, so the command line can list the choices on a device
that has only onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BATCH = "batch"
MANIFEST_NAME = "soli_onnx.json"
MANIFEST_VERSION = 1
DEFAULT_OPSET = 18
#: How `export_onnx` can make the graphs: Optimum's `main_export`, `torch.onnx.export`, or Optimum where installed.
EXPORT_BACKENDS = ("auto", "optimum", "torch")
#: The CPUs `quantize_onnx` has int8 settings for (the names of Optimum's `AutoQuantizationConfig` methods).
QUANTIZATION_TARGETS = ("arm64", "avx2", "avx512")
#: How `quantize_onnx` quantizes: dynamic int8 (both graphs); static int8 for the encoder (calibrated); dynamic with
#: the encoder's last-stage 1x1 convolutions as int8 products (GPTQ, calibrated: faster); or dynamic with the
#: encoder's float32 convolution weights stored in float16 / int8 to fit a size budget (calibrated: smaller).
QUANTIZATION_MODES = ("dynamic", "static", "fast", "compact")
#: The modes that need calibration images.
CALIBRATED_MODES = ("static", "fast", "compact")
#: How many training photos calibrate the calibrated modes by default (spread over the split).
DEFAULT_CALIBRATION_IMAGES = 300
#: Compact mode's default size budget for both graphs together, in MB (10^6 bytes).
DEFAULT_SIZE_BUDGET_MB = 10.0


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, numpy dtype name and shape (ints or dimension names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def resolved_shape(self, sizes: dict[str, int]) -> list[int | str]:
        """The shape with every named dimension but `BATCH` replaced by its size."""
        return [sizes[dim] if isinstance(dim, str) and dim != BATCH else dim for dim in self.shape]

    def dynamic_axes(self) -> dict[int, str]:
        """Axes that stay symbolic in the exported graph."""
        return {axis: dim for axis, dim in enumerate(self.shape) if dim == BATCH}


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its key in the manifest, its file and its inputs and outputs, in call order."""

    key: str
    file_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_manifest(self, sizes: dict[str, int]) -> dict[str, Any]:
        """The graph's entry in `soli_onnx.json`."""

        def describe(tensors: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": t.name, "dtype": t.dtype, "shape": t.resolved_shape(sizes)} for t in tensors]

        return {"file": self.file_name, "inputs": describe(self.inputs), "outputs": describe(self.outputs)}


_MEMORY = TensorSpec("memory", "float32", (BATCH, "grid_cells", "hidden_size"))
_KEYS = TensorSpec("attention_keys", "float32", (BATCH, "grid_cells", "attention_size"))
_HIDDEN = TensorSpec("hidden", "float32", (BATCH, "hidden_size"))
_CELL = TensorSpec("cell", "float32", (BATCH, "hidden_size"))

ENCODER = GraphSpec(
    key="encoder",
    file_name="encoder.onnx",
    inputs=(TensorSpec("pixel_values", "float32", (BATCH, 3, "image_size", "image_size")),),
    outputs=(_MEMORY, _KEYS, _HIDDEN, _CELL),
)
DECODER_STEP = GraphSpec(
    key="decoder_step",
    file_name="decoder_step.onnx",
    inputs=(TensorSpec("input_ids", "int64", (BATCH,)), _MEMORY, _KEYS, _HIDDEN, _CELL),
    outputs=(
        TensorSpec("log_probs", "float32", (BATCH, "vocab_size")),
        TensorSpec("next_hidden", "float32", (BATCH, "hidden_size")),
        TensorSpec("next_cell", "float32", (BATCH, "hidden_size")),
    ),
)
GRAPHS = (ENCODER, DECODER_STEP)
#: The greedy search graph (`greedy.py`): its file in an export folder and its key under the manifest's `graphs`.
#: Made from the decoder step, not exported from the model; folders written before it lack it (the runtime then
#: runs its numpy greedy search).
GREEDY_FILE, GREEDY_KEY = "greedy.onnx", "greedy"
#: The decoder's weights when the step and greedy graphs share them (ONNX external data; a graph's manifest entry
#: names it under "weights").
DECODER_WEIGHTS_FILE = "decoder_weights.bin"


def model_sizes(config: Any) -> dict[str, int]:
    """The named dimensions of a `SoliConfig`."""
    return {
        "image_size": config.image_size,
        "grid_cells": config.grid_size**2,
        "hidden_size": config.hidden_size,
        "attention_size": config.attention_size,
        "vocab_size": config.vocab_size,
    }
