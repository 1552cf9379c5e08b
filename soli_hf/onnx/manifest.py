"""`soli_onnx.json`: written from a model and its processor (`write_manifest`, both export routes), read and checked
against what the runtime reads from it (`read_manifest`). Standard library only: the writer reads the model's
config, generation config and processor through their attributes, so the torch-free runtime imports this module too.

A manifest that cannot be read, is not JSON, lacks a key the runtime needs, has a value of the wrong JSON type, or
names a graph file that is missing gives a `ValueError` naming the file (and the key, as a dotted path such as
`generation.num_beams` or `graphs.encoder.inputs[0].name`) and saying to re-export the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..storage import read_json
from .spec import GRAPHS, MANIFEST_NAME, MANIFEST_VERSION, model_sizes

if TYPE_CHECKING:
    from ..image_processing_soli import SoliImageProcessor
    from ..modeling_soli import SoliForConditionalGeneration
    from ..processing_soli import SoliProcessor

REEXPORT = "re-export the folder with `soli export` (or `soli_hf.onnx.export.export_onnx`)"

_NUMBER = (int, float)
#: What the runtime reads from the manifest. A type (or tuple of types) is what the value must be; a dict, a JSON
#: object with (at least) those keys; a one-item list, a JSON array whose items all follow that item's schema.
#: `generation.min_new_tokens` (0 when absent) and `quantization` are optional, and checked where they are used.
MANIFEST_SCHEMA: dict[str, Any] = {
    "format_version": int,
    "graphs": {graph.key: {"file": str, "inputs": [{"name": str}]} for graph in GRAPHS},
    "skip_token_ids": [int],
    "vocabulary": [str],
    "generation": {
        "decoder_start_token_id": int,
        "eos_token_id": int,
        "pad_token_id": int,
        "num_beams": int,
        "max_new_tokens": int,
        "no_repeat_ngram_size": int,
        "suppress_tokens": [int],
        "length_penalty": _NUMBER,
        "early_stopping": (bool, str),
    },
    "preprocessing": {
        "image_size": int,
        "degradation": str,
        "scale_factor": (*_NUMBER, type(None)),
        "blur_sigma": _NUMBER,
        "image_mean": [_NUMBER],
        "image_std": [_NUMBER],
    },
}
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
_JSON_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
    list: "an array",
    dict: "an object",
}


# ------------------------------------------------------------------------------------------------ writing


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


def decoding_defaults(config: Any) -> dict[str, int]:
    """`num_beams` and `max_new_tokens` of a `GenerationConfig`, unset ones resolved as `generate()` resolves them:
    one beam; `max_length` (20 by default) counts the start token. The manifest and `Captioner.generation_defaults`
    both come from here."""
    max_new_tokens = config.max_new_tokens if config.max_new_tokens is not None else (config.max_length or 20) - 1
    return {"num_beams": config.num_beams or 1, "max_new_tokens": max_new_tokens}


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
    early_stopping = config.early_stopping
    return {
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        **decoding_defaults(config),
        "no_repeat_ngram_size": config.no_repeat_ngram_size or 0,
        "suppress_tokens": list(config.suppress_tokens or []),
        "length_penalty": 1.0 if config.length_penalty is None else float(config.length_penalty),
        "early_stopping": False if early_stopping is None else early_stopping,
        "min_new_tokens": config.min_new_tokens or 0,
    }


def preprocessing_settings(image_processor: SoliImageProcessor) -> dict[str, Any]:
    """The settings of a `SoliImageProcessor` that make `pixel_values` (the manifest's `preprocessing`, and
    `Captioner.preprocessing`)."""
    return {
        "image_size": image_processor.image_size,
        "degradation": image_processor.degradation,
        "blur_sigma": image_processor.blur_sigma,
        "scale_factor": image_processor.scale_factor,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "input_range": image_processor.input_range,
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


# ------------------------------------------------------------------------------------------------ reading


def read_manifest(onnx_dir: str | os.PathLike) -> dict[str, Any]:
    """`soli_onnx.json` of an export folder, checked against `MANIFEST_SCHEMA` and to name graph files that exist.

    Raises:
        ValueError: naming the folder or the file, and the key at fault.
    """
    folder = Path(onnx_dir)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"onnx_dir {folder}: no {MANIFEST_NAME} (write the folder with export_onnx)")
    try:
        manifest = read_json(path)
    except ValueError as error:
        raise ValueError(f"{error}; {REEXPORT}") from error
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != MANIFEST_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, expected {MANIFEST_VERSION}; {REEXPORT}")
    check_schema(manifest, MANIFEST_SCHEMA, path)
    for name in graph_files(manifest):
        if not (folder / name).is_file():
            raise ValueError(f"onnx_dir {folder}: missing {name} named in {MANIFEST_NAME}; {REEXPORT}")
    return manifest


def graph_files(manifest: dict[str, Any]) -> list[str]:
    """The files of an export folder's graphs: each graph's file and the weights file it reads (graphs that share
    their weights name the same one), each once, manifest order; the manifest itself not included."""
    files = [name for graph in manifest["graphs"].values() for name in (graph["file"], graph.get("weights")) if name]
    return list(dict.fromkeys(files))


def check_schema(value: Any, schema: Any, path: Path, key: str = "") -> None:
    """Raise `ValueError` naming `path` and the dotted `key` of the first part of `value` that does not follow
    `schema` (see `MANIFEST_SCHEMA`)."""
    if isinstance(schema, dict):
        _check_type(value, dict, path, key)
        for name, item_schema in schema.items():
            item_key = f"{key}.{name}" if key else name
            if name not in value:
                raise ValueError(f"{path}: missing key {item_key!r}; {REEXPORT}")
            check_schema(value[name], item_schema, path, item_key)
    elif isinstance(schema, list):
        _check_type(value, list, path, key)
        for index, item in enumerate(value):
            check_schema(item, schema[0], path, f"{key}[{index}]")
    else:
        _check_type(value, schema, path, key)


def _check_type(value: Any, types: type | tuple[type, ...], path: Path, key: str) -> None:
    """Raise `ValueError` unless `value` is one of `types` (true/false only where `bool` is named)."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
        return
    expected = " or ".join(_JSON_NAMES[kind] for kind in types)
    got = _JSON_NAMES.get(type(value), type(value).__name__)
    raise ValueError(f"{path}: key {key!r} must be {expected}, got {got} ({value!r:.40}); {REEXPORT}")


def quantization_kind(quantization: dict[str, Any] | None) -> str:
    """The kind of weights a manifest's `quantization` entry (None: none) names, for table cells: "float32", "int8"
    (dynamic), or the calibrated modes' "static int8", "fast int8" and "compact int8"."""
    if quantization is None:
        return "float32"
    mode = quantization.get("mode", "dynamic")
    return "int8" if mode == "dynamic" else f"{mode} int8"


def describe_quantization(quantization: dict[str, Any] | None) -> str:
    """How a folder's weights are stored and run, in words, from its manifest's `quantization` entry (None:
    float32): the mode and target, and what each calibrated mode does beyond dynamic int8."""
    if quantization is None:
        return "float32"
    mode = quantization.get("mode", "dynamic")
    encoder = quantization.get("graphs", {}).get("encoder", {})
    decoder = quantization.get("graphs", {}).get("decoder_step", {})
    text = f"{mode} ({quantization['name']}): "
    if mode == "static":
        calibration = encoder.get("calibration", {})
        return text + (
            f"encoder {encoder.get('format', 'QDQ')} int8 ({calibration.get('method', 'MinMax')} on "
            f"{calibration.get('images', '?')} photos), decoder step dynamic"
        )
    if mode == "dynamic":
        return text + f"{', '.join(quantization['operators'])} int8, convolutions float32"
    text += "dynamic"
    if "pointwise_products" in encoder:
        text += f", and {len(encoder['pointwise_products']['int8'])} 1x1 convolutions as int8 products (GPTQ)"
    if "convolution_weights" in encoder:
        storage = encoder["convolution_weights"]
        kept = f", {len(storage['float32'])} float32" if "float32" in storage else ""
        text += (
            f", and convolution weights float16, {len(storage['int8'])} of them int8 (GPTQ){kept}, "
            f"{storage['size_budget_mb']:g} MB budget"
        )
    if "products" in decoder:
        products = decoder["products"]
        text += f"; decoder products int8 in blocks of {products['block_size']} ({products['format']})"
    return text
