"""Export SOLI to two ONNX graphs (the encoder, one decoder step) plus `soli_onnx.json` for the runtime.

Two routes write the same folder from the same graph modules (`graphs.py`: `SoliEncoderGraph`,
`SoliDecoderStepGraph`) and the same input/output specs (`spec.py`):

- "torch": `torch.onnx.export(..., dynamo=True)`, the `torch.export`-based exporter (needs `onnxscript`; the
  default one on torch 2.14). Its graphs take one symbolic batch dimension (`torch.export.Dim`) shared by all
  inputs, so they serve any batch and beam width.
- "optimum": Optimum's `main_export` with SOLI's `OnnxConfig`s (`optimum_export.py`), where Optimum's ONNX exporter
  (optimum-onnx, on transformers 4.57) is installed. It runs the TorchScript exporter (`dynamo=False`).

The image side stays fixed at the model's `image_size`, as `SoliImageProcessor` always makes it; `graphs.py` says
which layers the encoder graph computes in other (equal) ways, and why.

`soli_onnx.json` (see `spec.py`, written by `manifest.write_manifest`) carries everything the torch-free runtime needs
besides the graphs: the inputs and outputs, the special token ids, the generation defaults of the model's
`generation_config`, the image processor's settings, the vocabulary (id order) and the route that exported it.

Both routes write the folder whole or not at all (`folder.py`): into a temporary folder beside `out_dir`, renamed to
`out_dir` once complete. `out_dir` must be new, empty or a previous export (anything else is refused, not deleted).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..modeling_soli import SoliForConditionalGeneration
from ..processing_soli import SoliProcessor
from .folder import write_export_folder
from .graphs import SoliDecoderStepGraph, SoliEncoderGraph, drop_exporter_metadata, load_for_export
from .manifest import generation_defaults, write_manifest
from .spec import DECODER_STEP, DEFAULT_OPSET, ENCODER, EXPORT_BACKENDS, GraphSpec, model_sizes

_EXAMPLE_BATCH = 2


def export_onnx(
    model_dir_or_model: str | os.PathLike | SoliForConditionalGeneration,
    out_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    processor: SoliProcessor | None = None,
    backend: str = "auto",
) -> list[Path]:
    """Export a SOLI model to `out_dir`: `encoder.onnx`, `decoder_step.onnx` and `soli_onnx.json`, the folder
    `soli_hf.onnx.SoliOnnxCaptioner` loads.

    Args:
        model_dir_or_model: a saved SOLI folder (model and processor are loaded from it), or a model.
        out_dir: a new folder, an empty one or a previous export, which is replaced whole once the new export is
            complete (a crash leaves the previous one intact); a folder holding other files is refused
            (`ValueError`), so that none of them is deleted.
        opset: ONNX opset of both graphs.
        processor: the model's `SoliProcessor`; required when a model object is given, ignored otherwise.
        backend: "torch" (`torch.onnx.export`, dynamo), "optimum" (Optimum's `main_export`; a model object is saved
            to a temporary folder first) or "auto" (Optimum where its ONNX exporter can be imported, else torch).

    Returns:
        The paths written.

    Raises:
        ValueError: for an unknown or unavailable backend, a folder that is not a saved model, generation settings
            the runtime cannot reproduce, or an `out_dir` that is neither new, empty nor a previous export.
    """
    if backend not in EXPORT_BACKENDS:
        raise ValueError(f"export_onnx: backend must be one of {EXPORT_BACKENDS}, got {backend!r}")
    if backend != "torch":
        missing = optimum_exporter_missing()
        if missing is None:
            return _export_with_optimum(model_dir_or_model, out_dir, opset, processor)
        if backend == "optimum":
            raise ValueError(
                "export_onnx: backend='optimum' needs Optimum's ONNX exporter (optimum-onnx 0.1.0 with optimum 2.1.0 "
                f"and transformers 4.57.x, see `make install`), which cannot be imported: {missing}"
            )
    model, processor = load_for_export(model_dir_or_model, processor)
    generation_defaults(model)  # fails early on settings the runtime cannot reproduce
    return write_export_folder(out_dir, lambda folder: _export_with_torch(model, processor, folder, opset))


def _export_with_torch(
    model: SoliForConditionalGeneration, processor: SoliProcessor, out: Path, opset: int
) -> list[Path]:
    """Write both graphs (`torch.onnx.export`, dynamo) and the manifest into the folder `out`."""
    was_training = model.training
    model.eval()
    try:
        sizes = model_sizes(model.config)
        pixel_values = torch.randn(_EXAMPLE_BATCH, 3, sizes["image_size"], sizes["image_size"])
        encoder_graph = SoliEncoderGraph(model).eval()
        with torch.no_grad():
            state = encoder_graph(pixel_values)
        input_ids = torch.full((_EXAMPLE_BATCH,), model.config.bos_token_id, dtype=torch.long)
        written = [
            _export_graph(encoder_graph, (pixel_values,), ENCODER, out, opset),
            _export_graph(SoliDecoderStepGraph(model).eval(), (input_ids, *state), DECODER_STEP, out, opset),
        ]
    finally:
        model.train(was_training)
    return [*written, write_manifest(model, processor, out, opset, exporter="torch")]


def _export_with_optimum(
    model_dir_or_model: str | os.PathLike | SoliForConditionalGeneration,
    out_dir: str | os.PathLike,
    opset: int,
    processor: SoliProcessor | None,
) -> list[Path]:
    """`export_with_optimum`, which exports a saved folder: a model object is saved to a temporary one first."""
    from .optimum_export import export_with_optimum

    if not isinstance(model_dir_or_model, SoliForConditionalGeneration):
        return export_with_optimum(model_dir_or_model, out_dir, opset)
    model, processor = load_for_export(model_dir_or_model, processor)
    with tempfile.TemporaryDirectory() as model_dir:
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        return export_with_optimum(model_dir, out_dir, opset)


def optimum_exporter_missing() -> str | None:
    """None when Optimum's ONNX exporter (`optimum.exporters.onnx`) can be imported, else why not."""
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def _export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], graph: GraphSpec, out: Path, opset: int) -> Path:
    """Export one graph with the names of its spec and a batch dimension shared by all inputs."""
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {spec.name: {axis: batch for axis in spec.dynamic_axes()} for spec in graph.inputs}
    path = out / graph.file_name
    # The exporter's registry logs one warning per torchvision operator when torchvision is absent; SOLI uses none.
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry_level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Every input shares the one batch dimension; the exporter warns that it names it only once.
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=True,
                verbose=False,
                external_data=False,
                opset_version=opset,
                input_names=[spec.name for spec in graph.inputs],
                output_names=[spec.name for spec in graph.outputs],
                dynamic_shapes=dynamic_shapes,
            )
    finally:
        registry_logger.setLevel(registry_level)
    drop_exporter_metadata(path)
    return path
