"""The entry point: load any supported caption format as a validated `datasets.Dataset`."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..storage import read_json
from .bad_samples import (
    BadSampleHandler,
    BadSampleReport,
    OnBadSample,
    VerifyImages,
    check_policy,
    check_verify_images,
    validate_records,
)
from .detection import DATA_FORMATS, REGION_DATA_FORMATS, DataFormat, detect_format, detect_json_format
from .readers import read_coco, read_flickr8k, read_imagefolder, read_karpathy
from .records import CaptionRecord, records_to_dataset
from .regions import load_region_dataset_with_report

logger = logging.getLogger(__name__)

_SPLIT_SLICE = re.compile(r"(\w+)\[(-?\d*):(-?\d*)\]")


def load_caption_dataset(
    path: str | Path,
    split: str = "train",
    data_format: DataFormat | None = None,
    on_bad_sample: OnBadSample = "skip",
    image_root: str | Path | None = None,
    karpathy_splits: Mapping[str, Sequence[str]] | None = None,
    verify_images: VerifyImages = True,
    num_workers: int | None = None,
) -> Dataset:
    """Load an image-captioning dataset: one row per image, with all its reference captions.

    The region format "flickr30k_entities" returns region rows instead (one per photo and
    phrase chain with a box): see :func:`~soli_hf.data.regions.load_region_dataset`.

    Args:
        path: A Flickr8k root folder, a COCO captions JSON, a Karpathy ``dataset_*.json``,
            an image folder with ``metadata.jsonl``, or a Flickr30k Entities folder.
        split: The split to load ("train", "dev"/"val"/"validation", "test", ...). Ignored
            for COCO, where one JSON file is one split. A slice as in ``datasets``, e.g.
            ``"train[:5000]"`` or ``"train[5000:]"``, keeps those rows of the split's usable
            samples, in the split's order (caption data only).
        data_format: "flickr8k", "coco", "karpathy", "imagefolder" or "flickr30k_entities"; detected from
            ``path`` when None (see :func:`~soli_hf.data.detect_format`).
        on_bad_sample: "skip" drops bad samples (an empty caption drops only that caption),
            then logs one warning summarising them; "error" raises ``ValueError`` naming
            the file and row of the first one.
        image_root: Folder the image file names are relative to. Defaults: Flickr8k
            ``<path>/Flicker8k_Dataset``, image folder: the metadata file's folder,
            COCO/Karpathy: the JSON file's folder. For "flickr30k_entities" it is the
            Flickr8k root folder that holds the photos and the split lists (default: the
            ``flickr8k`` folder beside ``path``).
        karpathy_splits: For Karpathy files, the Karpathy split names each requested split
            includes, e.g. ``{"train": ("train", "restval")}`` (merged over the default
            identity mapping).
        verify_images: How each image file is checked. True (cheap): the header is
            parsed, a PNG's chunk checksums are verified, a JPEG that ends with its
            end-of-image marker passes without decoding, other files are decoded (JPEGs
            at 1/8 scale); this catches truncated files and broken headers. "full": every
            image is decoded, which also catches a JPEG broken in the middle whose end is
            intact (slower: one decode per JPEG). False: only that the files exist. No
            check catches a JPEG whose middle was overwritten with bytes the decoder
            accepts (zeros, say): JPEG has no checksum, and it decodes into a partly
            grey picture (see :mod:`soli_hf.data.bad_samples`).
        num_workers: Threads used to check images (default: 2 x CPU count, at most 16).

    Returns:
        An in-memory ``datasets.Dataset`` with columns ``image_id`` (str), ``image``
        (``datasets.Image()``, decoded lazily from the file), ``image_path`` (str, absolute)
        and ``captions`` (list of raw str). ``dataset.info.description`` records the
        source and the bad-sample counts; use :func:`load_caption_dataset_with_report`
        for the full :class:`~soli_hf.data.BadSampleReport`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown format or split, a JSON annotation file that is not
            UTF-8 JSON (naming the file, and the line and column of a syntax error), a
            bad sample under "error", or when no usable sample is left.
    """
    dataset, _ = load_caption_dataset_with_report(
        path,
        split=split,
        data_format=data_format,
        on_bad_sample=on_bad_sample,
        image_root=image_root,
        karpathy_splits=karpathy_splits,
        verify_images=verify_images,
        num_workers=num_workers,
    )
    return dataset


def load_caption_dataset_with_report(
    path: str | Path,
    split: str = "train",
    data_format: DataFormat | None = None,
    on_bad_sample: OnBadSample = "skip",
    image_root: str | Path | None = None,
    karpathy_splits: Mapping[str, Sequence[str]] | None = None,
    verify_images: VerifyImages = True,
    num_workers: int | None = None,
) -> tuple[Dataset, BadSampleReport]:
    """Like :func:`load_caption_dataset`, also returning the report of skipped bad samples."""
    check_policy(on_bad_sample)
    check_verify_images(verify_images)
    if data_format is not None and data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS} or None, got {data_format!r}")
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"caption data not found: {path}")
    data = read_json(path) if path.is_file() and path.suffix == ".json" else None
    data_format = data_format or (detect_json_format(data, path) if data is not None else detect_format(path))
    split_name, rows = parse_split(split)
    if data_format in REGION_DATA_FORMATS:  # Flickr30k Entities, the one region format
        if rows != slice(None):
            raise ValueError(f"split {split!r}: a slice of a split is for caption data; for regions use max_*_images")
        return load_region_dataset_with_report(path, split, image_root, on_bad_sample, verify_images, num_workers)
    handle = BadSampleHandler(on_bad_sample)
    root = Path(image_root).absolute() if image_root is not None else None
    records = _read_records(path, data, data_format, split_name, handle, root, karpathy_splits)
    records = validate_records(records, handle, verify_images=verify_images, num_workers=num_workers)
    if records and not records[rows]:
        raise ValueError(f"split {split!r} keeps no row of the {len(records)} usable samples of {split_name!r}")
    records = records[rows]
    report = handle.report
    if report:
        logger.warning("%s %s split %r: %s", data_format, path, split, report.summary())
    if not records:
        raise ValueError(f"no usable sample in {data_format} data {path} (split {split!r}): {report.summary()}")
    description = f"{data_format} captions from {path}, split {split!r}; bad samples skipped: {report.counts}"
    return records_to_dataset(records, split_name, description), report


def parse_split(split: str) -> tuple[str, slice]:
    """`"train[5000:]"` -> `("train", slice(5000, None))`; a plain name -> `(name, slice(None))`: the slice
    syntax of `datasets.load_dataset(split=...)`, in rows (no percentages, no step)."""
    match = _SPLIT_SLICE.fullmatch(split)
    if match is None:
        if "[" in split or "]" in split:
            raise ValueError(f"split {split!r}: write a slice of rows as NAME[START:STOP], e.g. 'train[:5000]'")
        return split, slice(None)
    name, start, stop = match.groups()
    return name, slice(int(start) if start else None, int(stop) if stop else None)


def _read_records(
    path: Path,
    data: Any,
    data_format: str,
    split: str,
    handle: BadSampleHandler,
    image_root: Path | None,
    karpathy_splits: Mapping[str, Sequence[str]] | None,
) -> list[CaptionRecord]:
    """Dispatch to the reader of ``data_format`` (``data``: the parsed JSON, if already read)."""
    if data_format == "flickr8k":
        return read_flickr8k(path, split, handle, image_root)
    if data_format == "imagefolder":
        return read_imagefolder(path, split, handle, image_root)
    if data is None:
        data = read_json(path)
    if data_format == "coco":
        return read_coco(data, path, handle, image_root)
    return read_karpathy(data, path, split, handle, image_root, karpathy_splits)
