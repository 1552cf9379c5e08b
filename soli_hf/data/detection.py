"""Guess the caption format of a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..storage import read_json
from .readers import FLICKR8K_TEXT_DIR, IMAGEFOLDER_METADATA, imagefolder_metadata_files
from .regions import FLICKR30K_ANNOTATIONS_DIR, FLICKR30K_SENTENCES_DIR

DataFormat = Literal["flickr8k", "coco", "karpathy", "imagefolder", "flickr30k_entities"]
DATA_FORMATS: tuple[str, ...] = ("flickr8k", "coco", "karpathy", "imagefolder", "flickr30k_entities")
#: The formats whose rows are regions (a box and its phrases, :data:`~soli_hf.data.records.REGION_FEATURES`).
REGION_DATA_FORMATS: tuple[str, ...] = ("flickr30k_entities",)


def detect_format(path: str | Path) -> DataFormat:
    """Detect the caption format of ``path``.

    A folder with a ``Flickr8k_text`` subfolder is "flickr8k"; a folder with
    ``Sentences`` and ``Annotations`` subfolders is "flickr30k_entities"; a folder with a
    ``metadata.jsonl`` (in it or in a split subfolder) is "imagefolder"; a ``.json``
    file is classified by :func:`detect_json_format`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the format cannot be recognised (the message says what was looked for).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caption data not found: {path}")
    if path.is_dir():
        if (path / FLICKR8K_TEXT_DIR).is_dir():
            return "flickr8k"
        if (path / FLICKR30K_SENTENCES_DIR).is_dir() and (path / FLICKR30K_ANNOTATIONS_DIR).is_dir():
            return "flickr30k_entities"
        if imagefolder_metadata_files(path):
            return "imagefolder"
        raise ValueError(
            f"cannot detect the caption format of folder {path}: looked for a {FLICKR8K_TEXT_DIR!r} subfolder "
            f"(flickr8k), {FLICKR30K_SENTENCES_DIR!r} and {FLICKR30K_ANNOTATIONS_DIR!r} subfolders "
            f"(flickr30k_entities) and a {IMAGEFOLDER_METADATA!r} in it or in a split subfolder (imagefolder); "
            f"pass data_format= explicitly"
        )
    if path.suffix == ".json":
        return detect_json_format(read_json(path), path)
    raise ValueError(
        f"cannot detect the caption format of {path}: expected a folder (flickr8k, flickr30k_entities, imagefolder) "
        f"or a .json file (coco, karpathy); pass data_format= explicitly"
    )


def detect_json_format(data: Any, path: Path) -> DataFormat:
    """Classify parsed JSON: "coco" if it has ``annotations``, "karpathy" if its ``images`` carry ``sentences``."""
    if isinstance(data, dict):
        if "annotations" in data:
            return "coco"
        images = data.get("images")
        if isinstance(images, list) and any(isinstance(image, dict) and "sentences" in image for image in images):
            return "karpathy"
    raise ValueError(
        f"cannot detect the caption format of {path}: looked for a top-level 'annotations' list (coco) "
        f"and 'images' entries with 'sentences' (karpathy); pass data_format= explicitly"
    )
