"""The `soli` command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soli_hf import SoliForConditionalGeneration, SoliProcessor
from soli_hf.cli import main
from soli_hf.cli.caption import find_images


def test_info_reports_parameters_flops_vocab_and_input_size(saved_tiny_model, capsys, tokenizer):
    assert main(["info", "--model", str(saved_tiny_model), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == len(tokenizer)
    assert summary["input_size"] == [3, 64, 64]
    assert summary["parameters"]["total"] > summary["parameters"]["backbone"] > 0
    flops = summary["flops_per_image"]
    assert 0 < flops["lr"]["total"] < flops["both"]["total"]
    assert main(["info", "--model", str(saved_tiny_model)]) == 0
    assert "inference_branches=lr" in capsys.readouterr().out


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (90, 70)), ("b.jpg", (40, 40)), ("c.PNG", (300, 200))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_find_images_from_files_folders_and_globs(photo_folder: Path) -> None:
    assert [p.name for p in find_images([str(photo_folder)])] == ["a.png", "b.jpg", "c.PNG"]
    mixed = find_images([str(photo_folder / "b.jpg"), str(photo_folder / "*.png")])
    assert [p.name for p in mixed] == ["b.jpg", "a.png"]
    assert len(find_images([str(photo_folder / "a.png"), str(photo_folder)])) == 3  # each file once
    with pytest.raises(ValueError, match="missing.jpg: no such file"):
        find_images([str(photo_folder / "missing.jpg")])
    with pytest.raises(ValueError, match=r"\*.gif: no image files"):
        find_images([str(photo_folder / "*.gif")])


def test_caption_prints_path_and_caption_lines(saved_tiny_model, photo_folder, capsys, tmp_path: Path) -> None:
    model = SoliForConditionalGeneration.from_pretrained(saved_tiny_model).eval()
    processor = SoliProcessor.from_pretrained(saved_tiny_model)
    args = ["caption", str(photo_folder), "--model", str(saved_tiny_model), "--max-new-tokens", "5"]
    assert main([*args, "--html", str(tmp_path / "page.html")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(photo_folder / n) for n in ("a.png", "b.jpg", "c.PNG")]
    inputs = processor.image_processor(str(photo_folder / "c.PNG"), return_tensors="pt")
    # no --num-beams: the model's generation config decides, as generate() with no setting does
    expected = processor.batch_decode(model.generate(**inputs, max_new_tokens=5), skip_special_tokens=True)
    assert lines[2].split("\t")[1] == expected[0]
    page = (tmp_path / "page.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "c.PNG" in page

    assert main([*args, "--json", "--num-beams", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON Lines
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.jpg", "c.PNG"]


def test_caption_skips_unreadable_files_and_names_them(saved_tiny_model, photo_folder, capsys) -> None:
    (photo_folder / "broken.jpg").write_bytes(b"not a jpeg")
    code = main(["caption", str(photo_folder), "--model", str(saved_tiny_model), "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.strip().splitlines()) == 3
    assert f"soli caption: {photo_folder / 'broken.jpg'}: not an image file PIL can read, skipped" in captured.err


def test_caption_errors_name_the_problem(photo_folder, tmp_path: Path, capsys) -> None:
    assert main(["caption", str(photo_folder / "nope.png"), "--model", str(tmp_path)]) == 2
    assert "nope.png: no such file or folder" in capsys.readouterr().err
