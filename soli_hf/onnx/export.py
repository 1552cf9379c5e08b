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

`soli_onnx.json` (see `spec.py`, written by `write_manifest`) carries everything the torch-free runtime needs
besides the graphs: the inputs and outputs, the special token ids, the generation defaults of the model's
`generation_config`, the image processor's settings, the vocabulary (id order) and the route that exported it.

Both routes write the folder whole or not at all (`folder.py`): into a temporary folder beside `out_dir`, renamed to
`out_dir` once complete. `out_dir` must be new, empty or a previous export (anything else is refused, not deleted).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..image_processing_soli import SoliImageProcessor
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_soli import SoliProcessor
from .folder import write_export_folder
from .graphs import SoliDecoderStepGraph, SoliEncoderGraph
from .spec import (
    DECODER_STEP,
    DEFAULT_OPSET,
    ENCODER,
    EXPORT_BACKENDS,
    GRAPHS,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    GraphSpec,
    model_sizes,
)

_EXAMPLE_BATCH = 2
# Generation settings the runtime does not implement, with the values under which they have no effect.
_INERT_GENERATION_SETTINGS = {
    "do_sample": (None, False),
    "num_return_sequences": (None, 1),
    "repetition_penalty": (None, 1.0),
    "min_length": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,),
    "encoder_no_repeat_ngram_size": (None, 0),
}


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


def write_manifest(
    model: SoliForConditionalGeneration, processor: SoliProcessor, out_dir: Path, opset: int, exporter: str
) -> Path:
    """Write `soli_onnx.json` for graphs exported from `model` by `exporter` (an `EXPORT_BACKENDS` route, recorded
    in the manifest) into `out_dir`; returns its path."""
    manifest = {
        "format_version": MANIFEST_VERSION,
        "opset": opset,
        "exporter": exporter,
        "inference_branches": model.config.inference_branches,
        "graphs": {graph.key: graph.to_manifest(model_sizes(model.config)) for graph in GRAPHS},
        **_token_settings(processor),
        "generation": generation_defaults(model),
        "preprocessing": preprocessing_settings(processor.image_processor),
    }
    path = Path(out_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def load_for_export(
    model_dir_or_model: str | os.PathLike | SoliForConditionalGeneration, processor: SoliProcessor | None = None
) -> tuple[SoliForConditionalGeneration, SoliProcessor]:
    """The model and its processor, from a saved SOLI folder or as given (`processor` is then required)."""
    if isinstance(model_dir_or_model, SoliForConditionalGeneration):
        if processor is None:
            raise ValueError("export_onnx: pass `processor` (the model's SoliProcessor) when exporting a model object")
        return model_dir_or_model, processor
    folder = Path(model_dir_or_model)
    if not (folder / "config.json").is_file():
        raise ValueError(f"export_onnx: {folder} is not a saved SOLI model folder (no config.json)")
    return SoliForConditionalGeneration.from_pretrained(folder), SoliProcessor.from_pretrained(folder)


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
    return path


def generation_defaults(model: SoliForConditionalGeneration) -> dict[str, Any]:
    """The decoding settings of `model.generation_config` that the runtime reproduces, resolved as `generate()`
    resolves them; raises `ValueError` for settings the runtime does not implement."""
    config = model.generation_config
    unsupported = {
        name: getattr(config, name, None)
        for name, inert in _INERT_GENERATION_SETTINGS.items()
        if getattr(config, name, None) not in inert
    }
    if unsupported:
        raise ValueError(f"export_onnx: the ONNX runtime cannot reproduce these generation settings: {unsupported}")
    if not isinstance(config.eos_token_id, int):
        raise ValueError(f"export_onnx: generation_config.eos_token_id must be one id, got {config.eos_token_id!r}")
    max_new_tokens = config.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = (config.max_length or 20) - 1  # generate()'s default max_length counts the start token
    early_stopping = config.early_stopping
    return {
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "num_beams": config.num_beams or 1,
        "max_new_tokens": max_new_tokens,
        "no_repeat_ngram_size": config.no_repeat_ngram_size or 0,
        "suppress_tokens": list(config.suppress_tokens or []),
        "length_penalty": 1.0 if config.length_penalty is None else float(config.length_penalty),
        "early_stopping": False if early_stopping is None else early_stopping,
        "min_new_tokens": config.min_new_tokens or 0,
    }


def _token_settings(processor: SoliProcessor) -> dict[str, Any]:
    """Special token ids, the ids that decoding skips, and the vocabulary in id order."""
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    words = sorted(vocab, key=vocab.__getitem__)
    if [vocab[word] for word in words] != list(range(len(words))):
        raise ValueError("export_onnx: the tokenizer's vocabulary ids are not 0..n-1")
    return {
        "special_tokens": {
            "pad": tokenizer.pad_token_id,
            "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id,
            "unk": tokenizer.unk_token_id,
        },
        "skip_token_ids": sorted(tokenizer.all_special_ids),
        "vocabulary": words,
    }


def preprocessing_settings(image_processor: SoliImageProcessor) -> dict[str, Any]:
    """The settings of a `SoliImageProcessor` that make `pixel_values` (the manifest's `preprocessing`)."""
    return {
        "image_size": image_processor.image_size,
        "degradation": image_processor.degradation,
        "blur_sigma": image_processor.blur_sigma,
        "scale_factor": image_processor.scale_factor,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "input_range": image_processor.input_range,
    }
