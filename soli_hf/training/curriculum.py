"""The low-res -> super-resolved curriculum of DESIGN.md (6): what branch B sees as training goes on."""

from __future__ import annotations


def curriculum_alpha(epoch_progress: float, start_epoch: float, ramp_epochs: float) -> float:
    """`curriculum_alpha` at a point of training (in epochs, fractional): 0 until `start_epoch` (branch B sees the
    bicubic upsample of the LR image), then a linear ramp to 1 (the SR output) over `ramp_epochs`."""
    if ramp_epochs <= 0:
        return 1.0 if epoch_progress >= start_epoch else 0.0
    return min(1.0, max(0.0, (epoch_progress - start_epoch) / ramp_epochs))
