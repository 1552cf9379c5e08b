"""The shipped region captioner (models/aligncap-flickr30k-lstm): current code, loads as a `RegionCaptioner`, and
describes given and proposed boxes of a photo it never saw."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_runs_the_current_code

from soli_hf.captioner import RegionCaptioner, load_captioner

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "aligncap-flickr30k-lstm"


def test_the_region_folder_runs_the_current_code() -> None:
    code_files = assert_runs_the_current_code(MODEL_DIR, "*.py")
    assert any(path.name == "modeling_aligncap.py" for path in code_files)


def test_the_region_model_describes_given_and_proposed_boxes() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = Image.fromarray(skimage_data.astronaut())  # 512x512, not a Flickr photo
    regions = load_captioner(MODEL_DIR)
    assert isinstance(regions, RegionCaptioner)
    (given,) = regions.caption_regions(photo, [[150, 0, 400, 250], [0, 0, 512, 512]])
    assert [tuple(region.box) for region in given] == [(150, 0, 400, 250), (0, 0, 512, 512)]
    assert all(region.caption.strip() for region in given)
    (proposed,) = regions.caption_regions([photo])
    assert proposed and all(region.caption.strip() for region in proposed)
