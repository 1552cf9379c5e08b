"""Per-epoch evaluation: validation caption loss and greedy-decoding CIDEr-D / BLEU-4 on the dev split."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics import compute_caption_metrics
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_soli import SoliProcessor
from .data import model_inputs


@torch.no_grad()
def evaluate_captioner(
    model: SoliForConditionalGeneration,
    batches: Iterable[dict[str, Any] | None],
    processor: SoliProcessor,
    max_new_tokens: int,
    num_beams: int = 1,
    show_progress: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """Encode each batch once, score its captions (teacher forcing) and caption it with `generate()`.

    Returns the metrics (`val_loss`, `CIDEr`, `Bleu_4`, ...: coco-caption keys, without METEOR) and the
    generated caption of each image id.
    """
    was_training = model.training
    model.eval()
    loss_sum, loss_count = 0.0, 0
    predictions: dict[str, str] = {}
    references: dict[str, list[str]] = {}
    for batch in tqdm(batches, desc="evaluating", leave=False, disable=not show_progress):
        if batch is None:
            continue
        inputs = {k: v.to(model.device) for k, v in model_inputs(batch).items()}
        encoder_outputs = model.get_encoder()(inputs["pixel_values"])
        output = model(encoder_outputs=encoder_outputs, labels=inputs["labels"], attention_mask=inputs["attention_mask"])
        loss_sum += float(output.caption_loss) * len(batch["image_ids"])
        loss_count += len(batch["image_ids"])
        generated = model.generate(
            encoder_outputs=encoder_outputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
        )
        for image_id, caption, refs in zip(
            batch["image_ids"], processor.batch_decode(generated, skip_special_tokens=True), batch["references"]
        ):
            predictions[image_id] = caption
            references[image_id] = refs
    model.train(was_training)
    if not predictions:
        raise ValueError("evaluation data has no usable image")
    metrics = compute_caption_metrics(predictions, references, meteor=False)
    metrics["val_loss"] = loss_sum / loss_count
    return metrics, predictions
