"""Augmentation of the source photo before its LR view (issue 15, lever 7): a left-right mirror that swaps "left"
and "right" in the captions, a random crop, a random stream of its own (the degradations and caption picks of a
recipe without it stay as they were), and the recipe checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_caption_folder
from PIL import Image

from soli_hf.data import load_caption_dataset
from soli_hf.training import TrainingConfig
from soli_hf.training.data import (
    CaptionImageDataset,
    DegradationPolicy,
    SourceAugmentation,
    augmentation_rng,
    mirror_caption,
)


def test_mirror_caption_swaps_left_and_right_as_words_only() -> None:
    caption = "Left of a man, a dog turns right; a leftover bright-red ball"
    assert mirror_caption(caption) == "Right of a man, a dog turns left; a leftover bright-red ball"
    assert mirror_caption(mirror_caption(caption)) == caption


def test_a_flip_mirrors_the_pixels_and_the_captions() -> None:
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, 0] = 255  # a white left edge
    always = SourceAugmentation(flip_probability=1.0, min_crop_area=1.0)
    image, captions = always.apply(Image.fromarray(pixels), ["a wall on the left"], np.random.default_rng(0))
    assert np.asarray(image)[:, -1].min() == 255 and np.asarray(image)[:, 0].max() == 0
    assert captions == ["a wall on the right"]
    never = SourceAugmentation(flip_probability=0.0, min_crop_area=1.0)
    image, captions = never.apply(Image.fromarray(pixels), ["a wall on the left"], np.random.default_rng(0))
    assert np.array_equal(np.asarray(image), pixels) and captions == ["a wall on the left"]


def test_a_crop_keeps_at_least_the_minimum_area_and_the_aspect_ratio() -> None:
    photo = Image.new("RGB", (200, 100))
    crop = SourceAugmentation(flip_probability=0.0, min_crop_area=0.5)
    sizes = [crop.apply(photo, [], np.random.default_rng(seed))[0].size for seed in range(50)]
    areas = [width * height / (200 * 100) for width, height in sizes]
    assert min(areas) >= 0.5 - 0.02 and max(areas) <= 1.0 and len(set(sizes)) > 10
    assert all(abs(width / height - 2.0) < 0.05 for width, height in sizes)


def test_augmentation_has_its_own_random_stream(tmp_path: Path, processor) -> None:
    """Turning augmentation on changes the photos, never the degradations or which captions are drawn."""
    rows = load_caption_dataset(write_caption_folder(tmp_path, {"train": 6}))
    policy = DegradationPolicy(["bicubic", "step"], [0.5, 1.5], None, None, 0.0)
    plain = CaptionImageDataset(rows, processor, policy, False, 2, seed=0, on_bad_sample="skip")
    crop_only = SourceAugmentation(flip_probability=0.0, min_crop_area=0.3)
    augmented = CaptionImageDataset(
        rows, processor, policy, False, 2, seed=0, on_bad_sample="skip", augmentation=crop_only
    )
    for index in range(6):
        assert augmented[index]["captions"] == plain[index]["captions"]
        assert not np.array_equal(augmented[index]["pixel_values"], plain[index]["pixel_values"])
        assert np.array_equal(augmented[index]["pixel_values"], augmented[index]["pixel_values"])  # (seed, epoch, row)
    assert augmentation_rng(0, 1, 2).random() != augmentation_rng(0, 2, 2).random()


def test_recipe_augmentation_fields(tmp_path: Path) -> None:
    assert SourceAugmentation.from_config(TrainingConfig(output_dir=str(tmp_path))) is None
    config = TrainingConfig(output_dir=str(tmp_path), flip_probability=0.5, min_crop_area=0.7)
    assert SourceAugmentation.from_config(config) == SourceAugmentation(0.5, 0.7)
    with pytest.raises(ValueError, match="flip_probability must be in"):
        TrainingConfig(output_dir=str(tmp_path), flip_probability=1.5)
    with pytest.raises(ValueError, match="min_crop_area must be in"):
        TrainingConfig(output_dir=str(tmp_path), min_crop_area=0.0)
    with pytest.raises(ValueError, match="teacher's cached features"):
        TrainingConfig(output_dir=str(tmp_path), flip_probability=0.5, distillation_weight=1.0)
    with pytest.raises(ValueError, match="does not apply to model_type 'aligncap'"):
        TrainingConfig(output_dir=str(tmp_path), model_type="aligncap", flip_probability=0.5)
