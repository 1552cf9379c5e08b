"""SoliImageProcessor: every kind of input, the LR/HR pair, degradations, and clear errors on bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import unreduced_pixels
from PIL import Image

from soli_hf import SoliImageProcessor
from soli_hf.image_transforms_soli import DEGRADATIONS, make_low_resolution

PROCESSOR = SoliImageProcessor()


def rgb(width: int = 90, height: int = 70) -> Image.Image:
    rng = np.random.default_rng(width * height)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_any_pil_mode_becomes_a_normalised_rgb_tensor(mode):
    if mode == "F":  # a float image holds 0..1 (Pillow's convert("F") would keep the 0..255 levels of L)
        image = Image.fromarray(np.asarray(rgb().convert("L"), dtype=np.float32) / 255)
    else:
        image = rgb().convert(mode) if mode not in ("I;16", "I") else rgb().convert("L").convert(mode)
    pixel_values = PROCESSOR(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 64)
    assert pixel_values.dtype == torch.float32
    assert -1.0 <= pixel_values.min() and pixel_values.max() <= 1.0


def test_sixteen_bit_images_are_rescaled_not_clipped():
    array = np.full((20, 20), 40000, dtype=np.uint16)
    value = PROCESSOR(Image.fromarray(array), return_tensors="pt")["pixel_values"].mean().item()
    assert value == pytest.approx(40000 / 65535 * 2 - 1, abs=0.01)


def test_transparent_pixels_are_composited_on_white():
    transparent = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert PROCESSOR(transparent, return_tensors="pt")["pixel_values"].min() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((30, 40), dtype=np.uint8),
        np.zeros((30, 40, 1), dtype=np.uint8),
        np.zeros((30, 40, 3), dtype=np.uint8),
        np.zeros((30, 40, 4), dtype=np.uint8),
        np.zeros((30, 40, 3), dtype=np.float32),
        np.full((30, 40, 3), 0.8),
        np.zeros((3, 30, 40), dtype=np.float32),
    ],
    ids=["HxW", "HxWx1", "HxWx3", "HxWx4", "float32", "float64", "CxHxW"],
)
def test_numpy_layouts_and_dtypes(array):
    assert PROCESSOR(array, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)


def test_float_arrays_in_0_1_and_in_0_255_with_input_range_agree():
    unit = np.full((8, 8, 3), 0.5, dtype=np.float32)
    levels = PROCESSOR(unit * 255, input_range=(0, 255))["pixel_values"]
    assert np.array_equal(PROCESSOR(unit)["pixel_values"], levels)


def test_torch_chw_and_batches():
    image = torch.rand(3, 50, 60)
    assert PROCESSOR(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)
    assert PROCESSOR(torch.rand(5, 3, 50, 60), return_tensors="pt")["pixel_values"].shape == (5, 3, 64, 64)
    assert PROCESSOR([rgb(), rgb(30, 30)], return_tensors="pt")["pixel_values"].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("size", [(1, 1), (4000, 3000)])
def test_tiny_and_huge_images(size):
    image = Image.new("RGB", size, (10, 200, 30))
    output = PROCESSOR(image, return_hr=True, return_tensors="pt")
    assert output["pixel_values"].shape == (1, 3, 64, 64)
    assert output["hr_pixel_values"].shape == (1, 3, 128, 128)


def test_paths_are_opened(tmp_path):
    path = tmp_path / "photo.png"
    rgb().save(path)
    assert torch.equal(
        PROCESSOR(str(path), return_tensors="pt")["pixel_values"], PROCESSOR(rgb(), return_tensors="pt")["pixel_values"]
    )


def test_hr_pair_comes_from_the_same_source():
    output = PROCESSOR(rgb(300, 300), return_hr=True, return_tensors="pt")
    downscaled_hr = torch.nn.functional.interpolate(output["hr_pixel_values"], size=64, mode="area")
    assert (downscaled_hr - output["pixel_values"]).abs().mean() < 0.05


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_degradations_are_deterministic_and_distinct(degradation):
    image = rgb(224, 224)
    first = PROCESSOR(image, degradation=degradation)["pixel_values"]
    assert np.array_equal(first, PROCESSOR(image, degradation=degradation)["pixel_values"])
    if degradation != "bicubic":
        assert not np.array_equal(first, PROCESSOR(image)["pixel_values"])


def test_scale_factor_degrades_then_resizes_to_the_model_size():
    image = rgb(224, 224)
    small = make_low_resolution(image, 64, "bilinear", scale_factor=0.05, blur_sigma=1.0)
    assert small.size == (64, 64)
    expected = image.resize((11, 11), Image.Resampling.BILINEAR).resize((64, 64), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(small), np.asarray(expected))


def test_small_images_are_only_resized_never_degraded_twice():
    image = rgb(40, 40)
    for degradation in DEGRADATIONS:
        low = make_low_resolution(image, 64, degradation, scale_factor=None, blur_sigma=2.0)
        assert np.array_equal(np.asarray(low), np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC)))


def test_processor_settings_round_trip(tmp_path):
    processor = SoliImageProcessor(image_size=48, degradation="step_gaussian", scale_factor=0.2, blur_sigma=1.5)
    processor.save_pretrained(tmp_path)
    reloaded = SoliImageProcessor.from_pretrained(tmp_path)
    image = rgb(200, 150)
    assert np.array_equal(processor(image)["pixel_values"], reloaded(image)["pixel_values"])
    assert reloaded(image)["pixel_values"].shape == (1, 3, 48, 48)


# --- bad input: a ValueError that names the input and the problem ---------------------------------------------


def test_truncated_file(tmp_path):
    buffer = io.BytesIO()
    rgb(200, 200).save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[:500])
    with pytest.raises(ValueError, match="truncated.jpg.*cannot decode"):
        PROCESSOR(str(path))


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a picture")
    with pytest.raises(ValueError, match="notes.txt.*not an image"):
        PROCESSOR(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing.png.*not found"):
        PROCESSOR(str(tmp_path / "missing.png"))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "empty list"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "no pixels"),
        (np.zeros((10, 0), dtype=np.uint8), "no pixels"),
        (torch.zeros(1, 1, 3, 8, 8), "5 dimensions"),
        (np.zeros(10), "1 dimensions"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (np.zeros((5, 5, 7)), "expected HxW"),
        (None, "None"),
        (42, "unsupported image input"),
    ],
    ids=["empty-list", "zero-height", "zero-width", "5d-tensor", "1d", "nan", "7-channels", "none", "int"],
)
def test_bad_inputs_raise_value_errors_naming_the_problem(images, message):
    with pytest.raises(ValueError, match=message):
        PROCESSOR(images)


def test_bad_degradation_and_scale_factor():
    with pytest.raises(ValueError, match="degradation"):
        SoliImageProcessor(degradation="nearest")
    with pytest.raises(ValueError, match="scale_factor"):
        PROCESSOR(rgb(), scale_factor=2.0)


# --- a camera-size JPEG is decoded reduced (JPEG draft mode), in the one path both runtimes share -------------------

#: Measured on 2000x1500 photo-like JPEGs (three seeds): 0.12-0.13 grey levels on average, 1-2 at most, from the
#: `pixel_values` of the whole decoded photo (one grey level is 2/255 of `pixel_values`, which span [-1, 1]).
DRAFT_MEAN_LEVELS, DRAFT_MAX_LEVELS = 0.5, 4


def photo_like(width: int, height: int) -> Image.Image:
    """Coarse random shapes (smoothly upscaled) plus fine noise, like a camera photo's texture."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).resize((width, height))
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def test_a_camera_size_jpeg_is_drafted_and_its_lr_input_stays_within_tolerance(tmp_path):
    pytest.importorskip("onnxruntime")
    from soli_hf.image_transforms_soli import DECODE_MARGIN, min_decoded_side, open_image
    from soli_hf.onnx.manifest import preprocessing_settings
    from soli_hf.onnx.runtime import preprocess

    path = tmp_path / "camera.jpg"
    photo_like(2000, 1500).save(path, quality=90)
    min_side = min_decoded_side(PROCESSOR.image_size, "bicubic", None)
    assert open_image(path, draft_side=min_side).size == (500, 375)  # 1/4 scale: still >= 4x the 64-pixel input
    assert min_side == DECODE_MARGIN * PROCESSOR.image_size >= 2 * PROCESSOR.image_size
    drafted = PROCESSOR(str(path))["pixel_values"]
    # The torch-free runtime reduces through the same function: bit-identical.
    assert np.array_equal(preprocess(str(path), preprocessing_settings(PROCESSOR)), drafted)
    whole = unreduced_pixels(open_image(path), PROCESSOR)
    levels = np.abs(drafted - whole) * 255 / 2
    assert levels.mean() < DRAFT_MEAN_LEVELS and levels.max() <= DRAFT_MAX_LEVELS


@pytest.mark.slow
def test_camera_size_photos_keep_nearly_all_their_captions_when_drafted(tmp_path):
    """The 28 photos outside Flickr8k (benchmarks/photos_outside_flickr), upscaled to 2000 pixels wide with a little
    noise and saved as JPEG: the shipped model's greedy captions from the files (decoded reduced, JPEG draft 1/4)
    against those from the whole decoded photos. Measured: 22 of 28 identical (beam 3: 24); pixel_values 0.5 grey
    levels apart on average, 19 at most."""
    from soli_hf.captioner import CHECKOUT_MODEL_DIR, load_captioner
    from soli_hf.image_transforms_soli import open_image

    rng = np.random.default_rng(0)
    paths = []
    for source in sorted((CHECKOUT_MODEL_DIR.parents[1] / "benchmarks" / "photos_outside_flickr" / "photos").glob("*")):
        with Image.open(source) as photo:
            large = photo.convert("RGB").resize((2000, round(2000 * photo.height / photo.width)), Image.LANCZOS)
        noisy = np.asarray(large, dtype=np.float32) + rng.normal(0, 4, (large.height, large.width, 3))
        paths.append(tmp_path / source.name)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(paths[-1], quality=92)
    assert len(paths) == 28
    captioner = load_captioner(CHECKOUT_MODEL_DIR)
    drafted = captioner.caption([str(path) for path in paths], num_beams=1)
    processor = captioner.processor.image_processor
    whole_pixels = np.concatenate([unreduced_pixels(open_image(path), processor) for path in paths])
    whole = captioner.caption_pixels(whole_pixels, num_beams=1)
    assert sum(a == b for a, b in zip(drafted, whole, strict=True)) >= 20
