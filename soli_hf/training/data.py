"""Training and evaluation batches: dataset rows -> LR/HR pixels (SoliImageProcessor) + caption tokens, and the
per-image targets of the optional losses (teacher features, tag labels).

Randomness is a pure function of (seed, epoch, row): the degradation a sample gets and which captions are drawn
do not depend on worker processes, batch order or restarts, which is what makes resuming exact.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from torch.utils.data import Sampler

from ..data import safe_load_image
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_soli import SoliProcessor
from .config import TrainingConfig
from .tags import tag_targets
from .teacher import TeacherFeatures, load_or_compute_teacher_features

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DegradationPolicy:
    """How the LR view of a training sample is made (DESIGN.md: the curriculum may ramp the degradation)."""

    kinds: Sequence[str]
    blur_sigma_range: Sequence[float]
    jpeg_quality_range: Sequence[int] | None
    min_scale_factor: float | None
    ramp_epochs: float

    @classmethod
    def from_config(cls, config: TrainingConfig) -> DegradationPolicy:
        return cls(
            config.degradations,
            config.blur_sigma_range,
            config.jpeg_quality_range,
            config.min_scale_factor,
            config.degradation_ramp_epochs,
        )

    def severity(self, epoch: int) -> float:
        """0 (mild) -> 1 (most severe) over `ramp_epochs`; always 1 without a ramp."""
        return 1.0 if self.ramp_epochs <= 0 else min(1.0, epoch / self.ramp_epochs)

    def sample(self, rng: np.random.Generator, epoch: int, source_size: int, image_size: int) -> dict[str, Any]:
        """Keyword arguments of `SoliImageProcessor.preprocess` for one sample."""
        kwargs: dict[str, Any] = {
            "degradation": self.kinds[rng.integers(len(self.kinds))],
            "blur_sigma": float(rng.uniform(*self.blur_sigma_range)),
        }
        if self.jpeg_quality_range is not None:
            low, high = self.jpeg_quality_range
            kwargs["jpeg_quality"] = int(rng.integers(low, high + 1))
        if self.min_scale_factor is not None:
            mild = image_size / source_size  # straight to the LR size
            severe = min(self.min_scale_factor, mild)
            kwargs["scale_factor"] = float(rng.uniform(mild - self.severity(epoch) * (mild - severe), mild))
        return kwargs


@dataclass(frozen=True)
class SourceAugmentation:
    """Random changes to the source photo before its LR view is made: a left-right mirror (the captions' "left"
    and "right" swapped with it) and a crop of at least `min_crop_area` of the photo (aspect ratio kept)."""

    flip_probability: float
    min_crop_area: float

    @classmethod
    def from_config(cls, config: TrainingConfig) -> SourceAugmentation | None:
        """The recipe's augmentation, or None when it changes nothing."""
        if config.flip_probability == 0 and config.min_crop_area == 1:
            return None
        return cls(config.flip_probability, config.min_crop_area)

    def apply(
        self, image: PILImage.Image, captions: Sequence[str], rng: np.random.Generator
    ) -> tuple[PILImage.Image, list[str]]:
        """The augmented photo and its captions."""
        captions = list(captions)
        if self.min_crop_area < 1:
            side = float(np.sqrt(rng.uniform(self.min_crop_area, 1.0)))
            width, height = round(image.width * side), round(image.height * side)
            left = int(rng.integers(image.width - width + 1))
            top = int(rng.integers(image.height - height + 1))
            image = image.crop((left, top, left + width, top + height))
        if rng.random() < self.flip_probability:
            image = image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
            captions = [mirror_caption(caption) for caption in captions]
        return image, captions


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_caption(caption: str) -> str:
    """The caption of the mirrored photo: "left" and "right" swapped (case kept); other words as they are."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        mirrored = "right" if word.lower() == "left" else "left"
        return mirrored.capitalize() if word[0].isupper() else mirrored

    return _LEFT_RIGHT.sub(swap, caption)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample in one epoch."""
    return np.random.default_rng([seed, epoch, index])


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The source augmentation's own generator of one sample in one epoch: a stream apart from `sample_rng`'s, so
    that turning augmentation on leaves the degradations and caption picks as they were."""
    return np.random.default_rng([seed, epoch, index, 1])


class CaptionImageDataset(torch.utils.data.Dataset):
    """Rows of a caption dataset as processed samples: `pixel_values`, `hr_pixel_values`, `captions`, `image_id`.

    `policy` randomises the LR degradation (None: the processor's fixed one); `return_hr` adds the HR target;
    `augmentation` changes the source photo first (and its captions with it; None: the photo as it is).
    A row whose image cannot be decoded becomes None (the collator drops it and counts it) under
    `on_bad_sample="skip"`, or raises `ValueError` naming the file and row under `"error"`.
    """

    def __init__(
        self,
        rows: Dataset,
        processor: SoliProcessor,
        policy: DegradationPolicy | None,
        return_hr: bool,
        captions_per_image: int,
        seed: int,
        on_bad_sample: str,
        augmentation: SourceAugmentation | None = None,
    ) -> None:
        self.rows = rows.cast_column("image", Image(decode=False))
        self.augmentation = augmentation
        self.processor = processor
        self.policy = policy
        self.return_hr = return_hr
        self.captions_per_image = captions_per_image
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.rows[index]
        image = safe_load_image(row, self.on_bad_sample)
        if image is None:
            return None
        rng = sample_rng(self.seed, self.epoch, index)
        captions = row["captions"]
        if self.augmentation is not None:
            image, captions = self.augmentation.apply(image, captions, augmentation_rng(self.seed, self.epoch, index))
        image_processor = self.processor.image_processor
        kwargs = (
            {}
            if self.policy is None
            else self.policy.sample(rng, self.epoch, max(image.size), image_processor.image_size)
        )
        features = image_processor(image, return_hr=self.return_hr, **kwargs)
        return {
            "image_id": row["image_id"],
            "pixel_values": features["pixel_values"][0],
            "hr_pixel_values": features["hr_pixel_values"][0] if self.return_hr else None,
            "references": captions,
            "captions": choose_captions(captions, self.captions_per_image, rng),
        }


def choose_captions(captions: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` of an image's captions: all of them in order when there are exactly that many, else drawn
    without replacement (with replacement when there are fewer)."""
    if len(captions) == count:
        return list(captions)
    picks = rng.choice(len(captions), size=count, replace=len(captions) < count)
    return [captions[i] for i in picks]


@dataclass(frozen=True)
class TrainingTargets:
    """Per-image targets of the optional losses, looked up by image id: the teacher's feature grids (distillation)
    and the multi-hot tag labels (semantic tags); either may be None when its loss is off."""

    teacher_features: TeacherFeatures | None
    tag_labels: dict[str, np.ndarray] | None

    def batch_inputs(self, image_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """`teacher_features` (images, grid_size**2, channels) and `tag_labels` (images, num_tags) of a batch's
        images, one row per image like `pixel_values` (the model repeats nothing: these losses are per image)."""
        inputs = {}
        if self.teacher_features is not None:
            inputs["teacher_features"] = self.teacher_features.lookup(image_ids)
        if self.tag_labels is not None:
            inputs["tag_labels"] = torch.from_numpy(np.stack([self.tag_labels[image_id] for image_id in image_ids]))
        return inputs


def build_training_targets(
    config: TrainingConfig,
    rows: Dataset,
    model: SoliForConditionalGeneration,
    processor: SoliProcessor,
    show_progress: bool = True,
    compute_teacher: bool = True,
) -> TrainingTargets | None:
    """The targets `model` trains with on `rows` (phase `xe`): the teacher's features (cached under
    `teacher_cache_dir`) when `distillation_weight > 0`, the tag labels of `model.config.tag_words` when the model
    has a tag head; None when neither loss is on. `compute_teacher` False only reads the teacher's features from the
    cache (the processes other than the main one, which computed them).

    Raises:
        ValueError: when the teacher's channel count differs from the student backbone's.
        FileNotFoundError: `compute_teacher` is False and the cache does not hold the features.
    """
    model_config = model.config  # a model without these losses (another family) has none of their settings
    distill = config.phase == "xe" and getattr(model_config, "distillation_weight", 0) > 0
    tags = config.phase == "xe" and getattr(model_config, "num_tags", 0) > 0 and model_config.tag_loss_weight > 0
    if not distill and not tags:
        return None
    teacher_features = None
    if distill:
        teacher_features = load_or_compute_teacher_features(
            rows,
            config.teacher,
            model_config.grid_size,
            config.teacher_cache_dir,
            on_bad_sample=config.on_bad_sample,
            show_progress=show_progress,
            compute_if_missing=compute_teacher,
        )
        channels = model.encoder.projection.in_features
        if teacher_features.channels != channels:
            raise ValueError(
                f"teacher {config.teacher} gives {teacher_features.channels} channels, the model's backbone "
                f"{channels}: distillation needs the same architecture"
            )
    tag_labels = None
    if tags:
        tokenizer, words = processor.tokenizer, model_config.tag_words
        tag_labels = {
            image_id: tag_targets(tokenizer, references, words)
            for image_id, references in zip(rows["image_id"], rows["captions"], strict=True)
        }
    return TrainingTargets(teacher_features, tag_labels)


class CaptionBatchCollator:
    """Stacks samples into model inputs; captions are tokenised by the processor (`<bos> ... <eos>`, padded, labels
    with the padding ignored; the dual-encoder Q-Former's processor: `... <eos>`, and its `prompt_ids`). With
    `targets`, each batch also holds its images' `teacher_features` and `tag_labels`."""

    def __init__(
        self, processor: SoliProcessor, max_caption_tokens: int, targets: TrainingTargets | None = None
    ) -> None:
        self.processor = processor
        self.max_length = max_caption_tokens + 2  # + <bos>, <eos>
        self.targets = targets
        self.skipped_images = 0

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        kept = [sample for sample in samples if sample is not None]
        self.skipped_images += len(samples) - len(kept)
        if not kept:
            return None
        captions = [caption for sample in kept for caption in sample["captions"]]
        tokens = self.processor(text=captions, max_length=self.max_length, return_tensors="pt")
        batch = {
            "pixel_values": torch.from_numpy(np.stack([sample["pixel_values"] for sample in kept])),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "labels": tokens["labels"],
            "image_ids": [sample["image_id"] for sample in kept],
            "references": [sample["references"] for sample in kept],
        }
        if "prompt_ids" in tokens:  # the dual-encoder Q-Former's processor with a text prompt
            batch["prompt_ids"] = tokens["prompt_ids"]
        if kept[0]["hr_pixel_values"] is not None:
            batch["hr_pixel_values"] = torch.from_numpy(np.stack([sample["hr_pixel_values"] for sample in kept]))
        if self.targets is not None:
            batch |= self.targets.batch_inputs(batch["image_ids"])
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the rows that depends only on (seed, epoch): the same on every process, whose share of its
    batches accelerate's `BatchSamplerShard` picks (process i of N: batches i, i + N, ...)."""

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=generator).tolist())


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a batch that the model's `forward` takes (SOLI's; the dual-encoder Q-Former's text prompt;
    AlignCap's cached region features)."""
    names = (
        "region_features",
        "pixel_values",
        "input_ids",
        "attention_mask",
        "labels",
        "hr_pixel_values",
        "teacher_features",
        "tag_labels",
        "prompt_ids",
    )
    return {name: batch[name] for name in names if name in batch}
