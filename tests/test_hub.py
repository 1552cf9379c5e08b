"""Publishing: exactly which files `soli push` sends (HfApi patched, offline), and that those files alone load
with trust_remote_code and the pipeline where soli_hf is not importable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_without_soli_hf
from huggingface_hub.utils import filter_repo_objects
from PIL import Image

from soli_hf import SoliForConditionalGeneration, SoliProcessor
from soli_hf.cli import main
from soli_hf.hub import files_to_publish

REMOTE_CAPTION = """
import json, sys
from transformers import AutoModel, pipeline
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
captioner = pipeline("image-to-text", model=sys.argv[1], trust_remote_code=True)
out = captioner(sys.argv[2], generate_kwargs={"num_beams": 2, "max_new_tokens": 6})
print(json.dumps({"class": type(model).__name__, "caption": out[0]["generated_text"]}))
"""


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls and which files upload_folder would send."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, folder_path: str, allow_patterns: list[str], **kwargs) -> str:
        present = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        sent = list(filter_repo_objects(present, allow_patterns=allow_patterns))  # what huggingface_hub would send
        self.calls.append(("upload_folder", {"folder_path": folder_path, "sent": sent, **kwargs}))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


@pytest.fixture
def publishable(tmp_path: Path, saved_tiny_model: Path) -> Path:
    folder = tmp_path / "soli-tiny"
    shutil.copytree(saved_tiny_model, folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny SOLI\n")
    (folder / "metrics.json").write_text("{}")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.bin").write_bytes(b"\0")
    (folder / ".cache").write_text("x")
    (folder / "notes.txt").write_text("private notes")
    return folder


@pytest.mark.slow
def test_push_sends_exactly_the_model_files(publishable: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr("soli_hf.hub.HfApi", RecordingHfApi)
    RecordingHfApi.calls = []
    code = main(["push", str(publishable), "me/soli-tiny", "--private", "--revision", "v1", "--commit-message", "hi"])
    assert code == 0 and "me/soli-tiny/commit/0" in capsys.readouterr().out
    (create, create_kwargs), (branch, branch_kwargs), (upload, upload_kwargs) = RecordingHfApi.calls
    assert create == "create_repo" and create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert branch == "create_branch" and branch_kwargs["branch"] == "v1"
    assert upload_kwargs["revision"] == "v1" and upload_kwargs["commit_message"] == "hi"
    expected = [
        "README.md",
        "config.json",
        "configuration_soli.py",
        "generation_config.json",
        "image_processing_soli.py",
        "image_transforms_soli.py",
        "losses_soli.py",
        "metrics.json",
        "model.safetensors",
        "modeling_soli.py",
        "pipeline_soli.py",
        "processing_soli.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert upload_kwargs["sent"] == expected

    # those files alone, where soli_hf cannot be imported, load with trust_remote_code and caption alike
    hub_copy = tmp_path / "as_on_the_hub"
    hub_copy.mkdir()
    for name in upload_kwargs["sent"]:
        shutil.copy(publishable / name, hub_copy / name)
    image_file = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image_file)
    remote = run_without_soli_hf(REMOTE_CAPTION, str(hub_copy), str(image_file), cwd=tmp_path)
    model = SoliForConditionalGeneration.from_pretrained(publishable).eval()
    processor = SoliProcessor.from_pretrained(publishable)
    ids = model.generate(**processor(images=str(image_file), return_tensors="pt"), num_beams=2, max_new_tokens=6)
    assert remote == {
        "class": "SoliForConditionalGeneration",
        "caption": processor.batch_decode(ids, skip_special_tokens=True)[0],
    }


def test_push_without_a_token_says_so_and_sends_nothing(publishable: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(publishable.parent / "empty_hf_home"))
    monkeypatch.setattr("soli_hf.hub.get_token", lambda: None)
    monkeypatch.setattr("soli_hf.hub.HfApi", RecordingHfApi)
    RecordingHfApi.calls = []
    assert main(["push", str(publishable), "me/soli-tiny"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert RecordingHfApi.calls == []


def test_incomplete_folders_are_refused_before_sending(publishable: Path, capsys) -> None:
    (publishable / "README.md").unlink()
    with pytest.raises(ValueError, match="missing README.md.*model card"):
        files_to_publish(publishable)
    (publishable / "README.md").write_text("card")
    (publishable / "modeling_soli.py").unlink()
    with pytest.raises(ValueError, match="modeling_soli.py"):
        files_to_publish(publishable)
    assert main(["push", str(publishable), "me/x", "--dry-run"]) == 2
    assert "modeling_soli.py" in capsys.readouterr().err
