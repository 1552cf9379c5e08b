"""AlignCapProcessor: photos, their boxes and the boxes' phrases behind one call, for the AlignCap region captioner."""

from __future__ import annotations

import math
from typing import Any

from transformers import BatchFeature, PretrainedConfig

from .configuration_aligncap import DECODER_TYPES
from .image_processing_soli import SoliImageProcessor
from .image_transforms_soli import make_image_list, to_rgb_image
from .processing_dual_qformer import DEFAULT_MAX_LENGTH, DualQFormerProcessor
from .processing_soli import _mask_padding

#: How far (in the given photo's pixels) a box may reach past the photo's border: annotation tools write boxes that
#: touch the border as one pixel past it (1-based, inclusive corners). The box is then clipped to the photo.
BOX_TOLERANCE = 1.0


class AlignCapProcessor(DualQFormerProcessor):
    r"""
    Wraps a [`SoliImageProcessor`] (any photo -> the square `pixel_values` the model sees: 224x224, or 64x64 for the
    low-resolution setting) and the decoder's tokenizer (SOLI's word-level tokenizer for the LSTM decoder, the
    language model's for the language-model decoder).

    `processor(images=..., boxes=..., text=...)` returns `pixel_values`, `boxes` (one row per box over all images:
    image index, x0, y0, x1, y1, rescaled from the given photo's pixels to `pixel_values` pixels) and, for the
    phrases (one per box, in the same order), `input_ids`, `attention_mask` and `labels` (padding set to -100). LSTM
    phrases are `<bos>` words `<eos>`; language-model phrases are its tokens and its end-of-sequence token.

    Args:
        image_processor (`SoliImageProcessor`): its `image_size` is the side the photo is given to the model at.
        tokenizer: the decoder's tokenizer.
        decoder_type (`str`, *optional*, defaults to `"lstm"`): `"lstm"` or `"language_model"`, as the model's
            config.
        max_length (`int`, *optional*, defaults to 40): phrases are truncated to this many tokens.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        decoder_type: str = "lstm",
        max_length: int = DEFAULT_MAX_LENGTH,
        **kwargs: Any,
    ) -> None:
        if decoder_type not in DECODER_TYPES:
            raise ValueError(f"decoder_type must be one of {DECODER_TYPES}, got {decoder_type!r}")
        self.decoder_type = decoder_type
        kwargs.pop("prompt", None)  # a region's phrase has no text prompt
        super().__init__(image_processor, tokenizer, max_length=max_length, **kwargs)

    @classmethod
    def for_model(cls, config: PretrainedConfig, tokenizer: Any, image_size: int | None = None) -> AlignCapProcessor:
        """The processor of an [`AlignCapConfig`] model; `image_size` (e.g. 64 or 224) overrides the config's."""
        image_processor = SoliImageProcessor(image_size=image_size or config.image_size)
        return cls(image_processor, tokenizer, decoder_type=config.decoder_type)

    def __call__(
        self,
        images: Any = None,
        boxes: Any = None,
        text: str | list[str] | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **image_kwargs: Any,
    ) -> BatchFeature:
        """Process photos (see `SoliImageProcessor.preprocess`), their boxes, and/or phrases.

        Args:
            images: one photo or a list (paths, PIL images, arrays, tensors).
            boxes: per photo, a list of `[x0, y0, x1, y1]` boxes in that photo's own pixels (as given: a file with
                its EXIF orientation applied); for a single photo, its list of boxes alone also works.
            text: one phrase per box, in order (boxes of photo 0 first).

        Raises:
            ValueError: naming the photo, the box and its values, for an empty list of boxes, a box that is not four
                finite numbers, inverted, of zero area or outside its photo, or boxes for a different number of
                photos; or for phrases that do not match the boxes one to one.
        """
        if images is None and text is None:
            raise ValueError("AlignCapProcessor needs `images` (with `boxes`), `text` or both")
        if boxes is not None and images is None:
            raise ValueError("boxes need their images: pass images=... with boxes=...")
        data: dict[str, Any] = {}
        if images is not None:
            photos = [to_rgb_image(image) for image in make_image_list(images)]
            data.update(self.image_processor(photos, **image_kwargs))
            if boxes is not None:
                side = self.image_processor.image_size
                data["boxes"] = scaled_boxes(boxes, [photo.size for photo in photos], side)
        if text is not None:
            phrases = [text] if isinstance(text, str) else list(text)
            if "boxes" in data and len(phrases) != len(data["boxes"]):
                raise ValueError(
                    f"AlignCapProcessor got {len(data['boxes'])} boxes and {len(phrases)} phrases: give one phrase per "
                    "box, in order"
                )
            data.update(self._phrases(phrases, max_length))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _phrases(self, phrases: list[str], max_length: int | None) -> dict[str, list[list[int]]]:
        """Tokenised phrases, their mask and their labels, in the decoder's format."""
        if self.decoder_type == "language_model":
            return self._captions(phrases, "", max_length)
        encoding = self.tokenizer(phrases, padding=True, truncation=True, max_length=max_length or self.max_length)
        return {
            "input_ids": encoding["input_ids"],
            "attention_mask": encoding["attention_mask"],
            "labels": _mask_padding(encoding["input_ids"], encoding["attention_mask"]),
        }

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "boxes", "input_ids", "attention_mask"]


def scaled_boxes(boxes: Any, photo_sizes: list[tuple[int, int]], side: int) -> list[list[float]]:
    """The model's `boxes` rows (image index, x0, y0, x1, y1): each photo's `[x0, y0, x1, y1]` boxes checked in its
    own pixels (`photo_sizes` are (width, height)), clipped to it and rescaled to a `side` x `side` photo."""
    boxes = _as_list(boxes)
    if len(photo_sizes) == 1 and boxes and _is_box(boxes[0]):
        boxes = [boxes]  # one photo's boxes given without the per-photo list
    if len(boxes) != len(photo_sizes):
        raise ValueError(
            f"got {len(photo_sizes)} images but boxes for {len(boxes)}: give one list of [x0, y0, x1, y1] boxes per "
            "image"
        )
    rows = []
    for image_index, (image_boxes, (width, height)) in enumerate(zip(boxes, photo_sizes, strict=True)):
        image_boxes = _as_list(image_boxes)
        if not image_boxes:
            raise ValueError(f"image {image_index}: no boxes (an empty list); give at least one [x0, y0, x1, y1] box")
        for box_index, box in enumerate(image_boxes):
            where = f"image {image_index}, box {box_index}"
            x0, y0, x1, y1 = _check_box(_as_list(box), where, width, height)
            sx, sy = side / width, side / height
            rows.append([float(image_index), x0 * sx, y0 * sy, x1 * sx, y1 * sy])
    return rows


def _as_list(value: Any) -> Any:
    """Lists stay, numpy arrays and tensors become (nested) lists; anything else is returned as it is."""
    return value.tolist() if hasattr(value, "tolist") else value


def _is_box(value: Any) -> bool:
    value = _as_list(value)
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


def _check_box(box: Any, where: str, width: int, height: int) -> tuple[float, float, float, float]:
    """One box's corners, clipped to its photo; `ValueError` naming `where` for anything else."""
    if not _is_box(box) or isinstance(box, str):
        raise ValueError(f"{where}: expected [x0, y0, x1, y1] (four numbers), got {box!r}")
    x0, y0, x1, y1 = (float(value) for value in box)
    if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
        raise ValueError(f"{where}: {[x0, y0, x1, y1]} is not finite")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"{where}: {[x0, y0, x1, y1]} is inverted (x1 < x0 or y1 < y0); give [x0, y0, x1, y1]")
    if x1 == x0 or y1 == y0:
        raise ValueError(f"{where}: {[x0, y0, x1, y1]} has zero area")
    tol = BOX_TOLERANCE
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise ValueError(f"{where}: {[x0, y0, x1, y1]} does not overlap the image ({width}x{height} pixels)")
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise ValueError(f"{where}: {[x0, y0, x1, y1]} is outside the image ({width}x{height} pixels)")
    return max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
