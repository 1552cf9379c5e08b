"""Data-parallel training (issue 16): two CPU processes (`torchrun`, gloo) on tiny data. Each process trains on half
of each epoch's batches, only the main process logs, every process writes into one checkpoint folder, a 2-process
run resumes exactly, and its losses are those of one process at twice the batch.

Why the losses match only within `TOLERANCE`: the two runs compute the same float32 sums in another order (two
per-process means averaged, by DDP for the gradients and by the loop for the logged losses, against one mean over
the whole batch; batches of another shape may take other CPU kernels). That is rounding: at most 1e-7 of a loss
over the run's 8 Adam steps here (measured), and 1e-5 leaves it a hundredfold margin while a batch seen twice or
missed, one process's loss logged alone or a learning-rate schedule of the wrong length differ far more. The recipe
keeps out what differs by design between the two: batch norm statistics and the contrastive loss's negatives are
per process under DDP, so the backbone's batch norm is frozen and the contrastive weight is 0, and every image
contributes the same number of caption tokens (all three of its captions, equally long for every image).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import recipe_flags, subprocess_env, tiny_config, tiny_recipe, write_caption_folder
from safetensors.torch import load_file
from transformers import MobileNetV2Config, MobileNetV2Model

from soli_hf.training import TrainingConfig, train
from soli_hf.training.checkpointing import ResumeError, choose_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"rel": 1e-5, "abs": 1e-6}
PER_PROCESS_BATCH = 2
TRAIN_IMAGES = 16  # 2 processes x 2 images: 4 steps an epoch; one process at batch 4: also 4
COMPARED = ("loss", "caption_loss", "sr_loss", "distillation_loss", "curriculum_alpha", "lr")
# what accelerate.save_state and checkpointing.py write for one process (names unchanged since before issue 16)
ONE_PROCESS_CHECKPOINT = {
    "model.safetensors",
    "optimizer.bin",
    "random_states_0.pkl",
    "custom_checkpoint_0.pkl",  # the learning-rate schedule
    "custom_checkpoint_1.pkl",  # the EMA
    "trainer_state.json",
    "checkpoint.json",
}


def step_records(output_dir: Path) -> dict[int, dict]:
    """The logged record of each step, checking that each step is logged once, in order."""
    records = [json.loads(line) for line in (output_dir / "losses.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {record["step"]: record for record in records}


def history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "model" / "metrics.json").read_text())["history"]


def save_teacher(folder: Path) -> Path:
    """A MobileNetV2 with the tiny SOLI backbone's channels, as a distillation teacher folder."""
    torch.manual_seed(0)
    config = MobileNetV2Config(depth_multiplier=0.25, finegrained_output=False, output_stride=16, image_size=64)
    MobileNetV2Model(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The data (every caption of an image as long as the same caption of any other), a model config with the
    backbone's batch norm frozen, and a teacher."""
    root = tmp_path_factory.mktemp("data_parallel")
    model_config = root / "model_config.json"
    tiny_config(10, freeze_backbone_batch_norm=True).to_json_file(model_config)
    return {
        "root": root,
        "data": write_caption_folder(root / "data", {"train": TRAIN_IMAGES, "dev": 4}),
        "model_config": model_config,
        "teacher": save_teacher(root / "teacher"),
    }


def recipe(setup: dict[str, Path], name: str, batch_size: int, **overrides: object):
    """2 epochs with an EMA and distillation, a checkpoint every 2 steps, all kept."""
    values = dict(
        num_epochs=2,
        batch_size=batch_size,
        captions_per_image=3,
        contrastive_weight=0.0,
        ema_decay=0.8,
        distillation_weight=0.5,
        teacher=str(setup["teacher"]),
        teacher_cache_dir=str(setup["root"] / f"teacher_cache_{name}"),
        keep_checkpoints=4,
    )
    return tiny_recipe(setup["data"], setup["model_config"], setup["root"] / name, **(values | overrides))


def torchrun(config, *extra: str) -> subprocess.CompletedProcess:
    """scripts/train.py under `torchrun --standalone --nproc_per_node 2` (gloo on the CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(ROOT / "scripts" / "train.py"), *recipe_flags(config), *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def one_process(setup) -> Path:
    """One process (in this one) at twice the per-process batch."""
    config = recipe(setup, "one_process", 2 * PER_PROCESS_BATCH)
    train(config)
    return Path(config.output_dir)


@pytest.fixture(scope="module")
def two_processes(setup) -> Path:
    config = recipe(setup, "two_processes", PER_PROCESS_BATCH)
    torchrun(config)
    return Path(config.output_dir)


def test_one_process_checkpoints_keep_their_layout(one_process: Path) -> None:
    """Runs started before data parallel existed resume with this code: the same files, a checkpoint.json that
    says one process wrote it."""
    for checkpoint in sorted((one_process / "checkpoints").iterdir()):
        assert {path.name for path in checkpoint.iterdir()} == ONE_PROCESS_CHECKPOINT, checkpoint
        assert json.loads((checkpoint / "checkpoint.json").read_text())["num_processes"] == 1
    assert len(step_records(one_process)) == 8


def test_a_checkpoint_resumes_only_with_the_processes_that_wrote_it(one_process: Path, tmp_path: Path) -> None:
    config = json.loads((one_process / "training_config.json").read_text())
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(sorted((one_process / "checkpoints").iterdir())[-1], checkpoints / "step-00000008")
    recipe_now = TrainingConfig(**(config | {"resume": True}))
    assert choose_checkpoint(checkpoints, recipe_now, 1) == checkpoints / "step-00000008"
    with pytest.raises(ResumeError, match="written by 1 process.*this run has 2"):
        choose_checkpoint(checkpoints, recipe_now, 2)


@pytest.mark.slow
def test_two_processes_share_each_epoch_and_log_once(two_processes: Path) -> None:
    records = step_records(two_processes)
    per_epoch = [sum(record["epoch"] == epoch for record in records.values()) for epoch in (0, 1)]
    assert per_epoch == [4, 4]  # 16 images / (2 processes x 2): half the 8 steps of one process at batch 2
    checkpoints = sorted((two_processes / "checkpoints").iterdir())
    assert [path.name for path in checkpoints] == [f"step-{step:08d}" for step in (2, 4, 6, 8)]  # none temporary
    for checkpoint in checkpoints:
        names = {path.name for path in checkpoint.iterdir()}
        assert names == ONE_PROCESS_CHECKPOINT | {"random_states_1.pkl"}, checkpoint
        info = json.loads((checkpoint / "checkpoint.json").read_text())
        assert info["num_processes"] == 2 and set(info["files"]) == names - {"checkpoint.json"}
    assert json.loads((checkpoints[-1] / "trainer_state.json").read_text())["global_step"] == 8
    caches = list((two_processes.parent / "teacher_cache_two_processes").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("teacher-")  # written once, by the main process
    assert (two_processes / "model" / "model.safetensors").is_file()
    assert (two_processes / "model_ema" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_train_as_one_at_twice_the_batch(two_processes: Path, one_process: Path) -> None:
    got, expected = step_records(two_processes), step_records(one_process)
    assert list(got) == list(expected) == list(range(8))
    for step, record in expected.items():
        for key in COMPARED:
            assert got[step][key] == pytest.approx(record[key], **TOLERANCE), (step, key)
    for got_epoch, expected_epoch in zip(history(two_processes), history(one_process), strict=True):
        for key in ("val_loss", "ema/val_loss"):  # the dev evaluation of the same weights, on the main process
            assert got_epoch[key] == pytest.approx(expected_epoch[key], **TOLERANCE), key


@pytest.mark.slow
def test_two_processes_resume_mid_epoch_exactly(setup, two_processes: Path) -> None:
    """Stopped after the checkpoint of step 6 (mid-epoch 2), then `--resume true` with 2 processes: the losses,
    dev scores and final weights of the unbroken run."""
    stopped = setup["root"] / "stopped"
    shutil.copytree(two_processes, stopped)
    shutil.rmtree(stopped / "checkpoints" / "step-00000008")  # what a kill between steps 6 and 8 leaves
    cache = setup["root"] / "teacher_cache_two_processes"  # written by the unbroken run: both processes read it
    result = torchrun(recipe(setup, "stopped", PER_PROCESS_BATCH, teacher_cache_dir=str(cache)), "--resume", "true")
    assert "resumed from" in result.stderr and "step-00000006" in result.stderr
    got, expected = step_records(stopped), step_records(two_processes)
    assert list(got) == list(expected)
    for step, record in expected.items():
        for key in COMPARED:
            assert got[step][key] == pytest.approx(record[key], abs=1e-6), (step, key)
    assert [e["val_loss"] for e in history(stopped)] == pytest.approx(
        [e["val_loss"] for e in history(two_processes)], abs=1e-6
    )
    final = Path("checkpoints") / "step-00000008"
    weights = load_file(stopped / final / "model.safetensors")
    for name, tensor in load_file(two_processes / final / "model.safetensors").items():
        assert torch.allclose(weights[name], tensor, atol=1e-6), name
    averaged = torch.load(stopped / final / "custom_checkpoint_1.pkl")  # the EMA
    for name, tensor in torch.load(two_processes / final / "custom_checkpoint_1.pkl").items():
        assert torch.allclose(averaged[name].float(), tensor.float(), atol=1e-6), name
