"""Per-epoch evaluation: validation caption loss and CIDEr-D / BLEU-4 of the dev captions, made by the same
`Captioner` that `soli caption` and `soli evaluate` use; with an EMA of the weights, of both sets of weights.

A model that makes no captions yet, the dual-encoder Q-Former in its first (representation) stage, is scored on its
dev losses instead (`evaluate_representation`: ITC, ITM, ITG and their total), and its best epoch is the one of the
lowest dev ITG loss (`selection_metric`): image-grounded generation from the queries is the stage-1 task closest to
what stage 2 asks of them (and, unlike ITM's sampled negatives, it is deterministic).

The AlignCap region captioner describes each dev box from its cached region features (`evaluate_region_captioner`:
`model.generate`, the same call the region pipeline makes), scored against all the phrases of its chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from accelerate.utils import send_to_device
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin

from ..captioner import PytorchCaptioner
from ..metrics import caption_diversity, compute_caption_metrics
from .data import model_inputs
from .ema import EMA_PREFIX

#: The dev metric that selects the best epoch of a captioning model, and of a model in its representation stage.
CAPTION_SELECTION = ("CIDEr", True)  # (metric, higher is better)
REPRESENTATION_SELECTION = ("val_itg_loss", False)
REPRESENTATION_LOSSES = ("itc_loss", "itm_loss", "itg_loss")


def makes_captions(model: PreTrainedModel) -> bool:
    """False for a model in a representation stage (`config.training_stage` 1 of the dual-encoder Q-Former)."""
    return getattr(model.config, "training_stage", None) != 1


def selection_metric(model: PreTrainedModel) -> tuple[str, bool]:
    """The dev metric that picks the best epoch, the EMA's or the trained weights, early stopping and the plateau
    schedule, and whether higher is better: CIDEr-D of the dev captions, or dev ITG loss (lower) for a model that
    makes no captions yet."""
    return CAPTION_SELECTION if makes_captions(model) else REPRESENTATION_SELECTION


@torch.no_grad()
def evaluate_captioner(
    model: PreTrainedModel,
    batches: Iterable[dict[str, Any] | None],
    processor: ProcessorMixin,
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

    def describe(batch: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        names = ("pixel_values", "labels", "attention_mask", "prompt_ids")  # a text prompt, where one is used
        output = model(**{name: batch[name].to(model.device) for name in names if name in batch})
        captions = captioner.caption_pixels(batch["pixel_values"], num_beams=num_beams, max_new_tokens=max_new_tokens)
        return output.caption_loss, captions

    return _score_descriptions(model, batches, describe, unit="image", show_progress=show_progress)


@torch.no_grad()
def evaluate_region_captioner(
    model: PreTrainedModel,
    batches: Iterable[dict[str, Any]],
    processor: ProcessorMixin,
    *,
    num_beams: int,
    max_new_tokens: int,
    show_progress: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """`evaluate_captioner` for the AlignCap region captioner: each batch's region features (one row per region,
    with its first phrase) give the dev caption loss (`val_loss`) and the region's description
    (`model.generate(region_features=...)`, `num_beams` wide; 1 is greedy), scored against the region's references.
    Returns the metrics (CIDEr-D, BLEU, ROUGE-L, diversity; no METEOR) and the description of each region."""

    def describe(batch: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        inputs = send_to_device(model_inputs(batch), model.device)  # the region features are a ModelOutput
        output = model(**inputs)
        tokens = model.generate(
            region_features=inputs["region_features"], num_beams=num_beams, max_new_tokens=max_new_tokens
        )
        return output.caption_loss, processor.batch_decode(tokens, skip_special_tokens=True)

    return _score_descriptions(model, batches, describe, unit="region", show_progress=show_progress)


def _score_descriptions(
    model: PreTrainedModel,
    batches: Iterable[dict[str, Any] | None],
    describe: Callable[[dict[str, Any]], tuple[torch.Tensor, list[str]]],
    *,
    unit: str,
    show_progress: bool,
) -> tuple[dict[str, float], dict[str, str]]:
    """The loop of `evaluate_captioner` and `evaluate_region_captioner`, in eval mode (the model's mode restored
    afterwards): `describe(batch)` gives the batch's caption loss and the description of each of its `image_ids`
    (`None` batches are skipped); returns the metrics with the mean `val_loss` and the descriptions."""
    was_training = model.training
    model.eval()
    loss_sum, loss_count = 0.0, 0
    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    try:
        for batch in tqdm(batches, desc="evaluating", leave=False, disable=not show_progress):
            if batch is None:
                continue
            loss, captions = describe(batch)
            loss_sum += float(loss) * len(batch["image_ids"])
            loss_count += len(batch["image_ids"])
            for name, caption, refs in zip(batch["image_ids"], captions, batch["references"], strict=True):
                predictions[name] = caption
                references[name] = refs
    finally:
        model.train(was_training)
    if not predictions:
        raise ValueError(f"evaluation data has no usable {unit}")
    metrics = compute_caption_metrics(predictions, references, meteor=False) | caption_diversity(predictions)
    metrics["val_loss"] = loss_sum / loss_count
    return metrics, predictions


def evaluate_representation(
    model: PreTrainedModel, batches: Iterable[dict[str, Any] | None], *, show_progress: bool = True
) -> tuple[dict[str, float], dict[str, str]]:
    """The dev losses of a model in its representation stage, in eval mode (its mode restored afterwards), each the
    mean over the images of the batches that have it (ITC and ITM need two images in a batch): `val_itc_loss`,
    `val_itm_loss`, `val_itg_loss` and their weighted total `val_loss`. ITM's hard negatives are drawn from a fixed
    seed (the global random state is left as it was), so both sets of weights and a resumed run see the same ones.
    Returns the metrics and no captions ({}), like `evaluate_captioner`."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for batch in tqdm(batches, desc="evaluating", leave=False, disable=not show_progress):
                if batch is None:
                    continue
                output = model(**{name: value.to(model.device) for name, value in model_inputs(batch).items()})
                images = len(batch["image_ids"])
                for name in ("loss", *REPRESENTATION_LOSSES):
                    if output[name] is not None:
                        sums[name] = sums.get(name, 0.0) + float(output[name]) * images
                        counts[name] = counts.get(name, 0) + images
    finally:
        model.train(was_training)
    if not counts:
        raise ValueError("evaluation data has no usable image")
    if "itg_loss" not in counts:
        raise ValueError("stage 1 selects the best epoch on the dev ITG loss: the model's itg_weight must be > 0")
    return {f"val_{name}": sums[name] / counts[name] for name in sums}, {}


def evaluate_epoch(
    model: PreTrainedModel,
    averaged: PreTrainedModel | None,
    batches: Iterable[dict[str, Any] | None],
    processor: ProcessorMixin,
    **settings: Any,
) -> dict[str, float]:
    """An epoch's dev metrics: `evaluate_captioner(model, ...)`'s (`evaluate_representation`'s for a model that makes
    no captions yet, `evaluate_region_captioner`'s for a region captioner), and, when an EMA of the weights is kept
    (`averaged`), the EMA model's under `EMA_PREFIX` (`ema/CIDEr`, ...).
    `settings`: `evaluate_captioner`'s keyword arguments."""

    def evaluate(weights: PreTrainedModel) -> dict[str, float]:
        if weights.config.model_type == "aligncap":
            return evaluate_region_captioner(weights, batches, processor, **settings)[0]
        if makes_captions(weights):
            return evaluate_captioner(weights, batches, processor, **settings)[0]
        return evaluate_representation(weights, batches, show_progress=settings.get("show_progress", True))[0]

    metrics = evaluate(model)
    if averaged is not None:
        metrics |= {EMA_PREFIX + name: value for name, value in evaluate(averaged).items()}
    return metrics
