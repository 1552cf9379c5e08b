"""SOLI's image transforms: any image -> RGB -> the reproducible low-resolution view -> normalised pixels.

Plain numpy and pillow (no torch, no transformers), so that `SoliImageProcessor` (training, evaluation, the
PyTorch model) and the ONNX runtime (`soli_hf.onnx.runtime`, torch-free) make bit-identical `pixel_values`
from the same code. Saved model folders carry a copy next to `image_processing_soli.py`, which imports it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

DEGRADATIONS = ("bicubic", "bilinear", "step", "step_gaussian")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_MAX_BATCH_DIMS = 4


def _describe(image: Any) -> str:
    """A short name of an input for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    shape = getattr(image, "shape", None)
    if shape is not None:
        return f"{type(image).__name__} of shape {tuple(shape)}"
    if isinstance(image, Image.Image):
        return f"PIL image (mode {image.mode}, size {image.size})"
    return type(image).__name__


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, raising `ValueError` naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise ValueError(f"{os.fspath(path)}: image file not found") from error
    except UnidentifiedImageError as error:
        raise ValueError(f"{os.fspath(path)}: not an image file PIL can read") from error
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{os.fspath(path)}: cannot decode image ({error})") from error


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale an HxWxC array of any numeric dtype to uint8 (floats are read as [0, 1], or [0, 255] if larger)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: image contains NaN or infinite values")
        top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(array.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"{name}: unsupported array dtype {array.dtype}")


def _array_to_pil(array: np.ndarray, name: str, channels_first: bool) -> Image.Image:
    """An HxW, HxWxC or CxHxW array (C in 1, 3, 4) as an RGB PIL image."""
    if array.size == 0:
        raise ValueError(f"{name}: image has no pixels")
    if array.ndim == 3 and channels_first and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected HxW, HxWxC or CxHxW with C in (1, 3, 4)")
    pixels = _array_to_uint8(np.ascontiguousarray(array), name)
    return _pil_to_rgb(Image.fromarray(pixels, mode="RGBA" if pixels.shape[-1] == 4 else "RGB"), name)


def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Any PIL mode as RGB: 16/32-bit and float images are rescaled, transparency is composited on white."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name}: image has no pixels")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _array_to_pil(np.asarray(image), name, channels_first=False)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"{name}: cannot convert PIL mode {image.mode!r} to RGB") from error


def to_rgb_image(image: Any) -> Image.Image:
    """Convert one image (path, PIL image of any mode, numpy HxW/HxWxC array, torch CxHxW tensor) to RGB PIL."""
    name = _describe(image)
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(open_image(image), name)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, name)
    if type(image).__module__.startswith("torch"):
        return _array_to_pil(image.detach().cpu().numpy(), name, channels_first=True)
    if isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[-1] not in (1, 3, 4)
        return _array_to_pil(image, name, channels_first=channels_first)
    raise ValueError(f"unsupported image input of type {type(image).__name__}")


def make_image_list(images: Any) -> list[Any]:
    """Flatten a single image, a list of images or a batched (4-D) array/tensor into a list of images."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images: got an empty list")
        return [single for item in images for single in make_image_list(item)]
    ndim = getattr(images, "ndim", None)
    if ndim is not None:
        if getattr(images, "size", 1) == 0 or 0 in tuple(images.shape):
            raise ValueError(f"images: {_describe(images)} has no pixels")
        if ndim > _MAX_BATCH_DIMS or ndim < 2:
            raise ValueError(
                f"images: {_describe(images)} has {ndim} dimensions; expected an image (2-D or 3-D) "
                "or a batch of images (4-D)"
            )
        if ndim == _MAX_BATCH_DIMS:
            return list(images)
    return [images]


def _step_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Downscale in steps of at most 2x (bilinear), the 'step' degradation of the SOLI paper."""
    while image.width >= 2 * size[0] and image.height >= 2 * size[1]:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    return image.resize(size, Image.Resampling.BILINEAR)


def degrade(image: Image.Image, size: tuple[int, int], degradation: str, blur_sigma: float) -> Image.Image:
    """Downscale `image` to `size` (width, height) with one of `DEGRADATIONS`."""
    if degradation == "bicubic":
        return image.resize(size, Image.Resampling.BICUBIC)
    if degradation == "bilinear":
        return image.resize(size, Image.Resampling.BILINEAR)
    if degradation == "step":
        return _step_resize(image, size)
    if degradation == "step_gaussian":
        return _step_resize(image.filter(ImageFilter.GaussianBlur(blur_sigma)), size)
    raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")


def make_low_resolution(
    image: Image.Image, image_size: int, degradation: str, scale_factor: float | None, blur_sigma: float
) -> Image.Image:
    """The LR view of an RGB image, always `image_size` x `image_size`.

    Without `scale_factor` the image is degraded straight to the LR size. With it (the paper's protocol:
    0.5, 0.2, 0.1, 0.05) the image is degraded to `scale_factor` times its own size and then resized (bicubic)
    to the LR size. An image already at or below the target size is only resized, never degraded twice.
    """
    if scale_factor is None:
        target = (image_size, image_size)
    else:
        if not 0 < scale_factor <= 1:
            raise ValueError(f"scale_factor must be in (0, 1], got {scale_factor!r}")
        target = (max(1, round(image.width * scale_factor)), max(1, round(image.height * scale_factor)))
    if image.width > target[0] or image.height > target[1]:
        image = degrade(image, target, degradation, blur_sigma)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def jpeg_compress(image: Image.Image, quality: int) -> Image.Image:
    """Round-trip an RGB image through JPEG at `quality` (1-95), the compression artefacts of a real camera."""
    if not 1 <= quality <= 95:
        raise ValueError(f"jpeg_quality must be in [1, 95], got {quality!r}")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as compressed:
        return compressed.convert("RGB")


def normalize_pixels(image: Image.Image, image_mean: Sequence[float], image_std: Sequence[float]) -> np.ndarray:
    """An RGB PIL image as a normalised float32 CxHxW array: `(pixels / 255 - mean) / std`."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(image_mean, dtype=np.float32)) / np.asarray(image_std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def unnormalize_pixels(pixel_values: Any, image_mean: Sequence[float], image_std: Sequence[float]) -> Image.Image:
    """The inverse of `normalize_pixels`: a CxHxW array (or tensor) back to an RGB PIL image."""
    array = pixel_values.detach().cpu().numpy() if hasattr(pixel_values, "detach") else np.asarray(pixel_values)
    array = array.transpose(1, 2, 0) * np.asarray(image_std) + np.asarray(image_mean)
    return Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8))
