"""Region evaluation: describe every box of a region split (`data_format: flickr30k_entities`) with AlignCap region
captioners, score the descriptions against each region's phrases, and report them beside the tag-only baseline
(the tag head's most probable word as the description) in the same report files as `soli evaluate`.

The photo reaches the model as `soli evaluate` gives any photo (`LowResCondition.lr_image`: at the model's photo size,
or reduced to a fixed size first), its boxes scaled with it; the frozen region features are computed once per batch
and serve both the descriptions (`model.generate(region_features=...)`, what `RegionCaptioner.caption_regions` runs)
and the tag-only baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..captioner import RegionCaptioner
from ..processing_aligncap import scaled_boxes
from ..training.regions import photo_batches, region_ids
from .conditions import LowResCondition

#: The label suffix of the tag-only baseline's rows in the report.
TAG_BASELINE = "tag-only baseline"
BOX_COLOUR = (255, 64, 0)


@dataclass
class RegionRun:
    """The description of each region (by `<image id>#<chain id>`), the tag-only baseline's (None for a model
    without a tag head), the photos of the first regions with their box drawn, and the unreadable photos skipped."""

    predictions: dict[str, str]
    tag_predictions: dict[str, str] | None
    lr_images: dict[str, Image.Image] = field(default_factory=dict)
    skipped_images: int = 0


@torch.no_grad()
def caption_region_dataset(
    captioner: RegionCaptioner,
    rows: datasets.Dataset,
    condition: LowResCondition,
    *,
    batch_size: int = 50,
    keep_images: int = 0,
    description: str = "regions",
    **decoding: int,
) -> RegionRun:
    """Describe every region row (`batch_size` photos at a time, all their boxes): each photo made into the input of
    `condition`, its boxes scaled with it; `decoding` (`num_beams`, `max_new_tokens`, ...) goes to `model.generate`.
    Photos that cannot be read are skipped with a warning naming the file and counted."""
    model = captioner.model
    names = region_ids(rows)
    tag_words = model.config.tag_words if model.refinement is not None else None
    run = RegionRun(predictions={}, tag_predictions={} if tag_words else None)
    with tqdm(total=len(rows), desc=description, unit="region", dynamic_ncols=True) as progress:
        for batch in photo_batches(rows, batch_size):
            progress.update(batch.covered)
            run.skipped_images += batch.skipped
            if not batch.photos:
                continue
            images = [condition.lr_image(photo, captioner.preprocessing) for photo in batch.photos]
            sizes = [photo.size for photo in batch.photos]
            pixel_values = torch.as_tensor(captioner.preprocess(images)).to(model.device)
            box_rows = torch.tensor(scaled_boxes(batch.boxes, sizes, pixel_values.shape[-1]), device=model.device)
            features = model.region_features(pixel_values, box_rows)
            tokens = model.generate(region_features=features, do_sample=False, **decoding)
            captions = captioner.decode(tokens.cpu().numpy())
            for index, caption in zip(batch.rows, captions, strict=True):
                run.predictions[names[index]] = caption
            if tag_words:
                top = model.encode_regions(features).tag_logits.argmax(dim=-1).tolist()
                for index, tag in zip(batch.rows, top, strict=True):
                    run.tag_predictions[names[index]] = tag_words[tag]
            for index, box in zip(batch.rows, box_rows.tolist(), strict=True):
                if len(run.lr_images) < keep_images:
                    image = images[int(box[0])].copy()  # the photo as the model saw it (its input size)
                    ImageDraw.Draw(image).rectangle(box[1:], outline=BOX_COLOUR, width=2)
                    run.lr_images[names[index]] = image
    return run


def region_references(rows: datasets.Dataset) -> dict[str, list[str]]:
    """Each region's references (all the phrases of its chain), by `<image id>#<chain id>`."""
    return dict(zip(region_ids(rows), rows["references"], strict=True))


def check_region_captioners(captioners: Sequence[Any], sources: Sequence[Any]) -> None:
    """Region data needs region captioners: a `ValueError` naming the first model that is not one."""
    for captioner, source in zip(captioners, sources, strict=True):
        if not isinstance(captioner, RegionCaptioner):
            raise ValueError(
                f"{source}: a whole-photo captioner; region data (flickr30k_entities) is evaluated with region "
                "captioners (AlignCap folders)"
            )
