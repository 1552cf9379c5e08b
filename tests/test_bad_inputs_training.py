"""Bad inputs to training, and runs that are never lost: every recipe field out of range is refused naming it, a
run never mixes with another in its folder, a resume continues only an intact checkpoint of the same recipe (a
corrupt newest one is skipped), a full disk is said to be one, missing model sources are named, `losses.jsonl`
logs each step once, and a kill -9 in the middle of a checkpoint write loses nothing."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import accelerate.utils.other
import pytest
import torch
from accelerate import Accelerator
from conftest import recipe_flags, subprocess_env, tiny_config, tiny_recipe, truncate, write_caption_folder
from safetensors import SafetensorError

from soli_hf import SoliForConditionalGeneration
from soli_hf.training import TrainingConfig, parse_training_config, train
from soli_hf.training.checkpointing import (
    CHECKPOINT_INFO_FILE,
    ResumeError,
    TrainerState,
    checkpoint_folders,
    checkpoint_problem,
    prepare_run_folder,
    save_checkpoint,
)
from soli_hf.training.loop import trim_step_log
from soli_hf.training.model_setup import build_model, check_model_sources

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"


class TinyRun:
    """A tiny SOLI, its optimiser and scheduler prepared by accelerate, as in a run of `config`: writes the run's
    checkpoints without training."""

    def __init__(self, output_dir: Path, vocab_size: int) -> None:
        self.config = TrainingConfig(output_dir=str(output_dir), report_to="none", learning_rate=3e-3, resume=True)
        self.accelerator = Accelerator()
        model = SoliForConditionalGeneration(tiny_config(vocab_size))
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.learning_rate)
        self.accelerator.prepare(model, optimizer)
        self.accelerator.register_for_checkpointing(torch.optim.lr_scheduler.StepLR(optimizer, 10))
        self.checkpoint_dir = output_dir / "checkpoints"

    def save(self, step: int, recipe: TrainingConfig | None = None) -> Path:
        state = TrainerState(global_step=step)
        recipe = (recipe or self.config).to_dict()
        return save_checkpoint(self.accelerator, self.checkpoint_dir, state, keep=5, recipe=recipe)

    def resume(self, **changes: object) -> Path | None:
        config = TrainingConfig(**(self.config.to_dict() | changes))
        return prepare_run_folder(self.accelerator, config)


@pytest.fixture
def tiny_run(tmp_path: Path, tokenizer) -> TinyRun:
    return TinyRun(tmp_path / "run", len(tokenizer))


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ------------------------------------------------------------------------------ 4: every field's range


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": -1e-3}, "learning_rate must be > 0, got -0.001"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
        ({"backbone_learning_rate": -1e-4}, "backbone_learning_rate must be >= 0, got -0.0001"),
        ({"learning_rate": float("nan")}, "learning_rate must be finite, got nan"),
        ({"weight_decay": -0.01}, "weight_decay must be >= 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be >= 0"),
        ({"batch_size": 0}, "batch_size must be > 0, got 0"),
        ({"batch_size": 3.5}, "batch_size must be of type int, got 3.5"),
        ({"num_epochs": True}, "num_epochs must be of type int, got True"),
        ({"captions_per_image": 0}, "captions_per_image must be > 0"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be > 0"),
        ({"max_train_images": 0}, "max_train_images must be > 0"),
        ({"save_every_steps": 0}, "save_every_steps must be > 0"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be > 0"),
        ({"log_every_steps": 0}, "log_every_steps must be > 0"),
        ({"early_stopping_patience": 0}, "early_stopping_patience must be > 0"),
        ({"eval_num_beams": 0}, "eval_num_beams must be > 0, got 0"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"warmup_steps": -5}, "warmup_steps must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"contrastive_weight": -0.5}, "contrastive_weight must be >= 0"),
        ({"curriculum_epochs": -1.0}, "curriculum_epochs must be >= 0"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\], got 1.5"),
        ({"min_scale_factor": 0.0}, r"min_scale_factor must be in \(0, 1\], got 0.0"),
        ({"min_scale_factor": 1.5}, r"min_scale_factor must be in \(0, 1\]"),
        ({"blur_sigma_range": [1.5, 0.5]}, r"blur_sigma_range must be \[low, high\] .*got \[1.5, 0.5\]"),
        ({"blur_sigma_range": [-1.0, 0.5]}, r"blur_sigma_range must be \[low, high\] with 0 <= low"),
        ({"blur_sigma_range": [0.5]}, r"blur_sigma_range must be \[low, high\]"),
        ({"jpeg_quality_range": [0, 90]}, r"jpeg_quality_range must be \[low, high\] with 1 <= low <= high <= 95"),
        ({"jpeg_quality_range": [40, 100]}, r"jpeg_quality_range must be .*got \[40, 100\]"),
        ({"degradations": ["bicubic", "lanczos"]}, r"degradations must be a non-empty list of .*'lanczos'"),
        ({"degradations": []}, "degradations must be a non-empty list"),
        ({"data_format": "csv"}, "data_format must be one of"),
        ({"report_to": "tensorbord"}, "report_to must be one of"),
        ({"output_dir": ""}, "output_dir must not be empty"),
        ({"phase": "scst", "init_from": "m", "scst_samples": 1}, "scst_samples >= 2, got 1"),
        ({"resume": True, "overwrite_output_dir": True}, "not both"),
    ],
)
def test_every_recipe_field_out_of_range_is_refused_naming_it(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**values)


def test_bad_values_from_a_yaml_recipe_and_bad_yaml_are_named(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: -0.001\n")
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -0.001"):
        parse_training_config(["--config", str(recipe)])
    recipe.write_text("degradations: [bicubic\n")
    with pytest.raises(ValueError, match=r"recipe\.yaml: not a valid YAML file"):
        parse_training_config(["--config", str(recipe)])


@pytest.mark.slow
def test_the_script_reports_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--learning_rate", "-0.001", "--output_dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "train.py: error: learning_rate must be > 0, got -0.001"
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------ 3: one run per output folder


def test_a_new_run_refuses_a_non_empty_output_dir(tmp_path: Path, tiny_model_config: Path) -> None:
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "losses.jsonl").write_text('{"step": 0}\n')
    config = tiny_recipe(tmp_path / "no-data-needed", tiny_model_config, output_dir)
    with pytest.raises(FileExistsError, match="--resume true") as refused:
        train(config)  # refused before any data is read
    message = str(refused.value)
    assert f"output_dir {output_dir} is not empty (losses.jsonl)" in message
    assert "--overwrite_output_dir true" in message
    assert names(output_dir) == ["losses.jsonl"]


def test_overwrite_output_dir_deletes_only_the_old_run(tiny_run: TinyRun) -> None:
    output_dir = Path(tiny_run.config.output_dir)
    tiny_run.save(10)
    for name in ("model", "logs", ".model.tmp-x", "notes"):
        (output_dir / name).mkdir()
    for name in ("losses.jsonl", "training_config.json", "notes/a.txt"):
        (output_dir / name).write_text("{}")
    config = TrainingConfig(**(tiny_run.config.to_dict() | {"resume": False, "overwrite_output_dir": True}))
    assert prepare_run_folder(tiny_run.accelerator, config) is None
    assert names(output_dir) == ["notes"]  # not a run's file: stays


@pytest.mark.slow
def test_a_run_over_a_longer_old_run_keeps_only_its_own_checkpoints(tmp_path: Path, tiny_model_config: Path) -> None:
    """The tester's case: a longer run's checkpoints outlived a new run's (pruned by name) and were resumed."""
    data = write_caption_folder(tmp_path / "data", {"train": 8, "dev": 4})
    output_dir = tmp_path / "run"
    for name in ("checkpoints/step-00000010", "model", "logs", ".model.tmp-x"):
        (output_dir / name).mkdir(parents=True)
    (output_dir / "model" / "metrics.json").write_text(json.dumps({"history": [{"epoch": e} for e in range(5)]}))
    (output_dir / "losses.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(10)))
    (output_dir / "notes.txt").write_text("mine")  # not a run's file: stays
    train(tiny_recipe(data, tiny_model_config, output_dir, num_epochs=1, overwrite_output_dir=True))
    assert names(output_dir / "checkpoints") == ["step-00000002"]
    assert len(json.loads((output_dir / "model" / "metrics.json").read_text())["history"]) == 1
    assert [json.loads(line)["step"] for line in (output_dir / "losses.jsonl").read_text().splitlines()] == [0, 1]
    assert not (output_dir / "logs").exists() and not (output_dir / ".model.tmp-x").exists()
    assert (output_dir / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_checkpoint_of_another_recipe(tiny_run: TinyRun) -> None:
    tiny_run.save(2)
    with pytest.raises(ResumeError) as refused:
        tiny_run.resume(learning_rate=1e-3, num_epochs=3)
    message = str(refused.value)
    assert "cannot resume from" in message and "step-00000002: it was written by another recipe" in message
    assert "num_epochs 8 there, 3 now" in message and "learning_rate 0.003 there, 0.001 now" in message
    assert "--overwrite_output_dir true" in message


def test_resume_accepts_changes_that_do_not_define_the_run(tiny_run: TinyRun) -> None:
    tiny_run.save(2)
    newest = tiny_run.save(4)
    changes = dict(
        save_every_steps=7,
        keep_checkpoints=9,
        report_to="tensorboard",
        log_every_steps=3,
        eval_batch_size=5,
        num_workers=2,
        on_bad_sample="error",
    )
    assert tiny_run.resume(**changes) == newest


def test_a_recipe_saved_before_a_field_existed_resumes_as_its_default(tiny_run: TinyRun) -> None:
    """A checkpoint of a soli-hf without `eval_num_beams` was evaluated greedily: it resumes with the default (1),
    and not with another beam width (the dev numbers and early stopping would change)."""
    checkpoint = tiny_run.save(2)
    info_file = checkpoint / CHECKPOINT_INFO_FILE
    info = json.loads(info_file.read_text())
    del info["recipe"]["eval_num_beams"]
    info_file.write_text(json.dumps(info))
    assert tiny_run.resume() == checkpoint
    with pytest.raises(ResumeError, match="eval_num_beams 1 there, 3 now"):
        tiny_run.resume(eval_num_beams=3)


def test_checkpoint_written_before_recipes_were_stored_resumes_with_a_warning(tiny_run: TinyRun, caplog) -> None:
    checkpoint = tiny_run.save(2)
    (checkpoint / CHECKPOINT_INFO_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        assert tiny_run.resume(learning_rate=1e-3) == checkpoint
    assert "written before checkpoints stored their recipe" in caplog.text


# --------------------------------------------------------------------- 6: a corrupt newest checkpoint


def overwrite_tail(path: Path) -> None:
    """Same size, last bytes zeroed: the size check passes, the zip directory of a torch file is gone."""
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)
    path.write_bytes(bytes(data))


def overwrite_head(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = b"\xff" * 8
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("file_name", "damage", "why"),
    [
        ("model.safetensors", truncate, r"model\.safetensors has \d+ bytes, \d+ were written"),
        ("model.safetensors", overwrite_head, r"model\.safetensors does not load: SafetensorError"),
        ("optimizer.bin", overwrite_tail, r"optimizer\.bin does not load: .*central directory"),
        ("random_states_0.pkl", Path.unlink, r"random_states_0\.pkl is missing"),
        ("trainer_state.json", lambda path: path.write_text('{"epoch": 1,'), r"trainer_state\.json: invalid JSON"),
    ],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tiny_run, caplog, file_name, damage, why) -> None:
    intact = tiny_run.save(2)
    corrupt = tiny_run.save(4)
    damage(corrupt / file_name)
    with caplog.at_level(logging.WARNING):
        assert tiny_run.resume() == intact
    assert any(f"checkpoint {corrupt} is corrupt" in r.message for r in caplog.records)
    assert len([record for record in caplog.records if re.search(why, record.message)]) == 1
    assert names(tiny_run.checkpoint_dir) == ["corrupt-step-00000004", "step-00000002"]  # kept aside, not resumed


def test_no_intact_checkpoint_stops_saying_so_and_what_to_do(tiny_run: TinyRun) -> None:
    for step in (2, 4):
        truncate(tiny_run.save(step) / "optimizer.bin")
    with pytest.raises(ResumeError) as stopped:
        tiny_run.resume()
    message = str(stopped.value)
    assert f"no intact checkpoint in {tiny_run.checkpoint_dir}" in message
    assert "step-00000004: optimizer.bin has" in message and "step-00000002: optimizer.bin has" in message
    assert "--overwrite_output_dir true" in message
    assert names(tiny_run.checkpoint_dir) == ["step-00000002", "step-00000004"]  # nothing moved


def test_a_checkpoint_replaced_by_a_killed_write_is_put_back(tiny_run: TinyRun) -> None:
    """A kill between moving `step-N` aside and renaming its successor into place leaves `.step-N.old-<pid>`."""
    tiny_run.save(2)
    checkpoint = tiny_run.save(4)
    checkpoint.rename(checkpoint.with_name(".step-00000004.old-1234"))
    (tiny_run.checkpoint_dir / ".step-00000006.tmp-k1lled").mkdir()  # and a write that never finished
    assert tiny_run.resume() == checkpoint and checkpoint_problem(checkpoint) is None
    assert names(tiny_run.checkpoint_dir) == ["step-00000002", "step-00000004"]


# -------------------------------------------------------------------------------------- 10: a full disk


def raise_in_torch_save(monkeypatch) -> None:
    def failing_save(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", failing_save)


def raise_in_safetensors(monkeypatch) -> None:
    def failing_save(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(accelerate.utils.other, "safe_save_file", failing_save)


def raise_in_json_write(monkeypatch) -> None:
    def failing_save(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TrainerState, "save", failing_save)


@pytest.mark.parametrize("fail", [raise_in_torch_save, raise_in_safetensors, raise_in_json_write])
def test_a_full_disk_while_checkpointing_says_so_and_removes_the_temporary_folder(tiny_run, monkeypatch, fail) -> None:
    intact = tiny_run.save(2)
    fail(monkeypatch)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=2**40, used=2**40, free=0))
    with pytest.raises(OSError) as full:
        tiny_run.save(4)
    assert full.value.errno == errno.ENOSPC
    assert (
        f"disk full while writing checkpoint {tiny_run.checkpoint_dir / 'step-00000004'} (0.0 GiB free on /"
    ) in str(full.value)
    assert str(full.value).endswith("): free space, then resume with --resume true from step-00000002 (complete)")
    monkeypatch.undo()
    assert names(tiny_run.checkpoint_dir) == ["step-00000002"] and checkpoint_problem(intact) is None


def test_another_write_error_passes_unchanged_and_removes_the_temporary_folder(tiny_run, monkeypatch) -> None:
    raise_in_torch_save(monkeypatch)  # an iostream error with plenty of space left is no full disk
    with pytest.raises(RuntimeError, match="basic_ios::clear: iostream error"):
        tiny_run.save(2)
    assert names(tiny_run.checkpoint_dir) == []


# ------------------------------------------------------------------- 10: missing or truncated sources


@pytest.mark.parametrize(
    ("field_values", "error", "message"),
    [
        ({"backbone": "../nope"}, FileNotFoundError, "backbone ../nope: the folder does not exist"),
        ({"init_from": "{tmp}/nope"}, FileNotFoundError, "init_from {tmp}/nope: the folder does not exist"),
        ({"tokenizer": "{tmp}/runs/x/tokenizer"}, FileNotFoundError, "tokenizer {tmp}/runs/x/tokenizer: the folder"),
        ({"model_config": "{tmp}/nope.json"}, FileNotFoundError, "model_config {tmp}/nope.json: no such file"),
        ({"init_from": "{tmp}/config.json"}, NotADirectoryError, "init_from {tmp}/config.json: a file, not a model"),
        ({"init_from": "{model}"}, ValueError, r"init_from {model}: {model}/config\.json: invalid JSON at line"),
        ({"tokenizer": "{model}"}, ValueError, r"tokenizer {model}: {model}/config\.json: invalid JSON at line"),
        ({"model_config": "{model}/config.json"}, ValueError, r"model_config {model}/config\.json: .*invalid JSON"),
    ],
)
def test_a_missing_or_truncated_model_source_is_named(tmp_path, saved_tiny_model, field_values, error, message):
    model = tmp_path / "truncated"
    shutil.copytree(saved_tiny_model, model)
    truncate(model / "config.json")
    (tmp_path / "config.json").write_text("{}")
    values = {"backbone": None} | {k: v and v.format(tmp=tmp_path, model=model) for k, v in field_values.items()}
    config = TrainingConfig(output_dir=str(tmp_path / "run"), **values)
    with pytest.raises(error, match=message.format(tmp=re.escape(str(tmp_path)), model=re.escape(str(model)))):
        train(config)  # stops before reading the data or writing output_dir
    assert not (tmp_path / "run").exists()


def test_truncated_init_from_weights_are_named(tmp_path: Path, saved_tiny_model: Path, processor) -> None:
    model = tmp_path / "truncated"
    shutil.copytree(saved_tiny_model, model)
    truncate(model / "model.safetensors")
    config = TrainingConfig(init_from=str(model))
    check_model_sources(config)  # the JSON files are fine
    with pytest.raises(ValueError, match=rf"init_from {model}: cannot load this folder: .*incomplete metadata"):
        build_model(config, processor)


# ------------------------------------------------------------------------- 11: each step logged once


def test_resume_drops_the_steps_logged_after_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "losses.jsonl"
    log.write_text("".join(json.dumps({"step": step, "loss": 1.0}) + "\n" for step in range(9)) + '{"step": 9, "lo')
    trim_step_log(log, 6)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1, 2, 3, 4, 5]
    trim_step_log(log, 0)  # a run that starts anew
    assert log.read_text() == ""


# ---------------------------------------------------------------------- kill -9 during a checkpoint write

# scripts/train.py, with torch.save writing the first bytes of step 6's optimizer.bin and then hanging, so that the
# test can kill the process in the middle of that checkpoint write (no test hook in the library)
HANGING_CHECKPOINT_WRITE = """
import runpy, sys, time
import torch

real_save = torch.save


def save_then_hang_in_step_6(obj, f, *args, **kwargs):
    if ".step-00000006.tmp" in str(f) and str(f).endswith("optimizer.bin"):
        with open(f, "wb") as handle:
            handle.write(b"PK\\x03\\x04 half written")
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)


torch.save = save_then_hang_in_step_6
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_loses_nothing(tmp_path: Path, tiny_model_config: Path) -> None:
    data = write_caption_folder(tmp_path / "data", {"train": 16, "dev": 4})
    config = tiny_recipe(data, tiny_model_config, tmp_path / "run", num_epochs=3)  # 4 steps an epoch
    checkpoints = tmp_path / "run" / "checkpoints"
    process = subprocess.Popen(
        [sys.executable, "-c", HANGING_CHECKPOINT_WRITE, str(TRAIN_SCRIPT), *recipe_flags(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    deadline = time.monotonic() + 300
    half_written: list[Path] = []  # the temporary folder's name ends in a random part: `.step-00000006.tmp-*`
    while not half_written and process.poll() is None and time.monotonic() < deadline:
        half_written = list(checkpoints.glob(".step-00000006.tmp-*/optimizer.bin"))
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # in the middle of writing step-00000006
    process.wait()
    assert half_written, "the run was not killed during the checkpoint write"
    assert names(checkpoints) == [half_written[0].parent.name, "step-00000002", "step-00000004"]
    assert all(checkpoint_problem(folder) is None for folder in checkpoint_folders(checkpoints))

    resumed = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *recipe_flags(config), "--resume", "true"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints / 'step-00000004'}" in resumed.stderr
    assert names(checkpoints) == ["step-00000010", "step-00000012"]  # the stray temporary folder is gone
    assert all(checkpoint_problem(folder) is None for folder in checkpoint_folders(checkpoints))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert steps == list(range(12))  # each step once
    assert len(json.loads((tmp_path / "run" / "model" / "metrics.json").read_text())["history"]) == 3


@pytest.mark.slow
def test_training_resumes_past_a_corrupt_newest_checkpoint(tmp_path: Path, tiny_model_config: Path) -> None:
    data = write_caption_folder(tmp_path / "data", {"train": 8, "dev": 4})  # 2 steps
    config = tiny_recipe(data, tiny_model_config, tmp_path / "run", num_epochs=1, save_every_steps=1)
    train(config)
    checkpoints = tmp_path / "run" / "checkpoints"
    overwrite_head(checkpoints / "step-00000002" / "model.safetensors")  # the end of the run: resumed from step 1
    train(TrainingConfig(**(config.to_dict() | {"resume": True})))
    assert names(checkpoints) == ["corrupt-step-00000002", "step-00000001", "step-00000002"]
    assert checkpoint_problem(checkpoints / "step-00000002") is None
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
