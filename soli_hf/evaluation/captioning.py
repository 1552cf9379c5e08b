"""Caption every image of a dataset under one low-resolution condition, in batches, with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
from PIL import Image
from tqdm.auto import tqdm

from ..captioner import Captioner
from ..data import safe_load_image
from .conditions import LowResCondition


@dataclass
class CaptionRun:
    """The generated caption of each image id, the LR inputs of the first images (as the model saw them) and the
    number of unreadable images that were skipped."""

    predictions: dict[str, str]
    lr_images: dict[str, Image.Image] = field(default_factory=dict)
    skipped_images: int = 0


def caption_dataset(
    captioner: Captioner,
    rows: datasets.Dataset,
    condition: LowResCondition,
    *,
    batch_size: int = 50,
    keep_images: int = 0,
    description: str = "captioning",
    **decoding: int | None,
) -> CaptionRun:
    """Caption the rows of a caption dataset (`soli_hf.data` layout) with any `Captioner` (PyTorch or ONNX), each
    photo made into the LR input of `condition`; `decoding` (`num_beams`, `max_new_tokens`; None: the model's
    own) goes to `Captioner.caption`.

    Unreadable images are skipped with a warning naming the file (`safe_load_image`) and counted.
    """
    rows = rows.cast_column("image", datasets.Image(decode=False))
    run = CaptionRun(predictions={})
    with tqdm(total=len(rows), desc=description, unit="img", dynamic_ncols=True) as progress:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            image_ids, lr_images = [], []
            for image_id, image, path in zip(batch["image_id"], batch["image"], batch["image_path"], strict=True):
                photo = safe_load_image({"image_id": image_id, "image": image, "image_path": path})
                if photo is None:
                    run.skipped_images += 1
                    continue
                image_ids.append(image_id)
                lr_images.append(condition.lr_image(photo, captioner.preprocessing))
            if image_ids:
                captions = captioner.caption(lr_images, **decoding)
                for image_id, caption, lr_image in zip(image_ids, captions, lr_images, strict=True):
                    run.predictions[image_id] = caption
                    if len(run.lr_images) < keep_images:
                        run.lr_images[image_id] = lr_image
            progress.update(len(batch["image_id"]))
    return run
