"""Captioning regions for users: `load_captioner` on a tiny random AlignCap folder gives a `RegionCaptioner` that
describes given boxes, the regions its segmenter proposes and (as a whole-photo captioner) the full-photo box; and
`soli caption PHOTO --box ... | --regions auto` prints one line per box, names each bad `--box` value and draws the
boxes on an `--html` page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import aligncap_processor, tiny_aligncap
from PIL import Image

from soli_hf import AlignCapForConditionalGeneration, AlignCapProcessor
from soli_hf.captioner import RegionCaption, RegionCaptioner, load_captioner
from soli_hf.cli import main
from soli_hf.object_evidence_aligncap import VOC_CLASSES, propose_regions

#: Boxes of a 96x72 photo (conftest's `images`), in its own pixels.
BOXES = [[0, 0, 48, 36], [20, 10, 96, 72]]
BACKGROUND, PERSON, DOG = (VOC_CLASSES.index(name) for name in ("background", "person", "dog"))


@pytest.fixture(scope="module")
def region_model(tmp_path_factory, tokenizer) -> Path:
    """A tiny random AlignCap (LSTM decoder, 64x64 photos, with its segmenter) saved with its processor."""
    folder = tmp_path_factory.mktemp("aligncap_tiny")
    tiny_aligncap(len(tokenizer)).save_pretrained(folder)
    aligncap_processor(tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def captioner(region_model) -> RegionCaptioner:
    return load_captioner(region_model)


@pytest.fixture
def photo(tmp_path: Path, images) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(path)
    return path


def expected_captions(folder: Path, image, boxes, **generate_kwargs) -> list[str]:
    """What the model itself says for `boxes` of `image` (the processor and `generate`, no captioner)."""
    model = AlignCapForConditionalGeneration.from_pretrained(folder).eval()
    processor = AlignCapProcessor.from_pretrained(folder)
    inputs = processor(images=image, boxes=[boxes], return_tensors="pt")
    ids = model.generate(inputs["pixel_values"], inputs["boxes"], **generate_kwargs)
    return processor.batch_decode(ids, skip_special_tokens=True)


def one_hot(labels: list[list[int]]) -> torch.Tensor:
    """(21, H, W) class probabilities: 0.9 on each cell's class."""
    labels = torch.tensor(labels)
    probabilities = torch.full((len(VOC_CLASSES), *labels.shape), 0.1 / (len(VOC_CLASSES) - 1))
    return probabilities.scatter_(0, labels[None], 0.9)


# ------------------------------------------------------------------------------------------- the region captioner


def test_load_captioner_gives_a_region_captioner_that_describes_the_given_boxes(captioner, region_model, images):
    assert isinstance(captioner, RegionCaptioner)
    assert captioner.generation_defaults == {"num_beams": 1, "max_new_tokens": 16}  # the model's generation config
    regions = captioner.caption_regions(images[0], [BOXES])
    assert [region.box for region in regions[0]] == [tuple(map(float, box)) for box in BOXES]
    assert [region.caption for region in regions[0]] == expected_captions(region_model, images[0], BOXES)
    assert all(region.class_name is None and region.score is None for region in regions[0])
    # one photo's boxes without the per-photo list; decoding settings as generate() takes them
    beams = captioner.caption_regions(images[0], BOXES, num_beams=3, max_new_tokens=4)
    assert [r.caption for r in beams[0]] == expected_captions(
        region_model, images[0], BOXES, num_beams=3, max_new_tokens=4
    )
    # two photos, one list of boxes each, in order
    both = captioner.caption_regions([images[0], images[1]], [BOXES, [[8, 4, 60, 70]]])
    assert [len(photo) for photo in both] == [2, 1] and both[0] == regions[0]
    assert both[1][0].caption == expected_captions(region_model, images[1], [[8, 4, 60, 70]])[0]


def test_a_region_captioner_captions_a_whole_photo_as_its_full_photo_box(captioner, images):
    whole = captioner.caption_regions(images[0], [[0, 0, 96, 72]])[0][0].caption
    assert captioner.caption([images[0]]) == [whole]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[30, 0, 10, 10]], r"image 0, box 0: \[30.0, 0.0, 10.0, 10.0\] is inverted"),
        ([[0, 0, 99, 10]], r"image 0, box 0: .* is outside the image \(96x72 pixels\)"),
        ([[[0, 0, 10, 10]], [[0, 0, 5, 5]]], "got 1 images but boxes for 2"),
    ],
)
def test_bad_boxes_are_the_processors_errors(captioner, images, boxes, message):
    with pytest.raises(ValueError, match=message):
        captioner.caption_regions(images[0], boxes)


def test_auto_regions_are_the_segments_of_the_models_map_in_the_photos_pixels(captioner, region_model, images):
    # A 4x4 map of the 64x64 input (cells of 16 pixels): a dog top-left (4 cells), a person bottom-right (6 cells).
    labels = [[DOG, DOG, 0, 0], [DOG, DOG, 0, 0], [0, PERSON, PERSON, PERSON], [0, PERSON, PERSON, PERSON]]
    model = captioner.model
    model.segmentation_probabilities = lambda pixels: one_hot(labels)[None].expand(len(pixels), -1, -1, -1)
    try:
        regions = captioner.caption_regions(images[0])[0]
    finally:
        del model.segmentation_probabilities
    # input pixels -> the 96x72 photo's: x times 96 / 64, y times 72 / 64; the person first (the larger segment)
    assert [(r.box, r.class_name) for r in regions] == [((24.0, 36.0, 96.0, 72.0), "person"), ((0, 0, 48, 36), "dog")]
    assert all(r.score == pytest.approx(0.9) for r in regions)
    expected = expected_captions(region_model, images[0], [list(r.box) for r in regions])
    assert [r.caption for r in regions] == expected


def test_auto_regions_on_a_photo_without_objects_describe_the_whole_photo(captioner, images):
    captioner.model.segmentation_probabilities = lambda pixels: one_hot([[BACKGROUND] * 4] * 4)[None]
    try:
        regions = captioner.caption_regions(images[0])[0]
    finally:
        del captioner.model.segmentation_probabilities
    assert regions == [RegionCaption((0.0, 0.0, 96.0, 72.0), captioner.caption([images[0]])[0])]


def test_auto_regions_through_the_real_segmenter(captioner, region_model, images):
    """No stand-in: the tiny model's own (random) segmentation head, through `propose_regions`, on a 100x70 photo
    (cells of 8 input pixels are 12.5 x 8.75 of its pixels)."""
    image = Image.fromarray(images[2]).resize((100, 70))
    regions = captioner.caption_regions(image, max_regions=3)[0]
    pixels = torch.as_tensor(captioner.preprocess([image]))
    proposals = propose_regions(captioner.model.segmentation_probabilities(pixels)[0], 64, max_regions=3)
    assert 1 <= len(regions) == len(proposals) <= 3
    assert [r.class_name for r in regions] == [p.class_name for p in proposals]
    scales = (100 / 64, 70 / 64, 100 / 64, 70 / 64)
    for region, proposal in zip(regions, proposals, strict=True):
        x0, y0, x1, y1 = (value * scale for value, scale in zip(proposal.box, scales, strict=True))
        # widened outward to whole pixels of the photo, never past it
        assert region.box == (np.floor(x0), np.floor(y0), min(np.ceil(x1), 100), min(np.ceil(y1), 70))
    assert any(value % 1 for p in proposals for value in np.multiply(p.box, scales))  # some were widened
    assert [r.caption for r in regions] == expected_captions(region_model, image, [list(r.box) for r in regions])


def test_auto_regions_need_a_segmenter(tmp_path, tokenizer, images):
    plain = dict(use_object_evidence=False, use_refinement=False, use_alignment=False)
    tiny_aligncap(len(tokenizer), tag_loss_weight=0, cond_loss_weight=0, multi_loss_weight=0, **plain).save_pretrained(
        tmp_path
    )
    aligncap_processor(tokenizer).save_pretrained(tmp_path)
    plain_captioner = load_captioner(tmp_path)
    assert len(plain_captioner.caption_regions(images[0], BOXES)[0]) == 2
    with pytest.raises(ValueError, match=r"no segmentation head \(use_object_evidence=False\): give boxes"):
        plain_captioner.caption_regions(images[0])


def test_a_whole_photo_model_is_not_a_region_captioner(saved_tiny_model):
    assert not isinstance(load_captioner(saved_tiny_model), RegionCaptioner)
    with pytest.raises(ValueError, match="is a soli model, which captions whole photos"):
        RegionCaptioner.from_pretrained(saved_tiny_model)


# ------------------------------------------------------------------------------------------------ soli caption


def caption(photo: Path, model: Path, *flags: str) -> list[str]:
    return ["caption", str(photo), "--model", str(model), *flags]


def test_cli_box_prints_box_and_caption_lines(region_model, photo, images, capsys):
    assert main(caption(photo, region_model, "--box", "0,0,48,36", "--box", "20,10,96,72")) == 0
    expected = expected_captions(region_model, images[0], BOXES)
    assert capsys.readouterr().out.splitlines() == [f"0,0,48,36\t{expected[0]}", f"20,10,96,72\t{expected[1]}"]
    assert main(caption(photo, region_model, "--box", "20.5,10,96,72", "--json", "--num-beams", "2")) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == {
        "path": str(photo),
        "box": [20.5, 10.0, 96.0, 72.0],
        "caption": expected_captions(region_model, images[0], [[20.5, 10, 96, 72]], num_beams=2)[0],
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,2,3", "'1,2,3': expected X0,Y0,X1,Y1, four numbers separated by commas"),
        ("a,b,c,d", "'a,b,c,d': expected X0,Y0,X1,Y1"),
        ("0,0,nan,5", "'0,0,nan,5': expected X0,Y0,X1,Y1"),
        ("10,0,5,10", r"'10,0,5,10' is inverted \(x1 < x0 or y1 < y0\)"),
        ("5,5,5,9", r"'5,5,5,9' has zero area"),
        ("-5,0,10,10", "'-5,0,10,10' has a negative coordinate"),
    ],
)
def test_cli_malformed_boxes_are_usage_errors_naming_the_value(region_model, photo, value, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(caption(photo, region_model, f"--box={value}"))
    assert exited.value.code == 2
    assert re.search(f"soli caption: error: argument --box: {message}", capsys.readouterr().err)


def test_cli_a_box_outside_the_photo_is_an_error_naming_it(region_model, photo, capsys):
    assert main(caption(photo, region_model, "--box", "0,0,48,36", "--box", "0,0,97,10")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"soli caption: error: --box 0,0,97,10 reaches outside {photo} (96x72 pixels)" in captured.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--box", "0,0,5,5", "--regions", "auto"], "give boxes (--box) or --regions auto, not both"),
        (["--box", "0,0,5,5", "--output", "out.txt"], "--output apply to whole-photo captioning"),
        (["--regions", "auto", "--ray", "--out", "parts"], "--regions apply to a run in one process, not to --ray"),
    ],
)
def test_cli_region_flags_refuse_what_does_not_apply(region_model, photo, flags, message, capsys):
    assert main(caption(photo, region_model, *flags)) == 2
    assert message in capsys.readouterr().err


def test_cli_regions_need_a_region_captioner_and_one_photo(saved_tiny_model, region_model, photo, capsys):
    assert main(caption(photo, saved_tiny_model, "--box", "0,0,5,5")) == 2
    err = capsys.readouterr().err
    assert f"--box needs a region captioner (an AlignCap folder: --model DIR); {saved_tiny_model} captions" in err
    other = photo.with_name("other.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(other)
    assert main(["caption", str(photo), str(other), "--model", str(region_model), "--regions", "auto"]) == 2
    assert "--regions describes regions of one photo, got 2 photos" in capsys.readouterr().err


def test_cli_whole_photo_with_a_region_captioner_describes_the_full_photo_box(captioner, region_model, photo, capsys):
    assert main(caption(photo, region_model)) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{photo}\t{captioner.caption([photo])[0]}"]
    assert "is a region captioner: it describes each whole photo (its full-photo box)" in captured.err


def test_cli_html_draws_each_box_with_its_caption(region_model, photo, images, tmp_path):
    page = tmp_path / "regions.html"
    flags = ["--box", "0,0,48,36", "--box", "20,10,96,72", "--box", "30,30,40,40", "--html", str(page)]
    assert main(caption(photo, region_model, *flags)) == 0
    html = page.read_text()
    boxes = re.findall(r'<g class="box"><rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', html)
    assert boxes == [("0", "0", "48", "36"), ("20", "10", "76", "62"), ("30", "30", "10", "10")]
    assert len(set(re.findall(r'<g class="box"><rect [^>]*stroke="(#[0-9a-f]{6})"', html))) == 3  # distinct colours
    captions = expected_captions(region_model, images[0], [*BOXES, [30, 30, 40, 40]])
    listed = re.findall(r'<li><span class="number" style="background:#[0-9a-f]{6}">(\d)</span>([^<]*) <span', html)
    assert listed == [(str(number), text) for number, text in enumerate(captions, 1)]
    assert html.count('<image href="data:image/jpeg;base64,') == 1 and 'viewBox="0 0 96 72"' in html  # one file
    assert "http" not in html


def test_cli_regions_auto_describes_the_proposed_regions(captioner, region_model, photo, tmp_path, capsys):
    page = tmp_path / "auto.html"
    assert main(caption(photo, region_model, "--regions", "auto", "--html", str(page))) == 0
    expected = captioner.caption_regions(photo)[0]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{','.join(f'{v:g}' for v in r.box)}\t{r.caption}" for r in expected]
    html = page.read_text()
    assert html.count('<g class="box">') == len(expected) and all(r.class_name in html for r in expected)
    assert main(caption(photo, region_model, "--regions", "auto", "--json")) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["class_name"], r["caption"]) for r in records] == [(r.class_name, r.caption) for r in expected]


def test_cli_boxes_are_in_the_photo_as_it_is_shown(region_model, images, tmp_path, capsys):
    """A file whose EXIF orientation turns it a quarter (stored 96x72, shown 72x96): boxes are in the shown photo."""
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    Image.fromarray(images[0]).save(path, exif=exif)
    assert main(caption(path, region_model, "--box", "0,0,72,96")) == 0
    assert capsys.readouterr().out.startswith("0,0,72,96\t")
    assert main(caption(path, region_model, "--box", "0,0,96,72")) == 2
    assert f"--box 0,0,96,72 reaches outside {path} (72x96 pixels)" in capsys.readouterr().err
