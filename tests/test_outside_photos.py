"""The photos outside Flickr8k (benchmarks/photos_outside_flickr) and their report, model beside model
(`soli_hf.bench.outside_photos`, `python scripts/benchmark.py photos`)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from conftest import write_image
from PIL import Image

from soli_hf.bench.outside_photos import ReportModel, caption_photo_set, report_models, write_outside_photos_report
from soli_hf.bench.sample_photos import OUTSIDE_FLICKR_PHOTOS, read_photo_set

ROOT = Path(__file__).resolve().parents[1]
ENTRY = {
    "shows": "a test pattern",
    "package": "soli-hf tests",
    "version": "0",
    "original_path": "-",
    "licence": "CC0-1.0",
    "attribution": "none",
}


def write_photo_set(folder: Path, names: list[str]) -> Path:
    """A photo set of small generated photos (the files of `names` that do not exist yet are made)."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        if not (folder / "photos" / name).exists():
            write_image(folder / "photos" / name, size=(40 + 8 * index, 30))
    photos = [{"file": f"photos/{name}", **ENTRY} for name in names]
    (folder / "photos.json").write_text(json.dumps({"photos": photos}))
    return folder


@pytest.fixture(scope="module")
def second_tiny_model(saved_image_sensitive_model) -> Path:
    """A tiny SOLI whose captions depend on the image, saved with its processor (conftest's)."""
    return saved_image_sensitive_model


def test_the_manifest_lists_every_committed_photo_and_each_opens() -> None:
    photos = read_photo_set()
    committed = sorted(path.name for path in (OUTSIDE_FLICKR_PHOTOS / "photos").iterdir())
    assert sorted(Path(photo.file).name for photo in photos) == committed
    assert len(photos) >= 25 and sum(photo.package != "scikit-image" for photo in photos) >= 20
    sources = (OUTSIDE_FLICKR_PHOTOS / "SOURCES.md").read_text(encoding="utf-8")
    for photo in photos:
        assert photo.path.is_file() and photo.licence and photo.attribution and photo.original_path
        assert f"`{Path(photo.file).name}`" in sources
        image = photo.open()
        assert image.mode == "RGB" and max(image.size) <= 320
    assert sum(photo.path.stat().st_size for photo in photos) < 3 * 2**20


def test_the_report_has_each_models_caption_of_each_photo(
    tmp_path: Path, saved_tiny_model: Path, second_tiny_model: Path
) -> None:
    photos = read_photo_set(write_photo_set(tmp_path / "set", ["a.png", "b.png", "c.png"]))
    models = report_models([("model", str(saved_tiny_model)), ("model", str(second_tiny_model))], ["old", "new"])
    result = caption_photo_set(models, photos, batch_size=2)
    report = write_outside_photos_report(result, tmp_path / "out" / "report.json")

    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert [model["name"] for model in report["models"]] == ["old", "new"]
    assert report["models"][1]["decoding"]["max_new_tokens"] == 10  # the second model's own generation config
    assert [photo["file"] for photo in report["photos"]] == ["photos/a.png", "photos/b.png", "photos/c.png"]
    for photo in report["photos"]:
        assert set(photo["captions"]) == {"old", "new"}
        assert all(isinstance(caption, str) for caption in photo["captions"].values())
    for model in report["models"]:
        assert model["distinct_captions"] == len({photo["captions"][model["name"]] for photo in report["photos"]})
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| photo | old | new |" in markdown and "distinct captions" in markdown
    assert all(f"`{name}`: a test pattern" in markdown for name in "abc")
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('class="card"') == 3
    assert page.count("data:image/jpeg;base64,") == 3 and page.count("data:image/png;base64,") == 3
    assert all(f"<b>{name}</b>" in page for name in ("old", "new"))
    assert all(image.size == (64, 64) for image in result.lr_images)


def test_the_script_names_the_columns_in_the_order_given(
    tmp_path: Path, saved_tiny_model: Path, second_tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_photo_set(tmp_path / "set", ["a.png", "b.png"])
    out = tmp_path / "report.json"
    argv = ["benchmark.py", "photos", "--model", str(second_tiny_model), "--model", str(saved_tiny_model)]
    monkeypatch.setattr(sys, "argv", [*argv, "--photos", str(folder), "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="__main__")
    report = json.loads(out.read_text())
    assert [model["name"] for model in report["models"]] == [second_tiny_model.name, saved_tiny_model.name]
    assert out.with_suffix(".md").is_file() and out.with_suffix(".html").is_file()


@pytest.mark.parametrize("problem", ["missing", "not an image"])
def test_a_photo_that_cannot_be_read_is_named(tmp_path: Path, problem: str) -> None:
    folder = write_photo_set(tmp_path / "set", ["a.png", "bad.jpg"])
    if problem == "missing":
        (folder / "photos" / "bad.jpg").unlink()
    else:
        (folder / "photos" / "bad.jpg").write_bytes(b"not a jpeg")
    photos = read_photo_set(folder)
    # The photos are read before any model is loaded: a model that does not exist is never reached.
    with pytest.raises(ValueError, match=r"bad\.jpg: (image file not found|not an image file)"):
        caption_photo_set([ReportModel("any", "model", str(tmp_path / "no-model"))], photos)


def test_a_manifest_entry_without_a_field_is_named(tmp_path: Path) -> None:
    folder = write_photo_set(tmp_path / "set", ["a.png"])
    (folder / "photos.json").write_text(json.dumps({"photos": [{"file": "photos/a.png"}]}))
    with pytest.raises(ValueError, match=r"photos\.json: photo 0 lacks \['shows'"):
        read_photo_set(folder)
    with pytest.raises(ValueError, match="no photo manifest"):
        read_photo_set(tmp_path)


def test_model_names_default_to_the_folder_and_must_be_unique() -> None:
    models = report_models([("model", "runs/old/model/"), ("onnx", "onnx/new")])
    assert [(model.name, model.backend) for model in models] == [("model", "model"), ("new", "onnx")]
    with pytest.raises(ValueError, match="two models named"):
        report_models([("model", "a/model"), ("model", "b/model")])
    with pytest.raises(ValueError, match="one --name per model"):
        report_models([("model", "a"), ("model", "b")], ["only one"])
    with pytest.raises(ValueError, match="at least one model"):
        report_models([])


def test_the_scikit_image_sample_photos_are_unchanged() -> None:
    pytest.importorskip("skimage.data")
    from soli_hf.bench.sample_photos import load_sample_photos

    photos = load_sample_photos()
    assert list(photos) == ["astronaut", "chelsea", "coffee", "rocket", "camera"]
    assert all(isinstance(photo, Image.Image) for photo in photos.values())
