"""Frozen features computed once and cached on disk, shared by SOLI's teacher features (`teacher`) and AlignCap's
region features (`regions`).

A cache entry is one folder, `<cache_dir>/<kind>-<slot>`, holding `features.safetensors` (named tensors) and
`key.json`. The slot (a digest of what is cached: which model, which images, which boxes) names the folder; the key
holds content fingerprints (of the model's files or weights and of the images), so a changed file makes the folder
stale and it is recomputed in place instead of beside it. The folder is written atomically
(`storage.write_folder_atomically`): a kill never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..storage import read_json, write_folder_atomically

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
KEY_FILE = "key.json"


def digest(data: bytes) -> str:
    """The sha256 hex digest of `data`."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str | None:
    """The digest of a file's content; None for a missing file (the loader reports it as a bad sample)."""
    return digest(path.read_bytes()) if path.is_file() else None


def files_fingerprint(folder: Path, patterns: Iterable[str]) -> dict[str, str]:
    """{file name: digest of its content} of the files of `folder` that match `patterns`."""
    files = sorted({path for pattern in patterns for path in folder.glob(pattern)})
    return {path.name: digest(path.read_bytes()) for path in files}


def images_digest(stamps: Sequence[str | None]) -> str:
    """One digest of a list of images' content digests (`digest`, `file_digest`; None for a missing file), in order:
    the `images` fingerprint of a cache key."""
    return digest(json.dumps(list(stamps)).encode())


def select_rows(features: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """`features`' rows `rows` (along the first dimension), in order, as float32 (the cache keeps float16)."""
    return features.index_select(0, torch.tensor(list(rows), dtype=torch.long)).float()


def cache_folder(cache_dir: str | Path, kind: str, identity: Any) -> Path:
    """`<cache_dir>/<kind>-<slot>`, the slot being a digest of `identity` (JSON data naming what is cached)."""
    return Path(cache_dir) / f"{kind}-{digest(json.dumps(identity).encode())[:16]}"


def load_or_compute_features(
    folder: Path,
    key: dict[str, Any],
    compute: Callable[[], dict[str, torch.Tensor]],
    *,
    kind: str,
    compute_if_missing: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors cached in `folder` under `key`, or `compute()`'s, then written there (atomically).

    Args:
        folder: the cache folder (`cache_folder`).
        key: JSON data holding the fingerprints that decide whether the folder is still valid.
        compute: makes the named tensors (contiguous; float16 to keep the cache small).
        kind: what is cached, for the log and the errors ("teacher", "region features").
        compute_if_missing: False only reads the cache (the processes of a data-parallel run other than the main
            one, which computed the features first).

    Raises:
        FileNotFoundError: the cache lacks the features and `compute_if_missing` is False.
    """
    cached = _read_cache(folder, key, kind)
    if cached is not None:
        return cached
    if not compute_if_missing:
        raise FileNotFoundError(
            f"{kind} cache {folder}: not written by the main process; every process must see the cache folder "
            "(on several machines, a shared filesystem)"
        )
    tensors = compute()

    def write(tmp: Path) -> None:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, tmp / FEATURES_FILE)
        (tmp / KEY_FILE).write_text(json.dumps(key), encoding="utf-8")

    write_folder_atomically(folder, write)
    return tensors


def _read_cache(folder: Path, key: dict[str, Any], kind: str) -> dict[str, torch.Tensor] | None:
    """The cached tensors when `folder` holds them under the same key, else None (missing, stale or unreadable)."""
    if not (folder / KEY_FILE).is_file() or not (folder / FEATURES_FILE).is_file():
        return None
    try:
        if read_json(folder / KEY_FILE) != key:
            logger.info("%s cache %s is stale (a changed image or model): recomputing", kind, folder)
            return None
        tensors = load_file(folder / FEATURES_FILE)
    except (ValueError, OSError, SafetensorError) as error:
        logger.warning("%s cache %s is unreadable (%s): recomputing", kind, folder, error)
        return None
    logger.info("%s from the cache %s", kind, folder)
    return tensors
