"""Checkpoints that survive a kill at any moment: written to a temporary folder, then renamed into place.

A checkpoint folder `step-XXXXXXXX` holds `accelerator.save_state` (model, optimizer, scheduler, RNG states) and
`trainer_state.json` (where in training it was taken). Only complete folders ever carry that name, so the
latest one is always loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..storage import fsync_tree

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training is: enough, with the accelerate state, to continue exactly."""

    epoch: int = 0
    step_in_epoch: int = 0  # batches of `epoch` already trained on
    global_step: int = 0  # batches trained on, over all epochs
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished epoch

    def save(self, folder: Path) -> None:
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        return cls(**json.loads((folder / TRAINER_STATE_FILE).read_text(encoding="utf-8")))


def checkpoint_folders(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, state: TrainerState, keep: int) -> Path:
    """Write `step-<global_step>` atomically (every process takes part in `save_state`; the main process renames)
    and delete all but the newest `keep` checkpoints."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.global_step:08d}"
    tmp = checkpoint_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(tmp)
        fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)  # a checkpoint of the same step from an earlier, resumed run
        os.replace(tmp, final)
        for old in checkpoint_folders(checkpoint_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    folders = checkpoint_folders(checkpoint_dir)
    return folders[-1] if folders else None
