"""Image processor of SOLI: any image -> RGB -> reproducible low-resolution (LR) / high-resolution (HR) pair.

The same code makes the model's input at training and at inference time. The LR image is what the captioner
sees (`pixel_values`, default 64x64); the HR image (`hr_pixel_values`, `image_size * sr_scale` pixels) is the
target of the super-resolution loss and is made from the same source image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .image_transforms_soli import (
    DEGRADATIONS,
    jpeg_compress,
    make_image_list,
    make_low_resolution,
    min_decoded_side,
    normalize_pixels,
    to_rgb_image,
    unnormalize_pixels,
    validate_input_range,
)


class SoliImageProcessor(BaseImageProcessor):
    r"""
    Makes SOLI's inputs from images of any kind.

    Accepts file paths, PIL images of any mode (L, LA, P, RGBA, CMYK, I;16, 1, ...), numpy arrays (HxW, HxWx1,
    HxWx3, HxWx4), torch tensors (CxHxW, any dtype including bfloat16), lists of those or 4-D batches.

    How inputs are read (the rules of `image_transforms_soli`):

    - Files get their EXIF orientation applied, as `datasets.Image()` does for training and evaluation; a PIL
      image given directly is taken as given. A large file is decoded reduced (JPEG draft mode, box reduction)
      to no less than 4x the largest side made from it ("bicubic" and "bilinear" degradations without
      `scale_factor`): its `pixel_values` differ from full decoding by a few grey levels at most.
    - The dtype decides the pixel range, never the values: uint8 0..255, uint16 0..65535, bool 0/1, float 0..1,
      other integer dtypes 0..255; PIL modes I;16 and I 0..65535, F 0..1. `input_range=(low, high)` says
      otherwise for arrays and tensors (e.g. `(-1, 1)`, or `(0, 255)` for float arrays of 8-bit levels).
      Values outside the range are clipped with an `InputRangeWarning` naming the image; NaN or infinite values
      raise a `ValueError` naming it, as does every other bad input (`ImageInputError`).

    Args:
        image_size (`int`, *optional*, defaults to 64):
            Side of the low-resolution image given to the model (`pixel_values`).
        sr_scale (`int`, *optional*, defaults to 2):
            The high-resolution target (`hr_pixel_values`) is `image_size * sr_scale` pixels wide.
        degradation (`str`, *optional*, defaults to `"bicubic"`):
            How the LR image is made: `"bicubic"`, `"bilinear"`, `"step"` (halving steps) or `"step_gaussian"`
            (Gaussian blur, then halving steps).
        scale_factor (`float`, *optional*):
            Degrade to this fraction of the source size first (the paper's 0.5 / 0.2 / 0.1 / 0.05), then resize
            to `image_size`.
        blur_sigma (`float`, *optional*, defaults to 1.0):
            Gaussian blur radius of the `"step_gaussian"` degradation.
        image_mean / image_std (`list[float]`, *optional*, defaults to 0.5 each):
            Normalisation, matching the ImageNet MobileNetV2 checkpoints of transformers.
        input_range (`tuple[float, float]`, *optional*):
            The values of black and white in numpy arrays and torch tensors, instead of their dtype's range.
            Saved with the processor.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 64,
        sr_scale: int = 2,
        degradation: str = "bicubic",
        scale_factor: float | None = None,
        blur_sigma: float = 1.0,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        input_range: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")
        self.image_size = image_size
        self.sr_scale = sr_scale
        self.degradation = degradation
        self.scale_factor = scale_factor
        self.blur_sigma = blur_sigma
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        checked_range = validate_input_range(input_range)
        self.input_range = None if checked_range is None else list(checked_range)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Same as [`~SoliImageProcessor.preprocess`]."""
        return self.preprocess(images, **kwargs)

    def normalize_pixels(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image as a normalised float32 CxHxW array."""
        return normalize_pixels(image, self.image_mean, self.image_std)

    def unnormalize_pixels(self, pixel_values: Any) -> Image.Image:
        """A normalised CxHxW array or tensor (e.g. one row of `pixel_values`) back to an RGB PIL image."""
        return unnormalize_pixels(pixel_values, self.image_mean, self.image_std)

    def preprocess(
        self,
        images: Any,
        return_hr: bool = False,
        degradation: str | None = None,
        scale_factor: float | None = None,
        blur_sigma: float | None = None,
        jpeg_quality: int | None = None,
        input_range: Sequence[float] | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Make `pixel_values` (B, 3, S, S) and, with `return_hr=True`, `hr_pixel_values` (B, 3, S*r, S*r).

        `degradation`, `scale_factor`, `blur_sigma` and `input_range` override the processor's settings for this
        call (the training loop randomises the first three per sample; evaluation keeps them fixed). `jpeg_quality`
        additionally JPEG-compresses the LR image (training-time augmentation; the HR target stays clean).

        Raises:
            ValueError: naming the image (`ImageInputError`) for any image that cannot be read, or naming the
                setting that is out of range.
        """
        if kwargs:
            raise ValueError(f"SoliImageProcessor.preprocess got unexpected arguments: {sorted(kwargs)}")
        degradation = degradation or self.degradation
        scale_factor = scale_factor if scale_factor is not None else self.scale_factor
        blur_sigma = blur_sigma if blur_sigma is not None else self.blur_sigma
        input_range = input_range if input_range is not None else self.input_range
        if images is None:
            raise ValueError("images: got None")
        hr_side = self.image_size * self.sr_scale
        min_side = min_decoded_side(hr_side if return_hr else self.image_size, degradation, scale_factor)
        rgb_images = [
            to_rgb_image(image, min_side=min_side, input_range=input_range) for image in make_image_list(images)
        ]
        low_images = [
            make_low_resolution(image, self.image_size, degradation, scale_factor, blur_sigma) for image in rgb_images
        ]
        if jpeg_quality is not None:
            low_images = [jpeg_compress(image, jpeg_quality) for image in low_images]
        low = [self.normalize_pixels(image) for image in low_images]
        data = {"pixel_values": np.stack(low)}
        if return_hr:
            hr_size = (hr_side, hr_side)
            data["hr_pixel_values"] = np.stack(
                [self.normalize_pixels(image.resize(hr_size, Image.Resampling.BICUBIC)) for image in rgb_images]
            )
        return BatchFeature(data=data, tensor_type=return_tensors)
