"""Frozen features computed once and cached on disk, shared by SOLI's teacher features (`teacher`) and AlignCap's
region features (`regions`).

A cache entry is one folder, `<cache_dir>/<kind>-<slot>`, holding `features.safetensors` (named tensors) and
`key.json`. The slot (a digest of what is cached: which model, which images, which boxes) names the folder; the key
holds content fingerprints (of the model's files or weights and of the images), so a changed file makes the folder
stale and it is recomputed in place instead of beside it. The folder is written atomically
(`storage.write_folder_atomically`): a kill never leaves half of one.

The features are computed part by part (rows of the first dimension), each part saved as soon as it is done in
`<folder>.parts/` under the same key, so a computation killed after an hour continues from its last finished part;
the parts folder is deleted once the whole cache folder is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..storage import read_json, write_file_atomically, write_folder_atomically, write_text_atomically

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
KEY_FILE = "key.json"
PARTS_SUFFIX = ".parts"


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
    compute_rows: Callable[[Sequence[int]], dict[str, torch.Tensor]],
    parts: Sequence[Sequence[int]],
    *,
    kind: str,
    compute_if_missing: bool = True,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors cached in `folder` under `key`, or computed part by part and then written there (atomically).

    Args:
        folder: the cache folder (`cache_folder`).
        key: JSON data holding the fingerprints that decide whether the folder is still valid.
        compute_rows: makes the named tensors of some rows (first dimension = those rows, in order; float16 to keep
            the cache small). A name a part leaves out stays zero for its rows.
        parts: the row indices of each part, together every row once (the first dimension of the cached tensors is
            their count); each finished part is saved, so a killed computation resumes at the first missing one.
        kind: what is cached, for the progress bar, the log and the errors ("teacher", "region features").
        compute_if_missing: False only reads the cache (the processes of a data-parallel run other than the main
            one, which computed the features first).
        show_progress: a tqdm bar over the rows while computing.

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
    parts_folder = folder.with_name(folder.name + PARTS_SUFFIX)
    parts_key = key | {"parts": [list(part) for part in parts]}
    tensors = _compute_in_parts(parts_folder, parts_key, compute_rows, parts, kind, show_progress)

    def write(tmp: Path) -> None:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, tmp / FEATURES_FILE)
        (tmp / KEY_FILE).write_text(json.dumps(key), encoding="utf-8")

    write_folder_atomically(folder, write)
    shutil.rmtree(parts_folder, ignore_errors=True)
    return tensors


def _compute_in_parts(
    parts_folder: Path,
    parts_key: dict[str, Any],
    compute_rows: Callable[[Sequence[int]], dict[str, torch.Tensor]],
    parts: Sequence[Sequence[int]],
    kind: str,
    show_progress: bool,
) -> dict[str, torch.Tensor]:
    """Every part's tensors (read from `parts_folder` when a previous computation under the same key saved it, else
    computed and saved there at once), assembled into tensors of all rows."""
    key_file = parts_folder / KEY_FILE
    if parts_folder.is_dir() and (not key_file.is_file() or _read_key(key_file) != parts_key):
        shutil.rmtree(parts_folder)
    parts_folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(key_file, json.dumps(parts_key))
    num_rows = sum(len(part) for part in parts)
    assembled: dict[str, torch.Tensor] = {}
    resumed = 0
    with tqdm(total=num_rows, desc=kind, disable=not show_progress) as progress:
        for number, rows in enumerate(parts):
            path = parts_folder / f"part-{number:05d}.safetensors"
            part = _read_part(path)
            if part is None:
                part = {name: tensor.contiguous() for name, tensor in compute_rows(rows).items()}
                write_file_atomically(path, lambda tmp, part=part: save_file(part, tmp))
            else:
                resumed += 1
            index = torch.tensor(list(rows), dtype=torch.long)
            for name, tensor in part.items():
                if name not in assembled:
                    assembled[name] = torch.zeros((num_rows, *tensor.shape[1:]), dtype=tensor.dtype)
                assembled[name][index] = tensor
            progress.update(len(rows))
    if resumed:
        logger.info("%s: %d of %d parts read back from %s", kind, resumed, len(parts), parts_folder)
    return assembled


def _read_key(path: Path) -> Any:
    """A key file's data; None when it is unreadable."""
    try:
        return read_json(path)
    except (ValueError, OSError):
        return None


def _read_part(path: Path) -> dict[str, torch.Tensor] | None:
    """A saved part's tensors; None when it is missing or unreadable (a part is written atomically, so only a
    damaged disk makes one unreadable)."""
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:
        logger.warning("%s is unreadable (%s): computing it again", path, error)
        return None


def row_parts(num_rows: int, part_size: int) -> list[range]:
    """Rows 0..num_rows-1 in consecutive parts of `part_size` rows."""
    return [range(start, min(start + part_size, num_rows)) for start in range(0, num_rows, part_size)]


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
