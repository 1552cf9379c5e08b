"""Readers for the supported caption formats.

Each reader turns annotation files into :class:`~soli_hf.data.records.CaptionRecord`
objects (raw captions, absolute image paths, the row each came from) and passes
malformed entries to the bad-sample handler. Image files are not opened here: the
shared validation in :mod:`soli_hf.data.bad_samples` does that for every format.

Text files are read as UTF-8, a leading byte order mark (BOM) ignored. In the
line-based files (Flickr8k's token and split files, ``metadata.jsonl``) a line that is
not UTF-8 is an ``undecodable_line`` bad sample naming the file and line; a JSON file
that is not UTF-8 or not valid JSON raises ``ValueError`` naming the file (and the line
and column of a syntax error).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from .bad_samples import BadSample, BadSampleKind, Handle
from .records import CaptionRecord, RecordBuilder

T = TypeVar("T")

#: Names under which a validation split may be stored; asking for one finds the others.
VALIDATION_SPLIT_NAMES = frozenset({"validation", "val", "dev"})

FLICKR8K_TEXT_DIR = "Flickr8k_text"
FLICKR8K_IMAGE_DIR = "Flicker8k_Dataset"  # the official (misspelt) folder name
FLICKR8K_TOKEN_FILE = "Flickr8k.token.txt"
FLICKR8K_SPLIT_PREFIX, FLICKR8K_SPLIT_SUFFIX = "Flickr_8k.", "Images.txt"

#: Karpathy split names included in each requested split unless the caller overrides them.
DEFAULT_KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val",),
    "test": ("test",),
    "restval": ("restval",),
}

IMAGEFOLDER_METADATA = "metadata.jsonl"

#: The characters that ``errors="surrogateescape"`` decodes bytes that are not UTF-8 to (U+DC80..U+DCFF).
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def resolve_split(split: str, available: Mapping[str, T], what: str) -> T:
    """Return ``available[split]``, accepting validation/val/dev for one another.

    Raises:
        ValueError: naming ``what`` was searched and the splits that exist.
    """
    if split in available:
        return available[split]
    if split in VALIDATION_SPLIT_NAMES:
        aliases = sorted(VALIDATION_SPLIT_NAMES & available.keys())
        if len(aliases) == 1:
            return available[aliases[0]]
    raise ValueError(f"split {split!r} not found in {what}; available splits: {sorted(available)}")


def read_flickr8k(root: Path, split: str, handle: Handle, image_root: Path | None = None) -> list[CaptionRecord]:
    """Read the official Flickr8k layout.

    ``<root>/Flickr8k_text/Flickr_8k.<split>Images.txt`` lists the split's images,
    ``<root>/Flickr8k_text/Flickr8k.token.txt`` holds ``<id>.jpg#<n>\\t<caption>`` lines
    and the images are in ``<root>/Flicker8k_Dataset`` (or ``image_root``).
    ``image_id`` is the file name without its extension.
    """
    text_dir = root / FLICKR8K_TEXT_DIR
    split_pattern = f"{text_dir}/{FLICKR8K_SPLIT_PREFIX}<split>{FLICKR8K_SPLIT_SUFFIX}"
    split_file = resolve_split(split, flickr8k_split_files(text_dir), split_pattern)
    image_dir = image_root or root / FLICKR8K_IMAGE_DIR
    builder = RecordBuilder()
    for line_no, line in numbered_lines(split_file, handle):
        name = line.strip()
        builder.add_image(PurePosixPath(name).stem, str(image_dir / name), f"{split_file} line {line_no}")
    token_file = text_dir / FLICKR8K_TOKEN_FILE
    for line_no, line in numbered_lines(token_file, handle):
        row = f"{token_file} line {line_no}"
        name, caption = _parse_token_line(line)
        if name is None:
            detail = "expected '<image>#<n>\\t<caption>'"
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(token_file), row, detail))
            continue
        builder.add_caption(PurePosixPath(name).stem, caption, row)
    return builder.records()


def read_coco(
    data: Mapping[str, Any], json_path: Path, handle: Handle, image_root: Path | None = None
) -> list[CaptionRecord]:
    """Read a COCO captions JSON (``images[].id/file_name``, ``annotations[].image_id/caption``).

    One COCO file is one split. Images are looked up in ``image_root`` (default: the
    JSON file's folder); ``image_id`` is ``str(images[].id)``. An image entry repeating
    an earlier id is a malformed entry (the first one is kept).
    """
    image_root = image_root or json_path.parent
    builder = RecordBuilder()
    for index, entry in enumerate(_json_list(data, "images", json_path)):
        row = f"{json_path} images[{index}]"
        if not _has_keys(entry, id=(int, str), file_name=str):
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(json_path), row, "expected 'id' and 'file_name'"))
            continue
        _add_unique_image(builder, str(entry["id"]), str(image_root / entry["file_name"]), json_path, row, handle)
    for index, entry in enumerate(_json_list(data, "annotations", json_path)):
        row = f"{json_path} annotations[{index}]"
        if not _has_keys(entry, image_id=(int, str), caption=str):
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(json_path), row, "expected 'image_id' and 'caption'"))
        elif not builder.add_caption(str(entry["image_id"]), entry["caption"], row):
            detail = f"unknown image_id {entry['image_id']!r}"
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(json_path), row, detail))
    return builder.records()


def read_karpathy(
    data: Mapping[str, Any],
    json_path: Path,
    split: str,
    handle: Handle,
    image_root: Path | None = None,
    karpathy_splits: Mapping[str, Sequence[str]] | None = None,
) -> list[CaptionRecord]:
    """Read a Karpathy ``dataset_*.json`` split file.

    The requested ``split`` selects the images whose ``split`` field is one of
    ``karpathy_splits[split]`` (merged over :data:`DEFAULT_KARPATHY_SPLITS`; e.g.
    ``{"train": ("train", "restval")}``). Image paths are
    ``image_root/[filepath/]filename`` (default root: the JSON file's folder);
    ``image_id`` is ``str(cocoid)`` when present, else the file name without extension;
    an image entry repeating an earlier id is a malformed entry (the first one is kept,
    with its sentences only). Captions are ``sentences[].raw``.
    """
    mapping = {**DEFAULT_KARPATHY_SPLITS, **(karpathy_splits or {})}
    names = resolve_split(split, mapping, "the Karpathy split mapping")
    wanted = {names} if isinstance(names, str) else set(names)
    image_root = image_root or json_path.parent
    builder = RecordBuilder()
    for index, entry in enumerate(_json_list(data, "images", json_path)):
        row = f"{json_path} images[{index}]"
        if not _has_keys(entry, filename=str, split=str, sentences=list):
            detail = "expected 'filename', 'split' and 'sentences'"
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(json_path), row, detail))
            continue
        if entry["split"] not in wanted:
            continue
        image_id = str(entry.get("cocoid", PurePosixPath(entry["filename"]).stem))
        image_path = image_root / (entry.get("filepath") or "") / entry["filename"]
        if not _add_unique_image(builder, image_id, str(image_path), json_path, row, handle):
            continue
        for sentence_index, sentence in enumerate(entry["sentences"]):
            sentence_row = f"{row}.sentences[{sentence_index}]"
            if not _has_keys(sentence, raw=str):
                handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(json_path), sentence_row, "expected 'raw'"))
                continue
            builder.add_caption(image_id, sentence["raw"], sentence_row)
    return builder.records()


def read_imagefolder(root: Path, split: str, handle: Handle, image_root: Path | None = None) -> list[CaptionRecord]:
    """Read an image folder described by ``metadata.jsonl`` (HF imagefolder convention).

    The split's metadata is ``<root>/<split>/metadata.jsonl``; a ``<root>/metadata.jsonl``
    is the "train" split. Each line is a JSON object with ``file_name`` (relative to the
    metadata file's folder, or to ``image_root``) and ``captions`` (a list of strings)
    and/or ``text`` (a string). Lines naming the same file are merged into one row;
    ``image_id`` is ``file_name`` without its extension.
    """
    metadata_pattern = f"{root}/[<split>/]{IMAGEFOLDER_METADATA}"
    metadata = resolve_split(split, imagefolder_metadata_files(root), metadata_pattern)
    image_root = image_root or metadata.parent
    builder = RecordBuilder()
    for line_no, line in numbered_lines(metadata, handle):
        row = f"{metadata} line {line_no}"
        entry = _parse_json_line(line)
        captions = _metadata_captions(entry)
        if captions is None or not _has_keys(entry, file_name=str):
            detail = "expected a JSON object with 'file_name' and 'captions' (list of str) or 'text' (str)"
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(metadata), row, detail))
            continue
        image_id = str(PurePosixPath(entry["file_name"]).with_suffix(""))
        builder.add_image(image_id, str(image_root / entry["file_name"]), row)
        for caption in captions:
            builder.add_caption(image_id, caption, row)
    return builder.records()


def imagefolder_metadata_files(root: Path) -> dict[str, Path]:
    """Split name -> ``<root>/<split>/metadata.jsonl``; a ``<root>/metadata.jsonl`` is "train"."""
    splits = {
        child.name: child / IMAGEFOLDER_METADATA
        for child in sorted(root.iterdir())
        if (child / IMAGEFOLDER_METADATA).is_file()
    }
    if (root / IMAGEFOLDER_METADATA).is_file():
        splits.setdefault("train", root / IMAGEFOLDER_METADATA)
    return splits


def flickr8k_split_files(text_dir: Path) -> dict[str, Path]:
    """Split name -> ``Flickr_8k.<split>Images.txt`` for the split files that exist."""
    prefix, suffix = FLICKR8K_SPLIT_PREFIX, FLICKR8K_SPLIT_SUFFIX
    return {path.name[len(prefix) : -len(suffix)]: path for path in sorted(text_dir.glob(f"{prefix}*{suffix}"))}


def numbered_lines(path: Path, handle: Handle) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line without its line ending)`` for the non-blank lines of a UTF-8 text file.

    A leading BOM is dropped; a line that is not UTF-8 goes to ``handle`` as an ``undecodable_line`` instead.
    """
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as file:
        for line_no, line in enumerate(file, start=1):
            if escaped := _ESCAPED_BYTE.search(line):
                byte = ord(escaped.group()) - 0xDC00
                detail = f"not UTF-8 text (byte 0x{byte:02x} at column {escaped.start() + 1})"
                handle(BadSample(BadSampleKind.UNDECODABLE_LINE, str(path), f"{path} line {line_no}", detail))
            elif line.strip():
                yield line_no, line.rstrip("\r\n")


def _add_unique_image(
    builder: RecordBuilder, image_id: str, image_path: str, json_path: Path, row: str, handle: Handle
) -> bool:
    """Declare an image of a JSON file; an id declared before is a malformed entry naming both rows (False)."""
    first_row = builder.add_image(image_id, image_path, row)
    if first_row is None:
        return True
    detail = f"duplicate image id {image_id!r}, first declared at {first_row}"
    handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(json_path), row, detail))
    return False


def _parse_token_line(line: str) -> tuple[str | None, str]:
    """Split a Flickr8k token line into (image file name, raw caption); name None if malformed."""
    key, tab, caption = line.partition("\t")
    name, hash_sign, number = key.partition("#")
    if not (tab and hash_sign and name and number.isdigit()):
        return None, ""
    return name, caption


def _parse_json_line(line: str) -> Any:
    """Parse one JSON Lines entry; None when it is not valid JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _metadata_captions(entry: Any) -> list[str] | None:
    """Captions of a metadata.jsonl entry (``captions`` then ``text``); None if malformed."""
    if not isinstance(entry, dict) or ("captions" not in entry and "text" not in entry):
        return None
    captions = entry.get("captions", [])
    text = entry.get("text")
    if isinstance(captions, str):
        captions = [captions]
    if not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
        return None
    if text is None:
        return captions
    return [*captions, text] if isinstance(text, str) else None


def _has_keys(entry: Any, **types: type | tuple[type, ...]) -> bool:
    """True if ``entry`` is a dict whose given keys exist with the given types."""
    return isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in types.items())


def _json_list(data: Any, key: str, json_path: Path) -> list[Any]:
    """``data[key]`` as a list; a file without it is not this format at all (ValueError)."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise ValueError(f"{json_path}: expected a top-level {key!r} list")
    return value
