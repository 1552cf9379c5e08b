"""High-resolution teacher features for the distillation loss, computed once and cached on disk.

A frozen MobileNetV2 (by default the ImageNet one the backbone starts from) sees each training photo at its own
input size (224x224); its last feature map, average-pooled to the student's `grid_size`, is the target that the LR
and SR branches' backbone grids are pulled towards (`losses_soli.teacher_distillation`).

The cache is one folder per teacher, grid size and list of images under `cache_dir` (`feature_cache`): the
features ((num_images, grid_size**2, channels) float16) and a key with a fingerprint of the teacher's files and of
the images (their content), so a changed image or teacher makes the folder stale and it is recomputed; the folder is
written atomically, so a kill never leaves half of one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers import MobileNetV2Model

from ..data import safe_load_image
from ..storage import read_json
from .feature_cache import (
    cache_folder,
    digest,
    file_digest,
    files_fingerprint,
    images_digest,
    load_or_compute_features,
    row_parts,
    select_rows,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGES_PER_PART = 500  # images whose features are saved together while computing (the resumable unit)
#: The teacher folder's files whose content decides its features (weights, architecture, pixel normalisation).
_TEACHER_FILE_PATTERNS = ("*.safetensors", "config.json", "preprocessor_config.json")


class TeacherFeatures:
    """The teacher grids of a list of images, looked up by image id."""

    def __init__(self, image_ids: list[str], features: torch.Tensor) -> None:
        """`features[i]` (grid_size**2, channels), float16, is the grid of `image_ids[i]`."""
        self.image_ids = image_ids
        self.features = features
        self._rows = {image_id: row for row, image_id in enumerate(image_ids)}

    @property
    def channels(self) -> int:
        """Channel count of the teacher's feature map."""
        return self.features.shape[-1]

    def lookup(self, image_ids: Sequence[str]) -> torch.Tensor:
        """The grids of `image_ids`, in order, as float32 (len(image_ids), grid_size**2, channels)."""
        return select_rows(self.features, [self._rows[image_id] for image_id in image_ids])


def load_or_compute_teacher_features(
    rows: Dataset,
    teacher: str,
    grid_size: int,
    cache_dir: str | Path,
    batch_size: int = 64,
    on_bad_sample: str = "skip",
    show_progress: bool = True,
    compute_if_missing: bool = True,
) -> TeacherFeatures:
    """The teacher grids of every row's image: from the cache when its key matches, else computed (batched, under
    `torch.no_grad`, with a progress bar) and cached.

    Args:
        rows: a caption dataset (`image_id`, `image`) as `soli_hf.data.load_caption_dataset` returns it.
        teacher: a local MobileNetV2 folder (transformers format).
        grid_size: the student's grid; the teacher's feature map is average-pooled to it.
        cache_dir: where cache folders live.
        batch_size: images per teacher forward pass.
        on_bad_sample: "skip" gives an unreadable image a zero grid (the training batches drop that image anyway);
            "error" raises.
        show_progress: show a tqdm bar while computing.
        compute_if_missing: False only reads the cache: the processes of a data-parallel run other than the main
            one, which computed the features before them.

    Raises:
        FileNotFoundError: when `teacher` is not a folder, or the cache lacks the features and
            `compute_if_missing` is False.
    """
    teacher_dir = Path(teacher)
    if not teacher_dir.is_dir():
        raise FileNotFoundError(f"teacher {teacher}: no such folder (a MobileNetV2 in transformers format)")
    rows = rows.cast_column("image", Image(decode=False))
    image_ids = list(rows["image_id"])
    key = {
        "version": CACHE_VERSION,
        "teacher": str(teacher_dir.resolve()),
        "teacher_files": teacher_fingerprint(teacher_dir),
        "grid_size": grid_size,
        "images": images_fingerprint(rows),
        "image_ids": image_ids,
    }
    # The folder name fixes what is cached (teacher, grid, which images); the key's fingerprints say whether it is
    # still valid, so a changed file replaces the stale folder instead of adding another one.
    folder = cache_folder(cache_dir, "teacher", [key["teacher"], grid_size, image_ids])

    def compute_rows(indices: Sequence[int]) -> dict[str, torch.Tensor]:
        part = rows.select(indices)
        return {"features": compute_teacher_features(part, teacher_dir, grid_size, batch_size, on_bad_sample)}

    features = load_or_compute_features(
        folder,
        key,
        compute_rows,
        row_parts(len(rows), IMAGES_PER_PART),
        kind="teacher",
        compute_if_missing=compute_if_missing,
        show_progress=show_progress,
    )["features"]
    return TeacherFeatures(image_ids, features)


def compute_teacher_features(
    rows: Dataset, teacher_dir: Path, grid_size: int, batch_size: int, on_bad_sample: str
) -> torch.Tensor:
    """Run the frozen teacher over every row's image: (num_images, grid_size**2, channels) float16."""
    model = MobileNetV2Model.from_pretrained(teacher_dir, add_pooling_layer=False).eval()
    size = model.config.image_size
    mean, std = _normalisation(teacher_dir)
    pool = torch.nn.AdaptiveAvgPool2d(grid_size)
    grids = []
    with torch.no_grad():
        for batch in row_parts(len(rows), batch_size):
            pixels = torch.stack([_teacher_pixels(rows[index], size, mean, std, on_bad_sample) for index in batch])
            features = model(pixels, return_dict=True).last_hidden_state
            grids.append(pool(features).flatten(2).transpose(1, 2).half())
    return torch.cat(grids)


def _teacher_pixels(
    row: dict[str, Any], size: int, mean: np.ndarray, std: np.ndarray, on_bad_sample: str
) -> torch.Tensor:
    """The whole photo (not a crop: the LR input shows all of it) resized to the teacher's input size and normalised;
    zeros for an unreadable image under `on_bad_sample="skip"`."""
    image = safe_load_image(row, on_bad_sample)
    if image is None:
        return torch.zeros(3, size, size)
    resized = image.convert("RGB").resize((size, size), PILImage.Resampling.BICUBIC)
    pixels = (np.asarray(resized, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def _normalisation(teacher_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's pixel mean and std (its preprocessor_config.json; MobileNetV2's 0.5 / 0.5 without one)."""
    path = teacher_dir / "preprocessor_config.json"
    settings = read_json(path) if path.is_file() else {}
    mean = np.asarray(settings.get("image_mean", [0.5] * 3), dtype=np.float32)
    std = np.asarray(settings.get("image_std", [0.5] * 3), dtype=np.float32)
    return mean, std


def teacher_fingerprint(teacher_dir: Path) -> dict[str, str]:
    """{file name: sha256 of its content} of the teacher files that decide its features."""
    return files_fingerprint(teacher_dir, _TEACHER_FILE_PATTERNS)


def images_fingerprint(rows: Dataset) -> str:
    """One digest of every image's content, in row order (hashing 6,000 Flickr8k photos takes about a second).

    Content, not path and modification time: a fresh copy of the same data (another machine, a new checkout of the
    shared folder) keeps the cache, and an image rewritten with other pixels invalidates it. A missing file counts
    as missing (the loader reports it as a bad sample)."""
    stamps = [
        digest(image["bytes"]) if image.get("bytes") is not None else file_digest(Path(image["path"]))
        for image in rows["image"]
    ]
    return images_digest(stamps)
