"""SOLI's training schedules: what branch B sees (the low-res -> super-resolved curriculum of DESIGN.md (6)) and how
often the decoder goes on from its own words (scheduled sampling), as training goes on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainingConfig


def linear_ramp(epoch_progress: float, start_epoch: float, ramp_epochs: float) -> float:
    """0 until `start_epoch` (in epochs, fractional), then a linear ramp to 1 over `ramp_epochs` (a step at
    `start_epoch` when that is 0)."""
    if ramp_epochs <= 0:
        return 1.0 if epoch_progress >= start_epoch else 0.0
    return min(1.0, max(0.0, (epoch_progress - start_epoch) / ramp_epochs))


def soli_schedule(epoch_progress: float, config: TrainingConfig) -> dict[str, float]:
    """SOLI's per-step forward inputs at a point of training: `curriculum_alpha` (0: branch B sees the bicubic
    upsample of the LR image, 1: the SR output) and, when the recipe turns scheduled sampling on, its
    `sampling_probability`, ramped from 0 to `scheduled_sampling_probability`."""
    schedule = {
        "curriculum_alpha": linear_ramp(epoch_progress, config.curriculum_start_epoch, config.curriculum_epochs)
    }
    if config.scheduled_sampling_probability > 0:
        ramp = linear_ramp(epoch_progress, config.scheduled_sampling_start_epoch, config.scheduled_sampling_epochs)
        schedule["sampling_probability"] = config.scheduled_sampling_probability * ramp
    return schedule
