"""The run folder (`output_dir`) and its checkpoints: every run in its own folder, checkpoints that survive a kill
or a full disk at any moment, and a resume that only continues an intact checkpoint of the same recipe.

A checkpoint folder `checkpoints/step-XXXXXXXX` holds `accelerator.save_state` (model, optimizer, scheduler, RNG
states -- one file per process --, and the EMA of the weights when the recipe keeps one), `trainer_state.json` (where
in training it was taken) and `checkpoint.json` (the recipe and number of processes that wrote it, and the size of
every file). It is written as every folder of a run is (`storage.write_folder_atomically`): under a temporary name,
flushed, then renamed, so only complete folders carry that name; a resume still verifies that every file loads, in
case the disk damaged one since. With several processes every one of them writes its part into the main process's
temporary folder, which is renamed once all have finished; the output folder must be one that every process sees
(on several machines, a shared filesystem).

A model with frozen pretrained parts (the dual-encoder Q-Former's encoders and language model, `frozen_modules()`)
keeps them out of its checkpoints: `model.safetensors` and the EMA's state hold only the weights that train
(`register_trainable_checkpointing`, `TrainableState`), since the frozen ones are those the run was built with (the
recipe's parts, or `init_from`). A SOLI checkpoint holds every weight, as it always has.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from accelerate.utils import load as load_torch_file
from safetensors.torch import load_file as load_safetensors_file
from torch import nn

from ..storage import disk_full_as_oserror, read_json, recover_interrupted_writes, remove_path, write_folder_atomically
from .config import TrainingConfig, recipe_differences

logger = logging.getLogger(__name__)

# ---- the run folder
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"  # the best epoch's `save_pretrained` folder (its better weights when an EMA is kept)
EMA_MODEL_DIR = "model_ema"  # with `ema_decay`: the EMA weights of the epoch where they scored best
STEP_LOG_FILE = "losses.jsonl"
LOG_DIR = "logs"  # the trackers' (tensorboard)
RECIPE_FILE = "training_config.json"
# what --overwrite_output_dir deletes
RUN_FILES = (CHECKPOINT_DIR, MODEL_DIR, EMA_MODEL_DIR, STEP_LOG_FILE, LOG_DIR, RECIPE_FILE)

# ---- a checkpoint
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_INFO_FILE = "checkpoint.json"
CORRUPT_PREFIX = "corrupt-"  # a checkpoint that failed verification, kept aside: no longer a `step-` folder
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")
_TORCH_FILE_SUFFIXES = (".bin", ".pkl", ".pt")


class ResumeError(ValueError):
    """`--resume true` cannot continue the run in `output_dir` (no intact checkpoint, or another recipe's)."""


@dataclass
class TrainerState:
    """Where training is: enough, with the accelerate state, to continue exactly."""

    epoch: int = 0
    step_in_epoch: int = 0  # batches of `epoch` already trained on
    global_step: int = 0  # batches trained on, over all epochs
    best_metric: float | None = None
    best_epoch: int | None = None
    best_weights: str | None = None  # "raw" or "ema": the weights of the best epoch that `MODEL_DIR` holds
    best_ema_metric: float | None = None  # the EMA weights' best score (`EMA_MODEL_DIR`)
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished epoch

    def save(self, folder: Path) -> None:
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        """Read `trainer_state.json`; `ValueError` naming the file when it is not a trainer state."""
        path = folder / TRAINER_STATE_FILE
        values = read_json(path)
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"{path}: not a trainer state ({error})") from error


# ------------------------------------------------------------------------------------ what a checkpoint holds


def frozen_prefixes(root: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes (`"language_model."`, `"module.encoders."` under a wrapper) of the frozen pretrained
    parts of every model inside `root` that names them (`frozen_modules()`); () for a model without any."""
    frozen = {
        id(part) for module in root.modules() if hasattr(module, "frozen_modules") for part in module.frozen_modules()
    }
    return tuple(f"{name}." for name, module in root.named_modules() if id(module) in frozen)


class TrainableState:
    """A module's state without its frozen pretrained parts (`frozen_prefixes`), for checkpoints: `state_dict` and a
    `load_state_dict` that requires exactly those entries. For a module without frozen parts, its whole state.

    `accelerator.register_for_checkpointing(TrainableState(ema))` checkpoints the EMA of the trained weights alone.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.skipped = frozen_prefixes(module)

    def state_dict(self) -> dict[str, Any]:
        return {name: value for name, value in self.module.state_dict().items() if not name.startswith(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state written by `state_dict`.

        Raises:
            ValueError: entries missing from `state`, or entries that are not this module's trainable state.
        """
        expected = self.state_dict().keys()
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise ValueError(
                f"the checkpoint's weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.module.load_state_dict(state, strict=not self.skipped)


def register_trainable_checkpointing(accelerator: Accelerator, model: nn.Module) -> None:
    """Make `accelerator.save_state` / `load_state` keep `model`'s frozen parts out of its `model.safetensors`
    (accelerate's save and load hooks); nothing changes for a model without frozen parts."""
    if not frozen_prefixes(model):
        return

    def save(models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        weights[0] = TrainableState(models[0]).state_dict()

    def load(models: list[nn.Module], input_dir: str) -> None:
        prepared = models.pop(0)  # loaded here: accelerate then loads the models left in the list
        state = load_safetensors_file(Path(input_dir) / "model.safetensors")  # copied onto the model's device
        TrainableState(prepared).load_state_dict(state)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


# ------------------------------------------------------------------------------------------------ writing


def checkpoint_step(folder: Path) -> int:
    """The global step of the checkpoint `folder` (`step-00000200` -> 200)."""
    return int(folder.name.removeprefix(CHECKPOINT_PREFIX))


def checkpoint_folders(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary, replaced and corrupt folders are not among them)."""
    if not checkpoint_dir.is_dir():
        return []
    folders = [p for p in checkpoint_dir.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(folders, key=checkpoint_step)


def save_checkpoint(
    accelerator: Accelerator, checkpoint_dir: Path, state: TrainerState, keep: int, recipe: dict[str, Any]
) -> Path:
    """Write `step-<global_step>` atomically with `recipe` stored in it, and delete all but the newest `keep`
    checkpoints. The main process writes the folder with `write_folder_atomically` (an end-of-epoch checkpoint
    replaces the periodic one of its step); every process saves its part of the state (`save_state`) into that
    folder's temporary name, which the main process broadcasts, and the main process completes and renames it only
    after every process has finished (`wait_for_everyone`).

    A write that fails removes its temporary folder and leaves the earlier checkpoints as they were; a full disk
    is raised as `OSError` naming the checkpoint, the free space and the checkpoint to resume from.
    """
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.global_step:08d}"

    def write(tmp: Path | None) -> None:
        (shared,) = broadcast_object_list([None if tmp is None else str(tmp)])
        accelerator.save_state(shared)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state.save(Path(shared))
            _write_checkpoint_info(Path(shared), recipe, accelerator.num_processes)

    with disk_full_as_oserror("checkpoint", final, _advice_after_a_full_disk(checkpoint_dir)):
        if accelerator.is_main_process:
            write_folder_atomically(final, write)
        else:
            write(None)
    if accelerator.is_main_process:
        for old in checkpoint_folders(checkpoint_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _advice_after_a_full_disk(checkpoint_dir: Path) -> str:
    folders = checkpoint_folders(checkpoint_dir)
    if not folders:
        return "free space, then start the run again (it has no checkpoint yet)"
    return f"free space, then resume with --resume true from {folders[-1].name} (complete)"


def _write_checkpoint_info(folder: Path, recipe: dict[str, Any], num_processes: int) -> None:
    """`checkpoint.json`: the recipe, the number of processes that trained, and the size of every file written so
    far (a resume checks them)."""
    files = {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}
    info = {"recipe": recipe, "files": files, "num_processes": num_processes}
    (folder / CHECKPOINT_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ reading


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint `folder` cannot be resumed from, or None when it can: `trainer_state.json` and
    `checkpoint.json` parse, every file `checkpoint.json` lists is there with its size, and every safetensors and
    torch file in the folder loads."""
    try:
        TrainerState.load(folder)
        files = _checkpoint_info(folder).get("files", {})
    except (OSError, ValueError) as error:
        return str(error)
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    for path in sorted(folder.iterdir()):
        problem = _load_problem(path)
        if problem is not None:
            return f"{path.name} does not load: {problem}"
    return None


def _checkpoint_info(folder: Path) -> dict[str, Any]:
    """`checkpoint.json` ({} for a checkpoint written before checkpoints stored one)."""
    path = folder / CHECKPOINT_INFO_FILE
    if not path.exists():
        return {}
    info = read_json(path)
    if not (isinstance(info, dict) and isinstance(info.get("recipe"), dict) and isinstance(info.get("files"), dict)):
        raise ValueError(f"{path}: expected an object with a recipe and files")
    return info


def _load_problem(path: Path) -> str | None:
    """Load a file the way accelerate's `load_state` will; what went wrong, or None."""
    try:
        if path.suffix == ".safetensors":
            load_safetensors_file(path)
        elif path.suffix in _TORCH_FILE_SUFFIXES:
            load_torch_file(path, map_location="cpu")
    except Exception as error:  # whatever the loader raises (SafetensorError, PytorchStreamReader, unpickling...)
        return f"{type(error).__name__}: {error}"
    return None


# ------------------------------------------------------------------------------------------ the run folder


def prepare_run_folder(accelerator: Accelerator, config: TrainingConfig) -> Path | None:
    """Make `config.output_dir` ready for `config`'s run; returns the checkpoint to resume from (None: start anew).

    With `resume`: the newest intact checkpoint of the same recipe (see `resume_checkpoint`); None, with a warning,
    when there is no checkpoint at all. Otherwise `output_dir` must be absent or empty, unless
    `overwrite_output_dir` is set: then the run in it (`RUN_FILES`: checkpoints, model, EMA model, losses, logs,
    recipe) is deleted first, and other files stay.

    Raises:
        FileExistsError: `output_dir` holds files and neither `resume` nor `overwrite_output_dir` is set.
        NotADirectoryError: `output_dir` is a file.
        ResumeError: from `resume_checkpoint`.
    """
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir {output_dir} is a file, not a folder")
    if config.resume:
        checkpoint = resume_checkpoint(accelerator, output_dir / CHECKPOINT_DIR, config)
        if checkpoint is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", output_dir / CHECKPOINT_DIR)
        return checkpoint
    existing = sorted(path.name for path in output_dir.iterdir()) if output_dir.is_dir() else []
    if existing and not config.overwrite_output_dir:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise FileExistsError(
            f"output_dir {output_dir} is not empty ({shown}): continue its run with --resume true, or delete that "
            "run and start again with --overwrite_output_dir true (or choose another --output_dir)"
        )
    accelerator.wait_for_everyone()  # every process has looked before the main one deletes
    if accelerator.is_main_process:
        for name in existing:
            if name in RUN_FILES or name.startswith(tuple(f".{run_file}" for run_file in RUN_FILES)):
                remove_path(output_dir / name)
        if existing:
            logger.info("--overwrite_output_dir: deleted the run in %s", output_dir)
    accelerator.wait_for_everyone()
    return None


def resume_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, config: TrainingConfig) -> Path | None:
    """The checkpoint `--resume true` continues: the newest one of `checkpoint_dir` whose files all load, chosen by
    the main process (`choose_checkpoint`) and the same on every process.

    Raises:
        ResumeError: from `choose_checkpoint` (on several processes the main one raises it and the launcher ends
            the others).
    """
    chosen = (
        choose_checkpoint(checkpoint_dir, config, accelerator.num_processes) if accelerator.is_main_process else None
    )
    (name,) = broadcast_object_list([None if chosen is None else str(chosen)])
    return None if name is None else Path(name)


def choose_checkpoint(checkpoint_dir: Path, config: TrainingConfig, num_processes: int) -> Path | None:
    """The newest checkpoint of `checkpoint_dir` whose files all load (None when there is none at all).

    Newer ones that do not load are named in a warning and kept aside as `corrupt-step-...`; the leftovers of a
    checkpoint write that was killed are removed. A checkpoint written before checkpoints stored their recipe is
    resumed with a warning; one written before they stored their number of processes was written by one.

    Raises:
        ResumeError: no checkpoint loads (each one named, with why), the checkpoint was written by a recipe whose
            run-defining fields differ from `config` (each field named, with both values), or by another number of
            processes than `num_processes`.
    """
    for leftover in recover_interrupted_writes(checkpoint_dir, CHECKPOINT_PREFIX):
        logger.info("removed %s, the remains of a checkpoint write that was interrupted", leftover)
    candidates = checkpoint_folders(checkpoint_dir)
    if not candidates:
        return None
    corrupt: dict[Path, str] = {}
    for folder in reversed(candidates):
        problem = checkpoint_problem(folder)
        if problem is None:
            break
        corrupt[folder] = problem
        logger.warning("checkpoint %s is corrupt (%s); trying the one before it", folder, problem)
    else:
        reasons = "; ".join(f"{folder.name}: {problem}" for folder, problem in corrupt.items())
        raise ResumeError(
            f"cannot resume: no intact checkpoint in {checkpoint_dir} ({reasons}). Start the run again with "
            "--overwrite_output_dir true (or another --output_dir)"
        )
    _check_recipe(folder, config)
    _check_processes(folder, num_processes)
    for bad in corrupt:
        aside = bad.with_name(f"{CORRUPT_PREFIX}{bad.name}")
        os.replace(bad, aside)
        logger.warning("kept the corrupt checkpoint aside as %s (delete it when done)", aside)
    return folder


def _check_processes(checkpoint: Path, num_processes: int) -> None:
    """A checkpoint resumes with the number of processes that wrote it: each one's share of an epoch's batches and
    its random state are in it."""
    written_by = _checkpoint_info(checkpoint).get("num_processes", 1)
    if written_by != num_processes:
        raise ResumeError(
            f"cannot resume from {checkpoint}: it was written by {written_by} process(es) and this run has "
            f"{num_processes}; resume it with {written_by} (the same launch command)"
        )


def _check_recipe(checkpoint: Path, config: TrainingConfig) -> None:
    recipe = _checkpoint_info(checkpoint).get("recipe")
    if recipe is None:
        logger.warning(
            "%s was written before checkpoints stored their recipe: resuming it without checking that it was "
            "trained with this one",
            checkpoint,
        )
        return
    differences = recipe_differences(recipe, config)
    if differences:
        listed = ", ".join(f"{name} {saved!r} there, {now!r} now" for name, (saved, now) in differences.items())
        raise ResumeError(
            f"cannot resume from {checkpoint}: it was written by another recipe ({listed}). Resume with its values, "
            "or start a new run with --overwrite_output_dir true or another --output_dir"
        )
