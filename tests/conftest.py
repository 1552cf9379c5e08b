"""Shared fixtures and helpers (no test module imports another): a tiny SOLI (fast on CPU, offline) and its
processor, training recipes, runs (step logs, a run stopped and resumed) and subprocesses, miniature caption datasets in
the four formats, an image-sensitive tiny SOLI for the ONNX tests (`he_initialised`: random encoders that tell images
apart), a tiny Llama, and a tiny AlignCap region captioner."""

from __future__ import annotations

import json
import os

# The tests never reach the Hub: a path that does not exist must fail at once, not after network retries.
# (Set before huggingface_hub is imported, which reads it once.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, MobileNetV2Config

import soli_hf
from soli_hf import (
    AlignCapConfig,
    AlignCapForConditionalGeneration,
    AlignCapProcessor,
    SoliConfig,
    SoliForConditionalGeneration,
    SoliImageProcessor,
    SoliProcessor,
    build_tokenizer,
)
from soli_hf.bench.latency import ORT_FP32, ORT_INT8, PYTORCH, SOLI
from soli_hf.bench.latency_report import soli_over_peer, target_check
from soli_hf.bench.peers import PEERS

if TYPE_CHECKING:
    import datasets

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


def assert_runs_the_current_code(model_dir: Path, pattern: str) -> list[Path]:
    """Every code file of a shipped model folder matching `pattern` equals soli_hf's own (a folder's copies drift
    when the package changes and the model is not re-shipped); returns the files compared."""
    package = Path(soli_hf.__file__).parent
    code_files = sorted(model_dir.glob(pattern))
    for code_file in code_files:
        assert code_file.read_text() == (package / code_file.name).read_text(), (
            f"{code_file.name} differs from soli_hf's: re-ship the model (scripts/ship_model.py)"
        )
    return code_files


def unreduced_pixels(image: Image.Image, image_processor: Any, degradation: str = "bicubic") -> np.ndarray:
    """(1, 3, S, S) `pixel_values` of a PIL image resized whole to the LR view in one resize (no draft decoding, no
    box averaging first): the reference the reduced path is held to."""
    from soli_hf.image_transforms_soli import normalize_pixels

    resampling = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[degradation]
    low = image.convert("RGB").resize((image_processor.image_size,) * 2, resampling)
    return normalize_pixels(low, image_processor.image_mean, image_processor.image_std)[None]


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


MAX_NEW_TOKENS = 10  # the image-sensitive tiny SOLI's generation_config.max_new_tokens


def he_initialised(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with He-initialised convolutions (drawn from the global random state, in module order): at
    MobileNetV2's default initialisation a random tiny network's activations fade to nothing, so every image would
    look the same to it."""
    for part in module.modules():
        if isinstance(part, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(part.weight, nonlinearity="relu")
    return module


def image_sensitive_tiny_model(tokenizer, inference_branches: str) -> SoliForConditionalGeneration:
    """A tiny SOLI whose captions depend on the image, with a non-default generation config.

    At its default initialisation the tiny backbone's activations vanish (memory ~1e-26), so every image would get
    the same caption; He-initialised convolutions keep them alive, and a smaller projection keeps the memory ~1.
    """
    torch.manual_seed(0)
    model = SoliForConditionalGeneration(
        tiny_config(len(tokenizer), initializer_range=0.3, inference_branches=inference_branches)
    ).eval()
    he_initialised(model.encoder.backbone)
    with torch.no_grad():
        model.encoder.projection.weight.mul_(0.1)
    model.generation_config.no_repeat_ngram_size = 2
    model.generation_config.suppress_tokens = [tokenizer.unk_token_id]
    model.generation_config.max_new_tokens = MAX_NEW_TOKENS
    return model


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory, tokenizer, processor) -> Path:
    """A tiny SOLI saved with its processor, as a user's folder would be."""
    torch.manual_seed(0)
    model = SoliForConditionalGeneration(tiny_config(len(tokenizer), initializer_range=0.3)).eval()
    folder = tmp_path_factory.mktemp("soli_tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def saved_image_sensitive_model(tmp_path_factory, tokenizer, processor) -> Path:
    """A tiny SOLI whose captions depend on the image (`image_sensitive_tiny_model`, both branches), saved with its
    processor."""
    folder = tmp_path_factory.mktemp("soli_image_sensitive")
    image_sensitive_tiny_model(tokenizer, "both").save_pretrained(folder)
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
        data=str(data),
        model_config=str(model_config),
        output_dir=str(output_dir),
        vocab_min_frequency=1,
        num_epochs=2,
        batch_size=4,
        captions_per_image=2,
        eval_batch_size=8,
        warmup_steps=2,
        save_every_steps=2,
        learning_rate=3e-3,
        report_to="none",
        max_caption_tokens=8,
        log_every_steps=1,
    )
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


def step_records(output_dir: Path) -> list[dict]:
    """The step records of a run's `losses.jsonl`, in order."""
    return [json.loads(line) for line in (output_dir / "losses.jsonl").read_text().splitlines()]


class Interrupted(Exception):
    """Stands for a kill after a step was logged."""


def stop_after_step(monkeypatch: pytest.MonkeyPatch, step: int, launch: Callable[[], Any]) -> None:
    """Run `launch()` (a training run) and stop it as a kill would, right after step `step` was logged (before that
    step's checkpoint is written)."""
    import soli_hf.training.loop as loop

    log_step = loop.log_step

    def log_and_stop(accelerator, output_dir, record, every) -> None:
        log_step(accelerator, output_dir, record, every)
        if record["step"] == step:
            raise Interrupted

    monkeypatch.setattr(loop, "log_step", log_and_stop)
    with pytest.raises(Interrupted):
        launch()
    monkeypatch.setattr(loop, "log_step", log_step)


def assert_exact_resume(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    recipe: Callable[..., Any],
    *,
    stop_step: int,
    steps: int,
    losses: Sequence[str],
    scores: Sequence[str],
) -> None:
    """Train `recipe(output_dir, **overrides)` unbroken, and again stopped right after step `stop_step` was logged
    (`stop_after_step`: its newest checkpoint must be that step's) and resumed from there (`resume=True`). The
    resumed run must log each of its `steps` steps once, with the unbroken run's `losses` and learning rate step for
    step, and end with its dev `scores` epoch for epoch (within 1e-6: not bit-exact)."""
    from soli_hf.training import train

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    train(recipe(whole))
    stop_after_step(monkeypatch, stop_step, lambda: train(recipe(stopped)))
    assert sorted(path.name for path in (stopped / "checkpoints").iterdir())[-1] == f"step-{stop_step:08d}"
    train(recipe(stopped, resume=True))

    expected, got = step_records(whole), step_records(stopped)
    assert [record["step"] for record in got] == [record["step"] for record in expected] == list(range(steps))
    for before, after in zip(expected, got, strict=True):
        for key in (*losses, "lr"):
            assert after[key] == pytest.approx(before[key], abs=1e-6), (before["step"], key)
    history = [json.loads((run / "model" / "metrics.json").read_text())["history"] for run in (whole, stopped)]
    for key in scores:
        assert [entry[key] for entry in history[1]] == pytest.approx([entry[key] for entry in history[0]], abs=1e-6)


# ------------------------------------------- a tiny AlignCap region captioner (test_aligncap, test_region_caption_cli)

ALIGNCAP_TAGS = ["dog", "man", "grass", "bike", "snow"]


def tiny_text_config(vocab_size: int, **overrides: object) -> LlamaConfig:
    """A two-layer Llama 16 wide (the language model of the tiny AlignCap and dual-encoder Q-Former)."""
    values = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_aligncap_config(vocab_size: int, decoder_type: str = "lstm", **overrides: object) -> AlignCapConfig:
    """Both encoders at depth 0.25 on 64x64, a 2x2 RoIAlign, 16-wide region tokens, a tiny LSTM or Llama."""
    values = dict(
        global_encoder_config=MobileNetV2Config(depth_multiplier=0.25, output_stride=16),
        dense_encoder_config=MobileNetV2Config(depth_multiplier=0.25, output_stride=8, num_labels=21),
        decoder_type=decoder_type,
        text_config=tiny_text_config(vocab_size),
        global_image_size=64,
        dense_image_size=64,
        roi_output_size=2,
        region_hidden_size=16,
        region_num_heads=2,
        region_dropout=0.0,
        tag_words=ALIGNCAP_TAGS,
        projection_dim=8,
        hidden_size=32,
        embedding_size=16,
        attention_size=16,
        decoder_dropout=0.0,
        vocab_size=vocab_size,
        initializer_range=0.3,  # peaked distributions, so that greedy and beam search can differ
    )
    values.update(overrides)
    return AlignCapConfig(**values)


def tiny_aligncap(vocab_size: int, decoder_type: str = "lstm", **overrides: object) -> AlignCapForConditionalGeneration:
    """A random tiny region captioner whose frozen encoders tell images apart (He-initialised convolutions)."""
    torch.manual_seed(0)
    model = AlignCapForConditionalGeneration(tiny_aligncap_config(vocab_size, decoder_type, **overrides)).eval()
    he_initialised(model.global_encoder)
    he_initialised(model.dense_encoder)
    return model


def aligncap_processor(tokenizer, decoder_type: str = "lstm", image_size: int = 64) -> AlignCapProcessor:
    return AlignCapProcessor(SoliImageProcessor(image_size=image_size), tokenizer, decoder_type=decoder_type)


# ---------------------------------------------------- miniature caption datasets (test_data, test_bad_inputs_data)

F8K_IDS = ["1000_a", "1001_b", "1002_c", "1003_d"]  # train: the first three, dev: the last
F8K_TRAIN, F8K_DEV = F8K_IDS[:3], F8K_IDS[3:]
CAPTIONS_PER_IMAGE = 2


def write_image(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    """Write a small noisy RGB image (format from the suffix), so JPEGs have real entropy data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncate(path: Path) -> None:
    """Cut a file to half its length (a copy or a write that stopped half way)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def caption(image_id: str, n: int) -> str:
    return f"A caption number {n} of {image_id} ."


def token_line(image_id: str, n: int) -> str:
    return f"{image_id}.jpg#{n}\t{caption(image_id, n)}"


def token_line_no(image_id: str, n: int) -> int:
    """1-based line of a caption in the generated Flickr8k.token.txt."""
    return F8K_IDS.index(image_id) * CAPTIONS_PER_IMAGE + n + 1


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.fixture
def flickr8k(tmp_path: Path) -> Path:
    """A miniature official Flickr8k layout: 3 train + 1 dev images, 2 captions each, no test split."""
    root = tmp_path / "flickr8k"
    for image_id in F8K_IDS:
        write_image(root / "Flicker8k_Dataset" / f"{image_id}.jpg")
    text = root / "Flickr8k_text"
    write_lines(text / "Flickr8k.token.txt", [token_line(i, n) for i in F8K_IDS for n in range(CAPTIONS_PER_IMAGE)])
    write_lines(text / "Flickr_8k.trainImages.txt", [f"{i}.jpg" for i in F8K_TRAIN])
    write_lines(text / "Flickr_8k.devImages.txt", [f"{i}.jpg" for i in F8K_DEV])
    return root


def f8k_image(root: Path, image_id: str) -> Path:
    return root / "Flicker8k_Dataset" / f"{image_id}.jpg"


def f8k_token_file(root: Path) -> Path:
    return root / "Flickr8k_text" / "Flickr8k.token.txt"


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO captions JSON with its images in an ``images/`` folder."""
    images = [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}]
    annotations = [
        {"id": 1, "image_id": 9, "caption": "b one"},
        {"id": 2, "image_id": 7, "caption": "a one"},
        {"id": 3, "image_id": 9, "caption": "b two"},
    ]
    for image in images:
        write_image(tmp_path / "images" / image["file_name"])
    path = tmp_path / "annotations" / "captions_train.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def karpathy_image(name: str, split: str, captions: list[str], **extra) -> dict:
    return {"filename": name, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in captions], **extra}


@pytest.fixture
def karpathy(tmp_path: Path) -> Path:
    """A Karpathy dataset_*.json; the COCO-style entries have a filepath and a cocoid."""
    images = [
        karpathy_image("tr.jpg", "train", ["train one", "train two"], imgid=0),
        karpathy_image("rv.jpg", "restval", ["restval one"], imgid=1, filepath="val2014", cocoid=42),
        karpathy_image("va.jpg", "val", ["val one"], imgid=2),
        karpathy_image("te.jpg", "test", ["test one"], imgid=3),
    ]
    for image in images:
        write_image(tmp_path / image.get("filepath", "") / image["filename"])
    path = tmp_path / "dataset_tiny.json"
    path.write_text(json.dumps({"images": images, "dataset": "tiny"}), encoding="utf-8")
    return path


def write_metadata(folder: Path, rows: list[dict | str]) -> None:
    """Write metadata.jsonl (dict rows as JSON, str rows verbatim) and a PNG for each file_name."""
    for row in rows:
        if isinstance(row, dict) and not (folder / row["file_name"]).exists():
            write_image(folder / row["file_name"])
    write_lines(folder / "metadata.jsonl", [json.dumps(row) if isinstance(row, dict) else row for row in rows])


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """An image folder with a root metadata.jsonl whose rows for x.png are to be merged."""
    root = tmp_path / "folder"
    write_metadata(
        root,
        [
            {"file_name": "x.png", "captions": ["x one", "x two"]},
            {"file_name": "sub/y.png", "text": "y one"},
            {"file_name": "x.png", "text": "x three"},
        ],
    )
    return root


def rows_by_id(dataset: datasets.Dataset) -> dict[str, list[str]]:
    return dict(zip(dataset["image_id"], dataset["captions"], strict=True))


# --- a latency report as scripts/benchmark.py latency writes it (test_latency, test_model_card)


def _row(backend: str, mode: str | None, threads: int, median: float, system: str = SOLI) -> dict:
    return {
        "system": system,
        "backend": backend,
        "inference_branches": mode,
        "threads": threads,
        "median_ms": median,
        "p90_ms": 1.2 * median,
        "measurements": 100,
        "warmup": 3,
        "caption_tokens": 12,
        "size_mib": 20.0,
        "size_source": "",
        "parameters": 200_000_000 if mode is None else None,
        "peak_rss_mib": 150.0,
        "torch_loaded": backend == PYTORCH,
        "per_image_ms": [median],
    }


def sample_report() -> dict:
    """A report as scripts/benchmark.py latency writes it: int8 one thread meets the target in lr only."""
    soli = [_row(PYTORCH, "both", 1, 40.0), _row(ORT_INT8, "both", 1, 16.0), _row(ORT_INT8, "lr", 1, 4.5)]
    soli += [_row(ORT_FP32, "lr", 1, 9.0), _row(ORT_INT8, "lr", 2, 6.0)]
    peers = [_row(PYTORCH, None, t, ms, "blip-base") for t, ms in ((1, 2000.0), (2, 1500.0))]
    return {
        "machine": {"processor": "x86_64", "cpus": 2, "cpu_model": "Some CPU"},
        "tokens": 12,
        "tokens_note": "about the mean Flickr8k caption",
        "target": target_check(soli),
        "results": soli,
        "peers": [p | {"like": PEERS["blip-base"].like, "soli_over_peer": soli_over_peer(soli, p)} for p in peers],
    }
