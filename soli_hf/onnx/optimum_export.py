"""SOLI through Optimum's ONNX exporter: `OnnxConfig`s for the two graphs and `export_with_optimum`.

Needs optimum-onnx (its `optimum.exporters.onnx`), which runs on transformers 4.57: `make install` puts
optimum-onnx 0.1.0 and optimum 2.1.0 in `.venv/optimum-onnx`, used with transformers 4.57.6 from
`.venv/compat-transformers-4.57`:

    PYTHONPATH=.venv/optimum-onnx:.venv/compat-transformers-4.57 .venv/bin/python scripts/export_onnx.py \\
        --backend optimum --model models/soli-flickr8k-lr64 --out onnx/soli-flickr8k-lr64

The configs take their input and output names, and their dynamic (batch) axes, from `spec.ENCODER` and
`spec.DECODER_STEP`; `main_export` exports `SoliEncoderGraph` and `SoliDecoderStepGraph`, the modules of the
torch.onnx route, and validates each graph against them. The folder written is the torch route's.

`main_export` loads the folder with `trust_remote_code=True`, i.e. with the copy of SOLI's code that
`save_pretrained` put there, as a Hub user's Optimum would: Optimum tells a transformers model by its class's module,
and soli_hf's own classes are not in `transformers`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optimum.exporters.onnx import OnnxConfig, main_export
from optimum.utils import DEFAULT_DUMMY_SHAPES, DummyInputGenerator, NormalizedConfig
from torch import nn

from ..modeling_soli import SoliForConditionalGeneration
from .folder import write_export_folder
from .graphs import SoliDecoderStepGraph, SoliEncoderGraph, drop_exporter_metadata, load_for_export
from .manifest import generation_defaults, write_manifest
from .spec import BATCH, DECODER_STEP, DEFAULT_OPSET, ENCODER, GRAPHS, GraphSpec, TensorSpec, model_sizes

#: The task `main_export` loads the model for: `AutoModelForImageTextToText`, in a saved SOLI folder's `auto_map`.
TASK = "image-text-to-text"
_GRAPH_INPUTS = {tensor.name: tensor for graph in GRAPHS for tensor in graph.inputs}


class SoliDummyInputGenerator(DummyInputGenerator):
    """Random inputs for SOLI's graphs, shaped as `spec` says: `batch_size` rows, the model's sizes elsewhere, token
    ids below the vocabulary size."""

    SUPPORTED_INPUT_NAMES = tuple(_GRAPH_INPUTS)

    def __init__(
        self,
        task: str,
        normalized_config: NormalizedConfig,
        batch_size: int = DEFAULT_DUMMY_SHAPES["batch_size"],
        **kwargs: Any,
    ) -> None:
        self.batch_size = batch_size
        self.sizes = model_sizes(normalized_config.config)

    def shape(self, tensor: TensorSpec) -> list[int]:
        """The tensor's shape with `batch_size` for `BATCH`."""
        return [self.batch_size if dim == BATCH else dim for dim in tensor.resolved_shape(self.sizes)]

    def generate(
        self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"
    ) -> Any:
        """A random tensor for the graph input `input_name`, in `framework`'s type."""
        tensor = _GRAPH_INPUTS[input_name]
        if tensor.dtype == "int64":
            return self.random_int_tensor(
                self.shape(tensor), max_value=self.sizes["vocab_size"], framework=framework, dtype=int_dtype
            )
        return self.random_float_tensor(
            self.shape(tensor), min_value=-1.0, max_value=1.0, framework=framework, dtype=float_dtype
        )


class SoliGraphOnnxConfig(OnnxConfig):
    """The `OnnxConfig` of one SOLI graph (`GRAPH`, made by `MODULE`): inputs and outputs in the spec's order,
    `BATCH` dynamic."""

    GRAPH: GraphSpec
    MODULE: type[nn.Module]
    NORMALIZED_CONFIG_CLASS = NormalizedConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (SoliDummyInputGenerator,)
    DEFAULT_ONNX_OPSET = DEFAULT_OPSET
    # `main_export` validates on random inputs: float32 rounding through the CNN reaches ~2e-5 on outputs of scale
    # ~5, over the default 1e-5 (a logged warning only).
    ATOL_FOR_VALIDATION = 1e-4

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {tensor.name: tensor.dynamic_axes() for tensor in self.GRAPH.inputs}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {tensor.name: tensor.dynamic_axes() for tensor in self.GRAPH.outputs}

    @classmethod
    def submodel_name(cls) -> str:
        """The name `main_export` gets the graph under: it writes `<name>.onnx`, the spec's file name."""
        return Path(cls.GRAPH.file_name).stem


class SoliEncoderOnnxConfig(SoliGraphOnnxConfig):
    """`OnnxConfig` of `encoder.onnx`."""

    GRAPH = ENCODER
    MODULE = SoliEncoderGraph


class SoliDecoderStepOnnxConfig(SoliGraphOnnxConfig):
    """`OnnxConfig` of `decoder_step.onnx`."""

    GRAPH = DECODER_STEP
    MODULE = SoliDecoderStepGraph


ONNX_CONFIGS = (SoliEncoderOnnxConfig, SoliDecoderStepOnnxConfig)


def soli_submodels(model: SoliForConditionalGeneration) -> dict[str, nn.Module]:
    """`main_export`'s `fn_get_submodels`: the graph modules of `model`, by submodel name."""
    submodels = {}
    for config_class in ONNX_CONFIGS:
        module = config_class.MODULE(model).eval()
        module.config = model.config  # Optimum's exporter sets `config.return_dict` on what it exports
        submodels[config_class.submodel_name()] = module
    return submodels


def soli_onnx_configs(model: SoliForConditionalGeneration) -> dict[str, SoliGraphOnnxConfig]:
    """`main_export`'s `custom_onnx_configs` for `model`, by submodel name."""
    return {config_class.submodel_name(): config_class(model.config, task=TASK) for config_class in ONNX_CONFIGS}


def export_with_optimum(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET
) -> list[Path]:
    """Export a saved SOLI folder with Optimum's `main_export` to `out_dir`: `encoder.onnx`, `decoder_step.onnx`
    and `soli_onnx.json`, the folder of `export_onnx(..., backend="torch")`.

    `main_export` writes the graphs (and the model's config and preprocessors, not needed here) into a temporary
    folder and validates them against PyTorch; the graphs are then moved to the new export folder, which replaces
    `out_dir` whole once complete (see `export_onnx` for what `out_dir` may be).

    Returns:
        The paths written.
    """
    model, processor = load_for_export(model_dir)
    generation_defaults(model)  # fails early on settings the runtime cannot reproduce

    def write(out: Path) -> list[Path]:
        written = _main_export_graphs(model_dir, opset, model, out)
        return [*written, write_manifest(model, processor, out, opset, exporter="optimum")]

    return write_export_folder(out_dir, write)


def _main_export_graphs(
    model_dir: str | os.PathLike, opset: int, model: SoliForConditionalGeneration, out: Path
) -> list[Path]:
    """Export both graphs of the saved folder with `main_export` and move them into the folder `out`."""
    with tempfile.TemporaryDirectory() as scratch:
        main_export(
            str(model_dir),
            scratch,
            task=TASK,
            opset=opset,
            library_name="transformers",
            local_files_only=True,
            trust_remote_code=True,  # see the module's docstring
            custom_onnx_configs=soli_onnx_configs(model),
            fn_get_submodels=soli_submodels,
        )
        written = [Path(shutil.move(Path(scratch) / graph.file_name, out / graph.file_name)) for graph in GRAPHS]
    for path in written:
        drop_exporter_metadata(path)
    return written
