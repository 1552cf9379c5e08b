"""Pictures of a training run: loss curves and per-epoch dev metrics (matplotlib, written as PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_KEYS = ("loss", "caption_loss", "contrastive_loss", "sr_loss", "reward")
EPOCH_KEYS = ("CIDEr", "Bleu_4", "val_loss")


def plot_training_curves(step_log: Path, history: list[dict[str, Any]], out: Path) -> None:
    """Left: the step losses (smoothed); right: dev CIDEr-D, BLEU-4 and validation loss per epoch."""
    records = [json.loads(line) for line in step_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in LOSS_KEYS:
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points)
            left.plot(steps, _smooth(values), label=key)
    left.set(xlabel="step", title="training (EMA 0.9)")
    left.legend()
    epochs = [entry["epoch"] for entry in history]
    for key in EPOCH_KEYS:
        if history and key in history[0]:
            right.plot(epochs, [entry[key] for entry in history], marker="o", label=key)
    right.set(xlabel="epoch", title="dev split (greedy)")
    right.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _smooth(values: tuple[float, ...], decay: float = 0.9) -> list[float]:
    smoothed, running = [], values[0]
    for value in values:
        running = decay * running + (1 - decay) * value
        smoothed.append(running)
    return smoothed
