"""An exponential moving average (EMA) of the weights, kept beside the trained ones (`ema_decay`).

After every optimizer step `ema = decay * ema + (1 - decay) * weights`, for every parameter; the buffers (batch-norm
statistics) are copied from the trained model, not averaged. This is torch's own `AveragedModel` with
`get_ema_multi_avg_fn` (one fused `lerp` per group of tensors); the first update copies the weights. Each epoch
scores both sets of weights (the EMA's metrics under `EMA_PREFIX`), and the better one by the selection metric is
the epoch's score for model selection and early stopping (`selected_weights`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA_PREFIX = "ema/"  # the EMA weights' metrics in an epoch's record: `CIDEr` (trained weights), `ema/CIDEr`
RAW, EMA = "raw", "ema"  # which weights an epoch's score (and the saved best model) comes from


def exponential_moving_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """A copy of `model` that `update_parameters(model)` moves towards `model`'s weights by `1 - decay` (a copy
    at the first update); `.module` is the averaged model (same class, same forward).

    `decay` is in (0, 1) (`TrainingConfig` checks `ema_decay`). Build it before `model` is compiled: a deep copy of
    a compiled module would keep calling the original.
    """
    # use_buffers=False: the parameters are averaged and the buffers copied (an average of batch counters or of
    # running statistics of weights that no longer exist is meaningless)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def selected_weights(metrics: dict[str, Any], metric: str, higher_is_better: bool = True) -> tuple[str, float]:
    """Which weights score better on `metric` in an epoch's `metrics`, and that score: (`EMA`, `metrics["ema/" +
    metric]`) when the EMA was scored and beats the trained weights, else (`RAW`, `metrics[metric]`); a tie keeps
    the trained weights. `higher_is_better` False: a loss, lower is better."""
    averaged = metrics.get(EMA_PREFIX + metric)
    if averaged is not None and is_better(averaged, metrics[metric], higher_is_better):
        return EMA, averaged
    return RAW, metrics[metric]


def is_better(score: float, than: float | None, higher_is_better: bool = True) -> bool:
    """Whether `score` beats `than` (None: nothing to beat yet); a tie does not."""
    return than is None or (score > than if higher_is_better else score < than)


def metrics_of(entry: dict[str, Any], weights: str) -> dict[str, Any]:
    """The metrics of one set of weights in an epoch's record (the EMA's without their prefix); the record's other
    figures (epoch, throughput, memory) are kept for either."""
    plain = {key: value for key, value in entry.items() if not key.startswith(EMA_PREFIX)}
    if weights == RAW:
        return plain
    return plain | {key.removeprefix(EMA_PREFIX): value for key, value in entry.items() if key.startswith(EMA_PREFIX)}
