"""Reading `soli_onnx.json`, checked against what the runtime reads from it (standard library only).

A manifest that cannot be read, is not JSON, lacks a key the runtime needs, has a value of the wrong JSON type, or
names a graph file that is missing gives a `ValueError` naming the file (and the key, as a dotted path such as
`generation.num_beams` or `graphs.encoder.inputs[0].name`) and saying to re-export the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..storage import read_json
from .spec import GRAPHS, MANIFEST_NAME, MANIFEST_VERSION

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
_JSON_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
    list: "an array",
    dict: "an object",
}


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
    for graph in manifest["graphs"].values():
        if not (folder / graph["file"]).is_file():
            raise ValueError(f"onnx_dir {folder}: missing {graph['file']} named in {MANIFEST_NAME}; {REEXPORT}")
    return manifest


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
