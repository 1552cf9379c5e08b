"""The shipped default model (models/soli-flickr8k-lr64): complete, current code, loads every supported way, and
the README's main command (`make demo` -> scripts/demo.py) captions the sample photos with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_runs_the_current_code
from transformers import AutoModel, pipeline

from soli_hf import SoliForConditionalGeneration, SoliProcessor
from soli_hf.captioner import CHECKOUT_MODEL_DIR as DEFAULT_MODEL_DIR
from soli_hf.cli import main
from soli_hf.hub import files_to_publish

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_folder_is_complete_small_and_runs_the_current_code() -> None:
    assert DEFAULT_MODEL_DIR == ROOT / "models" / "soli-flickr8k-lr64"
    files = files_to_publish(DEFAULT_MODEL_DIR)  # raises if anything the Hub copy needs is missing
    assert sum((DEFAULT_MODEL_DIR / name).stat().st_size for name in files) < 40 * 2**20
    assert_runs_the_current_code(DEFAULT_MODEL_DIR, "*_soli.py")


def test_shipped_model_captions_a_photo_with_its_defaults() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.chelsea()  # a cat, 300x451
    model = AutoModel.from_pretrained(DEFAULT_MODEL_DIR).eval()
    processor = SoliProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    assert isinstance(model, SoliForConditionalGeneration)
    assert model.generation_config.num_beams == 3
    assert model.generation_config.suppress_tokens == [processor.tokenizer.unk_token_id]
    ids = model.generate(**processor(images=photo, return_tensors="pt"))
    caption = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert 3 <= len(caption.split()) <= 20 and "<unk>" not in caption
    assert pipeline("image-to-text", model=str(DEFAULT_MODEL_DIR))(photo) == [{"generated_text": caption}]


def test_soli_caption_defaults_to_the_shipped_model(tmp_path: Path, capsys) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.png")
    assert main(["caption", str(tmp_path / "coffee.png")]) == 0
    path, caption = capsys.readouterr().out.strip().split("\t")
    assert path == str(tmp_path / "coffee.png") and len(caption.split()) >= 3


@pytest.mark.slow
def test_demo_captions_the_sample_photos(tmp_path: Path) -> None:
    pytest.importorskip("skimage.data")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--num-beams", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    photos = sorted(["astronaut", "chelsea", "coffee", "rocket", "camera"])
    assert [Path(line.split("\t")[0]).stem for line in lines] == photos
    assert all(len(line.split("\t")[1].split()) >= 3 for line in lines)
    assert (tmp_path / "outputs" / "demo.html").read_text().count("data:image/png;base64,") == 5


def test_model_card_is_shipped_and_copied() -> None:
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert card == (ROOT / "model_cards" / "soli-flickr8k-lr64.md").read_text()
    assert "pipeline_tag: image-to-text" in card and "Flickr8k" in card and "${" not in card
