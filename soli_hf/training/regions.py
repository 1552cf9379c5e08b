"""Training and evaluation batches of the AlignCap region captioner: region rows (`data_format: flickr30k_entities`,
one per photo and boxed phrase chain) -> cached frozen region features + phrase tokens + tag labels.

The region features (RoIAlign of the box on the two frozen encoders' grids, the photo's context, the box geometry,
the object evidence; `AlignCapForConditionalGeneration.region_features`) do not train, so they are computed once per
(photo set, box set, processor photo size, encoders) and cached in float16 (`feature_cache`): an epoch then costs
only the trainable part. The cache key holds the content of every photo and a digest of the frozen weights, so a
changed photo or encoder recomputes it.

A training sample is a region and `captions_per_image` of its phrases (drawn per epoch from (seed, epoch, row), as
`data.choose_captions` draws captions); a batch has one row per (region, phrase), and rows of one region are the
positives of the contrastive losses. A dev sample is a region and its first phrase (the caption loss), scored
against all its phrases.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image as PILImage

from ..data import safe_load_image
from ..modeling_aligncap import AlignCapForConditionalGeneration, AlignCapRegionFeatures
from ..processing_aligncap import AlignCapProcessor
from ..tokenization_soli import build_tokenizer
from .data import choose_captions, sample_rng
from .feature_cache import cache_folder, digest, file_digest, images_digest, load_or_compute_features, select_rows
from .tags import tag_targets

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
PHOTOS_PER_PART = 250  # photos whose region features are saved together while computing (the resumable unit)
#: The AlignCapConfig settings that decide the frozen region features (with the processor's photo size).
FEATURE_SETTINGS = (
    "global_encoder_config",
    "dense_encoder_config",
    "global_image_size",
    "dense_image_size",
    "global_final_conv",
    "roi_output_size",
    "use_object_evidence",
)
FEATURE_NAMES = ("roi_features", "context_features", "box_geometry", "object_evidence")
READABLE = "readable"  # 1 where the region's photo could be read


def region_ids(rows: Dataset) -> list[str]:
    """Each region's name in predictions and reports: `<image id>#<chain id>`."""
    return [f"{image_id}#{chain}" for image_id, chain in zip(rows["image_id"], rows["chain_id"], strict=True)]


def first_images(rows: Dataset, count: int | None) -> Dataset:
    """The regions of the first `count` photos (all rows when `count` is None)."""
    if count is None:
        return rows
    kept = set(list(dict.fromkeys(rows["image_id"]))[:count])
    return rows.select([index for index, image_id in enumerate(rows["image_id"]) if image_id in kept])


class RegionFeatureStore:
    """The cached features of a list of regions, looked up by row: float32 `AlignCapRegionFeatures`."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[READABLE])

    @property
    def readable(self) -> torch.Tensor:
        """(regions,) bool: the rows whose photo could be read (the others hold zeros and are not used)."""
        return self.tensors[READABLE].bool()

    def lookup(self, rows: Sequence[int]) -> AlignCapRegionFeatures:
        """The float32 features of region rows `rows`, in order."""
        picked = {name: select_rows(self.tensors[name], rows) for name in FEATURE_NAMES if name in self.tensors}
        return AlignCapRegionFeatures(**picked)


def frozen_weights_digest(model: AlignCapForConditionalGeneration) -> str:
    """A digest of the weights that make the region features: the two encoders and the segmentation head."""
    hasher = hashlib.sha256()
    parts = {"global_encoder": model.global_encoder, "dense_encoder": model.dense_encoder}
    if model.segmentation_head is not None:
        parts["segmentation_head"] = model.segmentation_head
    for part_name, part in parts.items():
        for name, tensor in sorted(part.state_dict().items()):
            hasher.update(f"{part_name}.{name}".encode())
            hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def feature_settings(model: AlignCapForConditionalGeneration, processor: AlignCapProcessor) -> dict[str, Any]:
    """What decides the features besides the weights: the encoder settings and the processor's photo size, as the
    JSON data the cache key holds (read back equal: integer label keys become strings)."""
    settings = {name: getattr(model.config, name) for name in FEATURE_SETTINGS}
    for name in ("global_encoder_config", "dense_encoder_config"):
        settings[name] = settings[name].to_diff_dict()
        settings[name].pop("transformers_version", None)
    return json.loads(json.dumps(settings | {"photo_size": processor.image_processor.image_size}))


def load_or_compute_region_features(
    rows: Dataset,
    model: AlignCapForConditionalGeneration,
    processor: AlignCapProcessor,
    cache_dir: str | Path,
    *,
    photos_per_batch: int = 16,
    on_bad_sample: str = "skip",
    show_progress: bool = True,
    compute_if_missing: bool = True,
) -> RegionFeatureStore:
    """The frozen features of every region row: from the cache when its key matches, else computed (batches of
    `photos_per_batch` photos with all their boxes, under `torch.no_grad`; saved every `PHOTOS_PER_PART` photos, so
    a killed computation resumes there) and cached in float16.

    `on_bad_sample="skip"`: a photo that cannot be read gives its regions zeros and `readable` False (the datasets
    leave them out); "error" raises naming it.

    Raises:
        FileNotFoundError: `compute_if_missing` is False and the cache does not hold the features.
    """
    boxes = [[row_id, list(box)] for row_id, box in zip(region_ids(rows), rows["box"], strict=True)]
    settings = feature_settings(model, processor)
    identity = [settings, digest(json.dumps(boxes).encode())]
    by_photo = photo_rows(rows)
    photos = list(by_photo)
    key = {
        "version": CACHE_VERSION,
        "settings": settings,
        "regions": identity[1],
        "encoders": frozen_weights_digest(model),
        "images": images_digest([file_digest(Path(path)) for path in photos]),
    }

    def compute_rows(indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return compute_region_features(rows.select(indices), model, processor, photos_per_batch, on_bad_sample)

    folder = cache_folder(cache_dir, "regions", identity)
    parts = [
        [index for path in photos[start : start + PHOTOS_PER_PART] for index in by_photo[path]]
        for start in range(0, len(photos), PHOTOS_PER_PART)
    ]
    tensors = load_or_compute_features(
        folder,
        key,
        compute_rows,
        parts,
        kind="region features",
        compute_if_missing=compute_if_missing,
        show_progress=show_progress,
    )
    if not tensors[READABLE].any():
        raise ValueError("no region's photo could be read: nothing to compute region features from")
    return RegionFeatureStore(tensors)


def photo_rows(rows: Dataset) -> dict[str, list[int]]:
    """The region rows of each photo (by `image_path`), photos in order of first appearance."""
    by_photo: dict[str, list[int]] = {}
    for index, path in enumerate(rows["image_path"]):
        by_photo.setdefault(path, []).append(index)
    return by_photo


@dataclass
class PhotoBatch:
    """A batch of region rows' photos: the readable `photos` (as loaded), the `boxes` of each (its regions' boxes, in
    its own pixels), the region `rows` in that order, and how many region rows and photos it `covered` and
    `skipped` (unreadable), for progress and counts."""

    photos: list[PILImage.Image]
    boxes: list[list[list[float]]]
    rows: list[int]
    covered: int
    skipped: int


def photo_batches(rows: Dataset, photos_per_batch: int, on_bad_sample: str = "skip") -> Iterator[PhotoBatch]:
    """The region rows `photos_per_batch` photos at a time, each photo with all its boxes; a photo that cannot be
    read is skipped with a warning naming the file (`on_bad_sample="error"` raises)."""
    by_photo = photo_rows(rows)
    photos = list(by_photo)
    for start in range(0, len(photos), photos_per_batch):
        batch = PhotoBatch(photos=[], boxes=[], rows=[], covered=0, skipped=0)
        for path in photos[start : start + photos_per_batch]:
            indices = by_photo[path]
            batch.covered += len(indices)
            photo = safe_load_image(rows[indices[0]], on_bad_sample)
            if photo is None:
                batch.skipped += 1
                continue
            batch.photos.append(photo)
            batch.boxes.append([rows[index]["box"] for index in indices])
            batch.rows += indices
        yield batch


@torch.no_grad()
def compute_region_features(
    rows: Dataset,
    model: AlignCapForConditionalGeneration,
    processor: AlignCapProcessor,
    photos_per_batch: int,
    on_bad_sample: str,
) -> dict[str, torch.Tensor]:
    """Run the frozen encoders over every region row: {feature name: (regions, ...) float16, `readable`: uint8};
    only `readable` (all 0) when none of the rows' photos can be read."""
    outputs: dict[str, torch.Tensor] = {}
    readable = torch.zeros(len(rows), dtype=torch.uint8)
    for batch in photo_batches(rows, photos_per_batch, on_bad_sample):
        if not batch.photos:
            continue
        inputs = processor(images=batch.photos, boxes=batch.boxes, return_tensors="pt")
        features = model.region_features(inputs["pixel_values"].to(model.device), inputs["boxes"].to(model.device))
        index = torch.tensor(batch.rows, dtype=torch.long)
        for name in FEATURE_NAMES:
            value = features[name] if name in features else None
            if value is None:
                continue
            if name not in outputs:
                outputs[name] = torch.zeros((len(rows), *value.shape[1:]), dtype=torch.float16)
            outputs[name][index] = value.cpu().half()
        readable[index] = 1
    return outputs | {READABLE: readable}


def tag_word_splitter(processor: AlignCapProcessor, tag_words: Sequence[str]) -> Any:
    """A tokenizer that splits phrases into words as the tag vocabulary was built (`tags.caption_words`): the LSTM
    decoder's word-level tokenizer, or, for the language-model decoder, one of the tag words (only its normaliser and
    pre-tokenizer are used)."""
    if processor.decoder_type == "lstm":
        return processor.tokenizer
    return build_tokenizer(tag_words, min_frequency=1)


class RegionPhraseDataset(torch.utils.data.Dataset):
    """Regions of readable photos as samples: the row (into the feature store), its name, its references and
    `phrases_per_region` of its phrases (all of them in order when it has exactly that many; else drawn per epoch
    from (seed, epoch, row); `None`: its first phrase, for the dev caption loss)."""

    def __init__(self, rows: Dataset, store: RegionFeatureStore, phrases_per_region: int | None, seed: int = 0) -> None:
        readable = store.readable
        self.indices = [index for index in range(len(rows)) if readable[index]]
        self.references = rows["references"]
        self.names = region_ids(rows)
        self.phrases_per_region = phrases_per_region
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.indices[index]
        references = self.references[row]
        if self.phrases_per_region is None:
            phrases = references[:1]
        else:
            phrases = choose_captions(references, self.phrases_per_region, sample_rng(self.seed, self.epoch, index))
        return {"row": row, "image_id": self.names[row], "references": references, "captions": phrases}


class RegionBatchCollator:
    """Stacks region samples into AlignCap inputs: `region_features` (one row per (region, phrase), looked up in the
    store), the phrases' `input_ids`, `attention_mask`, `labels`, and `tag_labels` when `tag_words` are given;
    `image_ids` and `references` per region (the loop counts regions as its images)."""

    def __init__(
        self,
        processor: AlignCapProcessor,
        store: RegionFeatureStore,
        max_caption_tokens: int,
        tag_words: Sequence[str] | None = None,
        tag_tokenizer: Any = None,
    ) -> None:
        self.processor = processor
        self.store = store
        self.max_length = max_caption_tokens + 2  # + <bos>, <eos>
        self.tag_words = tag_words
        self.tag_tokenizer = tag_tokenizer
        self.skipped_images = 0  # unreadable photos were left out when the features were computed

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [sample["row"] for sample in samples for _ in sample["captions"]]
        phrases = [phrase for sample in samples for phrase in sample["captions"]]
        tokens = self.processor(text=phrases, max_length=self.max_length, return_tensors="pt")
        batch = {
            "region_features": self.store.lookup(rows),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "labels": tokens["labels"],
            "image_ids": [sample["image_id"] for sample in samples],
            "references": [sample["references"] for sample in samples],
        }
        if self.tag_words:
            per_region = [
                tag_targets(self.tag_tokenizer, sample["references"], self.tag_words)
                for sample in samples
                for _ in sample["captions"]
            ]
            batch["tag_labels"] = torch.from_numpy(np.stack(per_region))
        return batch
