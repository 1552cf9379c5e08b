"""Shared fixtures: a tiny SOLI (fast on CPU, offline) and its processor."""

from __future__ import annotations

import json
import os

# The tests never reach the Hub: a path that does not exist must fail at once, not after network retries.
# (Set before huggingface_hub is imported, which reads it once.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import MobileNetV2Config

from soli_hf import SoliConfig, SoliForConditionalGeneration, SoliImageProcessor, SoliProcessor, build_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FLICKR8K = SHARED / "data" / "flickr8k"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224"

TINY_CAPTIONS = [
    "a dog runs on the grass",
    "a man rides a red bike",
    "two dogs play in the snow",
    "a girl in a blue dress jumps",
    "a boy swims in the lake",
    "a black cat sleeps on a bed",
    "people walk down a busy street",
    "a bird flies over the water",
]


def tiny_config(vocab_size: int, **overrides: object) -> SoliConfig:
    """A SOLI small enough to train in seconds on a CPU (same architecture, narrower layers)."""
    values = dict(
        backbone_config=MobileNetV2Config(depth_multiplier=0.25, finegrained_output=False, output_stride=16),
        hidden_size=32,
        embedding_size=16,
        attention_size=16,
        projection_dim=8,
        sr_hidden_channels=8,
        decoder_dropout=0.0,
        freeze_backbone_batch_norm=False,  # a backbone trained from scratch needs batch statistics
        vocab_size=vocab_size,
    )
    values.update(overrides)
    return SoliConfig(**values)


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
SHAPES = ("square", "stripe")


def write_caption_folder(root: Path, per_split: dict[str, int]) -> Path:
    """An image folder with train/ and dev/ splits of generated photos, each with three captions."""
    rng = np.random.default_rng(0)
    for split, count in per_split.items():
        folder = root / split
        folder.mkdir(parents=True)
        lines = []
        for index in range(count):
            colour = list(COLOURS)[index % len(COLOURS)]
            shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
            pixels = np.full((96, 96, 3), 245, dtype=np.uint8)
            if shape == "square":
                pixels[24:72, 24:72] = COLOURS[colour]
            else:
                pixels[40:56, :] = COLOURS[colour]
            noisy = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{split}{index}.png")
            captions = [f"a {colour} {shape} on white", f"one {colour} {shape}", f"a {shape} that is {colour}"]
            lines.append(json.dumps({"file_name": f"{split}{index}.png", "captions": captions}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(TINY_CAPTIONS, min_frequency=1)


@pytest.fixture(scope="session")
def processor(tokenizer) -> SoliProcessor:
    return SoliProcessor(image_processor=SoliImageProcessor(), tokenizer=tokenizer)


@pytest.fixture
def tiny_model(tokenizer) -> SoliForConditionalGeneration:
    """A randomly initialised tiny SOLI with peaked output distributions (so that beams differ), in eval mode."""
    torch.manual_seed(0)
    return SoliForConditionalGeneration(tiny_config(len(tokenizer), initializer_range=0.3)).eval()


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    """Eight clearly different synthetic photos (uint8 HxWx3): one colour each, a vertical gradient, noise."""
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)]
    colours += [(220, 30, 220), (30, 220, 220), (240, 240, 240), (20, 20, 20)]
    gradient = np.linspace(0.4, 1.0, 72)[:, None, None]
    return [
        np.clip(np.array(colour, dtype=np.float64) * gradient + rng.normal(0, 10, (72, 96, 3)), 0, 255).astype(np.uint8)
        for colour in colours
    ]


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory, tokenizer, processor) -> Path:
    """A tiny SOLI saved with its processor, as a user's folder would be."""
    torch.manual_seed(0)
    model = SoliForConditionalGeneration(tiny_config(len(tokenizer), initializer_range=0.3)).eval()
    folder = tmp_path_factory.mktemp("soli_tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model_config(tmp_path: Path) -> Path:
    """A tiny SoliConfig JSON for training runs (the vocabulary size is set from the tokenizer at training time)."""
    path = tmp_path / "tiny_config.json"
    tiny_config(10).to_json_file(path)
    return path


def tiny_recipe(data: Path, model_config: Path, output_dir: Path, **overrides: object) -> Any:
    """A `TrainingConfig` that trains the tiny SOLI in seconds (batches of 4, a checkpoint every 2 steps)."""
    from soli_hf.training import TrainingConfig

    values = dict(
        data=str(data), model_config=str(model_config), output_dir=str(output_dir), vocab_min_frequency=1,
        num_epochs=2, batch_size=4, captions_per_image=2, eval_batch_size=8, warmup_steps=2, save_every_steps=2,
        learning_rate=3e-3, report_to="none", max_caption_tokens=8, log_every_steps=1,
    )  # fmt: skip
    values.update(overrides)
    return TrainingConfig(**values)


def recipe_flags(config: Any) -> list[str]:
    """`config` as command-line flags of scripts/train.py (only the fields that differ from the defaults)."""
    from soli_hf.training import TrainingConfig

    defaults, flags = TrainingConfig().to_dict(), []
    for name, value in config.to_dict().items():
        if value != defaults[name]:
            flags += [f"--{name}", str(value)]
    return flags


def subprocess_env() -> dict[str, str]:
    """The environment of a training subprocess: one thread, offline, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_python(script: str, *args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> Any:
    """Run a Python script in a subprocess (offline) and return the JSON it printed on its last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", **(extra_env or {})}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_without_soli_hf(script: str, *args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> Any:
    """`run_python` where `import soli_hf` fails (as where soli_hf is not installed)."""
    return run_python("import sys\nsys.modules['soli_hf'] = None\n" + script, *args, cwd=cwd, extra_env=extra_env)
