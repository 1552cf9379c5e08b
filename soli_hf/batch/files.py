"""Finding image files (files, folders, globs) and captioning them in batches in one process, with any `Captioner`:
what `soli caption` runs, and what each Ray worker of `caption_archive` runs on its share of an archive.

Each file is turned into its small LR input the moment it is opened (a batch holds those, never full-size photos),
and a file that cannot be read is a `SkippedImage` with its reason, never an exception.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..captioner import Captioner
from ..image_transforms_soli import ImageInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class CaptionedImage:
    """A captioned file and the LR input the model saw."""

    path: Path
    caption: str
    lr_image: Image.Image


@dataclass
class SkippedImage:
    """A file that could not be captioned, and why (e.g. "not an image file PIL can read")."""

    path: Path
    reason: str


def _listed(paths: Iterator[Path]) -> list[Path]:
    """The image files among `paths` (by suffix; folders left out), sorted."""
    return sorted(path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir())


def find_images(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted, not recursive) and glob patterns -> image paths, in order, once each.

    A path that exists but is no regular file (a FIFO, a device) is kept: opening refuses it with its reason, so
    it is skipped by name rather than silently.

    Raises:
        ValueError: a path that does not exist, a glob or folder that matches no image.
    """
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = _listed(path.iterdir())
        elif path.exists():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = _listed(Path(match) for match in glob.glob(pattern))
        else:
            raise ValueError(f"{pattern}: no such file or folder")
        if not matches:
            raise ValueError(f"{pattern}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        found += [match for match in matches if match not in found]
    return found


def caption_files(
    captioner: Captioner, paths: Sequence[Path], *, batch_size: int = 16, **decoding: int | None
) -> Iterator[CaptionedImage | SkippedImage]:
    """Caption the files in batches, yielding each result as soon as it is made: a `SkippedImage` the moment a file
    turns out unreadable (any `ImageInputError`: missing, no regular file, not an image, corrupt, too many pixels,
    NaN values, ...), then the `CaptionedImage`s of each batch. `decoding` (`num_beams`, `max_new_tokens`; None:
    the model's own) goes to `Captioner.caption_pixels`. Shows a progress bar when there is more than one batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with tqdm(total=len(paths), unit="img", desc="captioning", disable=len(paths) <= batch_size) as progress:
        for start in range(0, len(paths), batch_size):
            opened, rows = [], []
            for path in paths[start : start + batch_size]:
                try:
                    # Preprocessed the moment it is opened: the batch holds the small LR input, not the photo.
                    rows.append(captioner.preprocess(path)[0])
                    opened.append(path)
                except ImageInputError as error:
                    yield SkippedImage(path, error.reason)
            if rows:
                pixels = np.stack(rows)
                captions = captioner.caption_pixels(pixels, **decoding)
                for path, caption, lr_image in zip(opened, captions, captioner.lr_images(pixels), strict=True):
                    yield CaptionedImage(path, caption, lr_image)
            progress.update(len(paths[start : start + batch_size]))
