"""SOLI's image transforms: any image -> RGB -> the reproducible low-resolution view -> normalised pixels.

Plain numpy and pillow (no torch, no transformers), so that `SoliImageProcessor` (training, evaluation, the
PyTorch model) and the ONNX runtime (`soli_hf.onnx.runtime`, torch-free) make bit-identical `pixel_values`
from the same code. Saved model folders carry a copy next to `image_processing_soli.py`, which imports it.

The rules, in one place:

- Files are decoded as `datasets.Image()` decodes them for training and evaluation: the EXIF orientation is
  applied (`ImageOps.exif_transpose`). A PIL image given directly is taken as given (as transformers' image
  processors take it): rotate it yourself, or pass its path. Only regular files are opened (a FIFO would block).
- A photo much larger than its LR view is not resized whole. A JPEG file is decoded at 1/2, 1/4 or 1/8 scale
  (Pillow's draft mode, so it is never held whole in memory) while both its sides stay at least `DECODE_MARGIN`
  times the LR side; then the resize to the LR view first averages boxes of pixels over an integer factor while the
  photo stays at least `REDUCING_GAP` times the LR size (Pillow's `reducing_gap`) and resamples only the rest, for
  every kind of input: a 640x427 photo takes 0.7 instead of 1.5 ms, and the LR view differs from the whole resize
  by a quarter of a grey level on average, a few at most. Photos under `REDUCING_GAP` x the LR side (the 224x224
  Flickr8k training photos: 3.5x) are resized whole. Only for the "bicubic" and "bilinear" degradations without a
  `scale_factor` (see `min_decoded_side`): the others halve the photo's own pixels or are relative to its size.
- Pixel ranges follow the dtype, never the values: uint8 0..255, uint16 0..65535, bool 0/1, float 0..1, other
  integer dtypes 0..255; PIL modes I;16 and I 0..65535 (Pillow decodes 16-bit files to them), F 0..1. For arrays
  and tensors `input_range=(low, high)` says otherwise. Values outside the range are clipped with an
  `InputRangeWarning` naming the image; NaN or infinite values raise.
- Every problem with one input image raises `ImageInputError` (a `ValueError`) naming the image.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

DEGRADATIONS = ("bicubic", "bilinear", "step", "step_gaussian")
#: A file is decoded reduced only while both its sides stay at least this many times the largest side made from it.
DECODE_MARGIN = 4
#: The resize to the LR view box-averages first while the photo stays at least this many times the LR size
#: (Pillow's `reducing_gap`: 3.0 is "close to the full quality" in its documentation).
REDUCING_GAP = 3.0
#: The degradations that are one resize of the whole photo, which a reduced decoding changes by a grey level or two.
_REDUCIBLE_DEGRADATIONS = ("bicubic", "bilinear")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_MAX_BATCH_DIMS = 4
#: The pixel range of the PIL modes holding numbers rather than 8-bit levels (I;16 follows its uint16 dtype).
_MODE_RANGES = {"I": (0.0, 65535.0), "F": (0.0, 1.0)}
_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class ImageInputError(ValueError):
    """A problem with one input image: `image` names it (a path, or e.g. "ndarray of shape (4, 4, 3)"), `reason`
    says what is wrong, and the message is "image: reason"."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"{image}: {reason}")
        self.image = image
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.image, self.reason)


class InputRangeWarning(UserWarning):
    """An image had values outside its pixel range (which the dtype, the PIL mode or `input_range` sets); they were
    clipped. Turn it into an error with `warnings.simplefilter("error", InputRangeWarning)`."""


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


def _check_regular_file(path: str | os.PathLike, name: str) -> None:
    """Raise `ImageInputError` unless `path` is a regular file (checked without opening it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        raise ImageInputError(name, "image file not found") from error
    except OSError as error:
        raise ImageInputError(name, f"cannot read the file ({error.strerror or error})") from error
    if stat.S_ISDIR(mode):
        raise ImageInputError(name, "is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((kind for is_kind, kind in _FILE_KINDS if is_kind(mode)), "a special file")
        raise ImageInputError(name, f"not a regular file ({kind}), not opened")


def open_image(path: str | os.PathLike, *, draft_side: int | None = None) -> Image.Image:
    """Open and fully decode an image file the way `datasets.Image()` does (EXIF orientation applied).

    Args:
        path: A regular file; a FIFO, device or socket is refused without being opened.
        draft_side: Decode a JPEG at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) while both sides stay at least
            this many pixels; other formats are decoded whole.

    Raises:
        ImageInputError: naming the file: missing, not a regular file, unreadable, not an image, more pixels than
            Pillow's decompression-bomb limit, or any failure of the decoder on its bytes.
    """
    name = os.fspath(path)
    _check_regular_file(path, name)
    try:
        with Image.open(path) as image:
            if draft_side is not None:
                image.draft(None, (draft_side, draft_side))
            image.load()
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError as error:
        raise ImageInputError(name, "not an image file PIL can read") from error
    except Image.DecompressionBombError as error:
        raise ImageInputError(name, f"too many pixels to decode safely ({error})") from error
    except PermissionError as error:
        raise ImageInputError(name, "cannot read the file (permission denied)") from error
    except Exception as error:  # noqa: BLE001 - whatever a decoder raises on a file's bytes is that file's problem
        raise ImageInputError(name, f"cannot decode image ({type(error).__name__}: {error})") from error


def validate_input_range(input_range: Sequence[float] | None) -> tuple[float, float] | None:
    """`input_range` as a `(low, high)` pair of finite numbers with low < high (or None); `ValueError` otherwise."""
    if input_range is None:
        return None
    try:
        if isinstance(input_range, (str, bytes)):
            raise TypeError("a string is not a pair of numbers")
        low, high = (float(value) for value in input_range)
    except (TypeError, ValueError) as error:
        raise ValueError(f"input_range must be a pair (low, high), got {input_range!r}") from error
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"input_range must be finite numbers with low < high, got {input_range!r}")
    return low, high


def dtype_input_range(dtype: np.dtype) -> tuple[float, float] | None:
    """The pixel range a dtype stands for: uint8 0..255, uint16 0..65535, bool 0..1, float 0..1, other integer
    dtypes 0..255; None for dtypes that are not pixels (complex, object, strings, ...)."""
    if dtype.kind == "b":
        return 0.0, 1.0
    if dtype.kind == "u" and dtype.itemsize == 2:
        return 0.0, 65535.0
    if dtype.kind in "ui":
        return 0.0, 255.0
    if dtype.kind == "f":
        return 0.0, 1.0
    return None


def _array_to_uint8(array: np.ndarray, name: str, input_range: Sequence[float] | None, origin: str) -> np.ndarray:
    """Map `input_range` (None: the dtype's, see `dtype_input_range`) linearly to 0..255; values outside it are
    clipped with an `InputRangeWarning` that says where the range came from (`origin`)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageInputError(name, "image contains NaN or infinite values")
    if input_range is None:
        input_range = dtype_input_range(array.dtype)
        origin = f"the range of {array.dtype} pixels; pass input_range=(low, high) if they are in another"
        if input_range is None:
            raise ImageInputError(name, f"unsupported array dtype {array.dtype}")
    low, high = input_range
    if array.dtype == np.uint8 and (low, high) == (0, 255):
        return array
    smallest, largest = array.min(), array.max()
    if smallest < low or largest > high:
        warnings.warn(
            f"{name}: values {smallest:g}..{largest:g} fall outside {low:g}..{high:g} ({origin}); clipped",
            InputRangeWarning,
            stacklevel=2,
        )
    return np.clip((array.astype(np.float64) - low) / (high - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _array_to_pil(
    array: np.ndarray,
    name: str,
    channels_first: bool,
    input_range: Sequence[float] | None = None,
    origin: str = "input_range",
) -> Image.Image:
    """An HxW, HxWxC or CxHxW array (C in 1, 3, 4) as an RGB PIL image."""
    if array.size == 0:
        raise ImageInputError(name, "image has no pixels")
    if array.ndim == 3 and channels_first and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageInputError(name, "expected HxW, HxWxC or CxHxW with C in (1, 3, 4)")
    pixels = _array_to_uint8(np.ascontiguousarray(array), name, input_range, origin)
    return _pil_to_rgb(Image.fromarray(pixels, mode="RGBA" if pixels.shape[-1] == 4 else "RGB"), name)


def _load_pil(image: Image.Image, name: str) -> None:
    """Make sure a PIL image's pixels can be read (a lazily opened image decodes its file now)."""
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - whatever a decoder raises on a file's bytes is that file's problem
        # Pillow raises ValueError("Operation on closed image") after close(), and fails an assertion on the file of
        # a lazily opened image whose file was closed (leaving a `with Image.open(...)` block) before it was read.
        if isinstance(error, AssertionError) or str(error) == "Operation on closed image":
            reason = "the PIL image is closed (or its file was closed before its pixels were read); load() it first"
        else:
            reason = f"cannot decode image ({type(error).__name__}: {error})"
        raise ImageInputError(name, reason) from error


def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Any PIL mode as RGB: 16/32-bit and float images are rescaled from their mode's range (`_MODE_RANGES`),
    transparency is composited on white."""
    _load_pil(image, name)
    if image.width == 0 or image.height == 0:
        raise ImageInputError(name, "image has no pixels")
    if image.mode in _MODE_RANGES or image.mode.startswith("I;16"):
        origin = f"the range of PIL mode {image.mode}"
        return _array_to_pil(np.asarray(image), name, False, _MODE_RANGES.get(image.mode), origin)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageInputError(name, f"cannot convert PIL mode {image.mode!r} to RGB") from error


def _tensor_to_numpy(tensor: Any, name: str) -> np.ndarray:
    """A torch tensor as a numpy array; float dtypes numpy lacks (bfloat16) become float32, which holds them exactly."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError as error:
        if tensor.is_floating_point():
            return tensor.float().numpy()
        raise ImageInputError(name, f"unsupported tensor dtype {tensor.dtype}") from error


def min_decoded_side(output_side: int, degradation: str, scale_factor: float | None) -> int | None:
    """The smallest side a file may be decoded to when images of `output_side` pixels are made from it with
    `degradation` (`DECODE_MARGIN` times that side), or None to decode it whole: the step degradations halve the
    photo's own pixels and a `scale_factor` is relative to its own size, so a reduced decoding would change them."""
    if scale_factor is not None or degradation not in _REDUCIBLE_DEGRADATIONS:
        return None
    return DECODE_MARGIN * output_side


def to_rgb_image(image: Any, *, min_side: int | None = None, input_range: Sequence[float] | None = None) -> Image.Image:
    """Convert one image (path, PIL image of any mode, numpy HxW/HxWxC array, torch CxHxW tensor) to RGB PIL.

    Args:
        image: The image; see the module docstring for how files, PIL images and pixel ranges are read.
        min_side: A JPEG file is decoded reduced while both its sides stay at least this many pixels (see
            `min_decoded_side`); None decodes it whole. Other inputs are converted as they are.
        input_range: The `(low, high)` values of black and white in an array or tensor, instead of its dtype's.

    Raises:
        ImageInputError: naming the image and what is wrong with it.
    """
    name = _describe(image)
    input_range = validate_input_range(input_range)
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(open_image(image, draft_side=min_side), name)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, name)
    if type(image).__module__.startswith("torch"):
        return _array_to_pil(_tensor_to_numpy(image, name), name, True, input_range)
    if isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[-1] not in (1, 3, 4)
        return _array_to_pil(image, name, channels_first, input_range)
    raise ImageInputError(name, "unsupported image input; pass a path, a PIL image, a numpy array or a torch tensor")


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


def degrade(
    image: Image.Image, size: tuple[int, int], degradation: str, blur_sigma: float, reducing_gap: float | None = None
) -> Image.Image:
    """Downscale `image` to `size` (width, height) with one of `DEGRADATIONS`; `reducing_gap` (Pillow's) box-averages
    first in the one-resize degradations, "bicubic" and "bilinear"."""
    if degradation == "bicubic":
        return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=reducing_gap)
    if degradation == "bilinear":
        return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=reducing_gap)
    if degradation == "step":
        return _step_resize(image, size)
    if degradation == "step_gaussian":
        return _step_resize(image.filter(ImageFilter.GaussianBlur(blur_sigma)), size)
    raise ValueError(f"degradation must be one of {DEGRADATIONS}, got {degradation!r}")


def make_low_resolution(
    image: Image.Image, image_size: int, degradation: str, scale_factor: float | None, blur_sigma: float
) -> Image.Image:
    """The LR view of an RGB image, always `image_size` x `image_size`.

    Without `scale_factor` the image is degraded straight to the LR size (box-averaged first while it stays at
    least `REDUCING_GAP` times that size, see the module docstring). With it (the paper's protocol: 0.5, 0.2, 0.1,
    0.05) the image is degraded to `scale_factor` times its own size and then resized (bicubic) to the LR size. An
    image already at or below the target size is only resized, never degraded twice.
    """
    reducing_gap = None
    if scale_factor is None:
        target = (image_size, image_size)
        reducing_gap = REDUCING_GAP
    else:
        if not 0 < scale_factor <= 1:
            raise ValueError(f"scale_factor must be in (0, 1], got {scale_factor!r}")
        target = (max(1, round(image.width * scale_factor)), max(1, round(image.height * scale_factor)))
    if image.width > target[0] or image.height > target[1]:
        image = degrade(image, target, degradation, blur_sigma, reducing_gap)
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
