"""Per-epoch evaluation: validation caption loss and CIDEr-D / BLEU-4 of the dev captions, made by the same
`Captioner` that `soli caption` and `soli evaluate` use; with an EMA of the weights, of both sets of weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..captioner import PytorchCaptioner
from ..metrics import caption_diversity, compute_caption_metrics
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_soli import SoliProcessor
from .ema import EMA_PREFIX


@torch.no_grad()
def evaluate_captioner(
    model: SoliForConditionalGeneration,
    batches: Iterable[dict[str, Any] | None],
    processor: SoliProcessor,
    *,
    num_beams: int,
    max_new_tokens: int,
    show_progress: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """Score each batch's captions with the model (teacher forcing: `val_loss`) and caption its images with
    `PytorchCaptioner(model, processor).caption_pixels(...)` (no sampling; `num_beams` 1 is greedy), in eval mode;
    the model's mode is restored afterwards.

    Each batch is encoded twice, once for the loss and once inside `generate()`: the encoder is a small part of
    the time next to decoding, and the captions then come from the one captioning path.

    Returns the metrics (`val_loss`, `CIDEr`, `Bleu_4`, ...: coco-caption keys, without METEOR) and the
    generated caption of each image id.
    """
    captioner = PytorchCaptioner(model, processor)
    was_training = model.training
    model.eval()
    loss_sum, loss_count = 0.0, 0
    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    try:
        for batch in tqdm(batches, desc="evaluating", leave=False, disable=not show_progress):
            if batch is None:
                continue
            inputs = {name: batch[name].to(model.device) for name in ("pixel_values", "labels", "attention_mask")}
            output = model(**inputs)
            loss_sum += float(output.caption_loss) * len(batch["image_ids"])
            loss_count += len(batch["image_ids"])
            captions = captioner.caption_pixels(
                batch["pixel_values"], num_beams=num_beams, max_new_tokens=max_new_tokens
            )
            for image_id, caption, refs in zip(batch["image_ids"], captions, batch["references"], strict=True):
                predictions[image_id] = caption
                references[image_id] = refs
    finally:
        model.train(was_training)
    if not predictions:
        raise ValueError("evaluation data has no usable image")
    metrics = compute_caption_metrics(predictions, references, meteor=False) | caption_diversity(predictions)
    metrics["val_loss"] = loss_sum / loss_count
    return metrics, predictions


def evaluate_epoch(
    model: SoliForConditionalGeneration,
    averaged: SoliForConditionalGeneration | None,
    batches: Iterable[dict[str, Any] | None],
    processor: SoliProcessor,
    **settings: Any,
) -> dict[str, float]:
    """An epoch's dev metrics: `evaluate_captioner(model, ...)`'s, and, when an EMA of the weights is kept
    (`averaged`), the EMA model's under `EMA_PREFIX` (`ema/CIDEr`, ...). `settings`: `evaluate_captioner`'s
    keyword arguments."""
    metrics, _ = evaluate_captioner(model, batches, processor, **settings)
    if averaged is not None:
        averaged_metrics, _ = evaluate_captioner(averaged, batches, processor, **settings)
        metrics |= {EMA_PREFIX + name: value for name, value in averaged_metrics.items()}
    return metrics
