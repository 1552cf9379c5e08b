"""Bad and awkward image inputs of the image processor, the pipeline and `open_image`: every one gets a clear answer.

Files are read as training reads them (EXIF orientation applied), large files are decoded reduced within a stated
tolerance, pixel ranges follow the dtype (with `input_range` where that is ambiguous, and a warning naming the
image when values fall outside), and every unreadable input raises a `ValueError` that names it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import unreduced_pixels
from PIL import Image

from soli_hf import SoliImageProcessor
from soli_hf.data import safe_load_image
from soli_hf.image_transforms_soli import (
    ImageInputError,
    InputRangeWarning,
    min_decoded_side,
    open_image,
    to_rgb_image,
)

PROCESSOR = SoliImageProcessor()
#: A large file is decoded reduced to no less than 4x the model's input side; its `pixel_values` (in [-1, 1]) then
#: differ from full decoding by at most 5 grey levels (2 / 255 per level), about 0.2 of a level on average.
REDUCED_DECODING_MAX_DIFFERENCE = 5 * 2 / 255
REDUCED_DECODING_MEAN_DIFFERENCE = 0.5 * 2 / 255


def pixels(images, **kwargs) -> np.ndarray:
    return PROCESSOR(images, **kwargs)["pixel_values"]


def textured_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: coarse random shapes (smoothly upscaled) plus fine noise (a tiled patch)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).resize((width, height))
    patch = rng.integers(-12, 13, (256, 256, 3), dtype=np.int16)
    noise = np.tile(patch, (height // 256 + 1, width // 256 + 1, 1))[:height, :width]
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


# --- EXIF orientation --------------------------------------------------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> Path:
    """A 120x80 JPEG whose EXIF says "rotate 90 degrees clockwise to display" (Orientation=6), as phones save."""
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    textured_photo(120, 80).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_of_a_file_is_applied_as_training_applies_it(rotated_jpeg: Path) -> None:
    as_trained = pixels(safe_load_image({"image_path": str(rotated_jpeg)}))
    assert np.array_equal(pixels(str(rotated_jpeg)), as_trained)
    assert np.array_equal(pixels(rotated_jpeg), as_trained)
    with Image.open(rotated_jpeg) as stored:
        assert not np.allclose(pixels(stored.copy()), as_trained, atol=0.1)  # the stored (unrotated) pixels


def test_a_pil_image_given_directly_is_taken_as_given(rotated_jpeg: Path) -> None:
    with Image.open(rotated_jpeg) as opened:
        opened.load()
        assert opened.size == (120, 80)  # not transposed: the user's image is not second-guessed
        assert np.array_equal(pixels(opened), pixels(opened.convert("RGB")))
    assert to_rgb_image(rotated_jpeg).size == (80, 120)


def test_onnx_runtime_preprocessing_applies_the_exif_orientation_too(rotated_jpeg: Path) -> None:
    pytest.importorskip("onnxruntime")
    from soli_hf.onnx.manifest import preprocessing_settings
    from soli_hf.onnx.runtime import preprocess

    assert np.array_equal(preprocess(str(rotated_jpeg), preprocessing_settings(PROCESSOR)), pixels(str(rotated_jpeg)))


# --- large files are decoded reduced, within a stated tolerance ----------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_large_photo_is_reduced_within_the_stated_tolerance(tmp_path: Path, suffix: str) -> None:
    """A JPEG file is decoded at 1/4 scale (draft), a PNG whole; every input, file or PIL image, is then box-averaged
    before the resize (`REDUCING_GAP`): the LR view stays within the stated tolerance of one whole resize."""
    path = tmp_path / f"large{suffix}"
    textured_photo(3000, 2000).save(path, quality=90, compress_level=1)
    decoded = to_rgb_image(path, min_side=min_decoded_side(64, "bicubic", None))
    assert decoded.size == ((750, 500) if suffix == ".jpg" else (3000, 2000))
    full = open_image(path)
    for degradation in ("bicubic", "bilinear"):
        reference = unreduced_pixels(full, PROCESSOR, degradation)
        for image in (path, full):
            difference = np.abs(pixels(image, degradation=degradation) - reference)
            assert difference.max() <= REDUCED_DECODING_MAX_DIFFERENCE
            assert difference.mean() <= REDUCED_DECODING_MEAN_DIFFERENCE


def test_photos_under_the_reducing_gap_are_resized_whole() -> None:
    """The 224x224 Flickr8k photos (3.5x the 64-pixel LR side, under `REDUCING_GAP` x 2) train and evaluate on one
    whole resize, as before the reducing gap."""
    photo = textured_photo(224, 224)
    for degradation in ("bicubic", "bilinear"):
        assert np.array_equal(pixels(photo, degradation=degradation), unreduced_pixels(photo, PROCESSOR, degradation))


def test_step_degradations_and_scale_factors_decode_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    textured_photo(1200, 900).save(path)
    full = open_image(path)
    assert min_decoded_side(64, "step", None) is None and min_decoded_side(64, "bicubic", 0.5) is None
    assert np.array_equal(pixels(path, degradation="step"), pixels(full, degradation="step"))
    assert np.array_equal(pixels(path, scale_factor=0.2), pixels(full, scale_factor=0.2))


def test_return_hr_keeps_4x_the_hr_side(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    textured_photo(1600, 1200).save(path)
    assert min(to_rgb_image(path, min_side=min_decoded_side(128, "bicubic", None)).size) >= 512
    output = PROCESSOR(path, return_hr=True)
    assert output["pixel_values"].shape == (1, 3, 64, 64) and output["hr_pixel_values"].shape == (1, 3, 128, 128)


# --- files that cannot be read are named -------------------------------------------------------------------------


def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    with pytest.raises(ValueError, match=r"x\.jpg: not a regular file \(a FIFO\), not opened"):
        pixels(str(fifo))


def test_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(ValueError, match=r"album\.jpg: is a folder"):
        pixels(tmp_path / "album.jpg")


def test_a_decompression_bomb_is_named(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # Pillow refuses more than twice the limit
    with pytest.raises(ImageInputError, match=r"bomb\.png: too many pixels to decode safely") as caught:
        pixels(path)
    assert caught.value.image == str(path) and caught.value.reason.startswith("too many pixels")


def test_a_float_tiff_holding_nan_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    array = np.full((20, 20), 0.5, dtype=np.float32)
    array[3, 4] = np.nan
    Image.fromarray(array).save(path)
    with pytest.raises(ValueError, match=r"nan\.tif: image contains NaN or infinite values"):
        pixels(path)


def test_image_input_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(ImageInputError("a.jpg", "not an image file PIL can read")))
    assert (error.image, error.reason, str(error)) == ("a.jpg", "not an image file PIL can read", error.args[0])


# --- pixel ranges: the dtype decides, input_range says otherwise, out-of-range values warn ------------------------


def mean_level(array, **kwargs) -> float:
    """The mean of `pixel_values` as a 0..1 grey level."""
    return float((pixels(array, **kwargs).mean() + 1) / 2)


@pytest.mark.parametrize(
    ("image", "level"),
    [
        (np.full((8, 8), 200, dtype=np.uint16), 200 / 65535),  # not "8-bit because max <= 255"
        (np.full((8, 8), 40000, dtype=np.uint16), 40000 / 65535),
        (np.full((8, 8), 0.9, dtype=np.float32), 0.9),
        (np.full((8, 8), 1.0, dtype=np.float64), 1.0),
        (np.full((8, 8), True), 1.0),
        (np.full((8, 8), 128, dtype=np.int64), 128 / 255),
        (torch.full((3, 8, 8), 0.25, dtype=torch.bfloat16), 0.25),
        (torch.full((3, 8, 8), 0.25, dtype=torch.float16), 0.25),
        (Image.fromarray(np.full((8, 8), 40000, dtype=np.int32)), 40000 / 65535),  # PIL mode I
        (Image.fromarray(np.full((8, 8), 0.75, dtype=np.float32)), 0.75),  # PIL mode F
    ],
    ids=[
        "uint16-dark",
        "uint16",
        "float32",
        "float64-white",
        "bool",
        "int64",
        "bf16-tensor",
        "fp16-tensor",
        "mode-I",
        "mode-F",
    ],
)
def test_the_dtype_decides_the_pixel_range_not_the_values(image, level: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputRangeWarning)
        assert mean_level(image) == pytest.approx(level, abs=1 / 255)


def test_a_bf16_tensor_gives_the_float32_result() -> None:
    image = torch.rand(3, 40, 50)
    assert np.array_equal(pixels(image.to(torch.bfloat16)), pixels(image.to(torch.bfloat16).float()))


def test_input_range_reads_ambiguous_arrays() -> None:
    dark_levels = np.full((8, 8, 3), 1.0, dtype=np.float32)  # a dark float image of 0..255 levels
    assert mean_level(dark_levels, input_range=(0, 255)) == pytest.approx(1 / 255, abs=1 / 255)
    signed = torch.full((3, 8, 8), -0.5)
    assert mean_level(signed, input_range=(-1, 1)) == pytest.approx(0.25, abs=1 / 255)


def test_values_outside_the_range_warn_naming_the_image_and_are_clipped() -> None:
    signed = np.linspace(-1, 1, 48, dtype=np.float32).reshape(4, 4, 3)
    with pytest.warns(InputRangeWarning, match=r"ndarray of shape \(4, 4, 3\): values -1\.\.1 fall outside 0\.\.1"):
        values = pixels(signed)
    assert values.min() == -1.0
    with pytest.warns(InputRangeWarning, match=r"values 300\.\.300 fall outside 0\.\.255 \(input_range\)"):
        assert pixels(np.full((4, 4), 300.0), input_range=(0, 255)).min() == 1.0


def test_input_range_is_saved_with_the_processor(tmp_path: Path) -> None:
    processor = SoliImageProcessor(input_range=(-1, 1))
    processor.save_pretrained(tmp_path)
    reloaded = SoliImageProcessor.from_pretrained(tmp_path)
    assert reloaded.input_range == [-1.0, 1.0]
    signed = np.random.default_rng(0).uniform(-1, 1, (20, 30, 3)).astype(np.float32)
    assert np.array_equal(reloaded(signed)["pixel_values"], processor(signed)["pixel_values"])
    pytest.importorskip("onnxruntime")
    from soli_hf.onnx.manifest import preprocessing_settings
    from soli_hf.onnx.runtime import preprocess

    assert np.array_equal(preprocess(signed, preprocessing_settings(reloaded)), processor(signed)["pixel_values"])


@pytest.mark.parametrize("input_range", [(1, 0), (0, float("inf")), (0,), "dark"])
def test_a_bad_input_range_is_refused(input_range) -> None:
    with pytest.raises(ValueError, match="input_range"):
        SoliImageProcessor(input_range=input_range)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((4, 4, 3), np.inf, dtype=np.float32), r"ndarray of shape \(4, 4, 3\): image contains NaN"),
        (np.zeros((4, 4, 3), dtype=np.complex64), "unsupported array dtype complex64"),
        (np.zeros((4, 4, 3), dtype=object), "unsupported array dtype object"),
        (torch.zeros(3, 4, 4, dtype=torch.complex64), "unsupported array dtype complex64"),
    ],
    ids=["inf", "complex", "object", "complex-tensor"],
)
def test_unusable_values_and_dtypes_raise_naming_the_image(image, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pixels(image)


# --- closed PIL images, the pipeline ----------------------------------------------------------------------------


def test_a_closed_pil_image_is_named_as_closed(tmp_path: Path) -> None:
    closed = Image.new("RGB", (10, 10))
    closed.close()
    with pytest.raises(ValueError, match=r"PIL image \(mode RGB, size \(10, 10\)\): the PIL image is closed"):
        pixels(closed)
    path = tmp_path / "a.png"
    Image.new("RGB", (10, 10)).save(path)
    with Image.open(path) as lazy:  # never loaded: its pixels were in the file closed on leaving the block
        pass
    with pytest.raises(ValueError, match="the PIL image is closed"):
        pixels(lazy)


@pytest.fixture(scope="module")
def captioner(saved_tiny_model):
    from transformers import pipeline

    return pipeline("image-to-text", model=str(saved_tiny_model))


def test_pipeline_refuses_an_empty_list(captioner) -> None:
    with pytest.raises(ValueError, match="images: got an empty list"):
        captioner([])


def test_pipeline_reads_files_and_tensors_by_the_same_rules(captioner, rotated_jpeg: Path) -> None:
    upright = captioner.preprocess(safe_load_image({"image_path": str(rotated_jpeg)}))["pixel_values"]
    assert torch.equal(captioner.preprocess(str(rotated_jpeg))["pixel_values"], upright)
    caption = captioner(torch.rand(3, 40, 40, dtype=torch.bfloat16), generate_kwargs={"num_beams": 1}, max_new_tokens=3)
    assert isinstance(caption[0]["generated_text"], str)
    with pytest.raises(ValueError, match="nan.tif: image contains NaN"):
        path = rotated_jpeg.with_name("nan.tif")
        Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32)).save(path)
        captioner(str(path))
