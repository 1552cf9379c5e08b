"""Redistributable sample photographs for demos and benchmarks.

`load_sample_photos`: scikit-image's five, public domain or CC0 (see each `skimage.data.<name>` docstring); needs the
`demo` extra (scikit-image). `read_photo_set`: a committed folder of photos listed by a `photos.json` manifest (what
each shows, the package it was taken from, its licence and attribution), such as the photos outside Flickr8k of a
source checkout (`OUTSIDE_FLICKR_PHOTOS`, described by its SOURCES.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from PIL import Image

from ..image_transforms_soli import to_rgb_image
from ..storage import read_json

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
#: The photos outside Flickr8k / Flickr30k (scikit-image's and 21 more from PyPI wheels and Debian packages).
OUTSIDE_FLICKR_PHOTOS = Path(__file__).resolve().parents[2] / "benchmarks" / "photos_outside_flickr"
#: The manifest of a photo set folder: {"photos": [{"file": ..., "shows": ..., ...}, ...]}.
MANIFEST_NAME = "photos.json"


def load_sample_photos() -> dict[str, Image.Image]:
    """Name -> photo (full resolution; SOLI's processor makes the LR input)."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in SAMPLE_PHOTOS}


@dataclass(frozen=True)
class SetPhoto:
    """One photo of a photo set, as its manifest entry describes it.

    Attributes:
        file: the photo's path relative to the set's folder (e.g. "photos/kde_path.jpg").
        shows: what the photo shows, in a few words.
        package: the package the original was taken from; `version` its version.
        original_path: the original's path inside that package.
        licence: the licence, and where the package states it.
        attribution: the author or rights holder to credit.
        path: the photo file itself (the folder joined with `file`).
    """

    file: str
    shows: str
    package: str
    version: str
    original_path: str
    licence: str
    attribution: str
    path: Path

    @property
    def name(self) -> str:
        """The file name without its suffix (e.g. "kde_path")."""
        return Path(self.file).stem

    def open(self) -> Image.Image:
        """The photo as an RGB image (`ImageInputError`, a `ValueError` naming the file, when it cannot be read)."""
        return to_rgb_image(self.path)


def read_photo_set(folder: Path = OUTSIDE_FLICKR_PHOTOS) -> list[SetPhoto]:
    """The photos of `folder`'s manifest (`photos.json`), in its order; the files are not opened here.

    Raises:
        ValueError: a missing or malformed manifest, or an entry without one of the fields, naming the manifest.
    """
    manifest = Path(folder) / MANIFEST_NAME
    if not manifest.is_file():
        raise ValueError(f"{manifest}: no photo manifest there")
    content = read_json(manifest)
    entries = content.get("photos") if isinstance(content, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{manifest}: expected {{"photos": [an entry per photo, ...]}}')
    keys = [field.name for field in fields(SetPhoto) if field.name != "path"]
    photos = []
    for index, entry in enumerate(entries):
        missing = [key for key in keys if not isinstance(entry, dict) or not isinstance(entry.get(key), str)]
        if missing:
            raise ValueError(f"{manifest}: photo {index} lacks {missing} (text fields)")
        photos.append(SetPhoto(**{key: entry[key] for key in keys}, path=Path(folder) / entry["file"]))
    return photos
