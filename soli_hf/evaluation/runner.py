"""`soli evaluate`: models + data + split -> captions under each LR condition -> metrics -> report files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import load_caption_dataset_with_report
from ..metrics import compute_caption_metrics, leave_one_out_human_scores, leave_one_out_model_scores
from ..metrics.meteor import meteor_unavailable_reason
from ..caption_files import load_captioner
from .captioning import caption_dataset
from .conditions import LowResCondition
from .report import ConditionResult, write_report

logger = logging.getLogger(__name__)

SAMPLES_ON_PAGE = 24


def model_labels(model_dirs: Sequence[str | Path], inference_branches: str | None) -> list[str]:
    """Short, distinct names for the report: the shortest tail of each path (`model`, `run/model`, ...) that no
    other model shares."""
    paths = [Path(d).resolve().parts for d in model_dirs]
    labels = []
    for parts in paths:
        depth = 1
        while depth < len(parts) and sum(other[-depth:] == parts[-depth:] for other in paths) > 1:
            depth += 1
        labels.append("/".join(parts[-depth:]))
    return [f"{label} [{inference_branches}]" if inference_branches else label for label in labels]


def run_evaluation(
    model_dirs: Sequence[str | Path],
    data: str | Path,
    split: str,
    out: str | Path,
    *,
    conditions: Sequence[LowResCondition] = (LowResCondition(),),
    data_format: str | None = None,
    num_beams: int = 1,
    batch_size: int = 50,
    max_new_tokens: int = 20,
    max_images: int | None = None,
    inference_branches: str | None = None,
    meteor: bool = True,
) -> list[ConditionResult]:
    """Caption `split` of `data` with every model under every condition and write the report into `out`:
    metrics.json, captions.jsonl, report.md, samples.html (24 samples of the first condition) and, for sweeps,
    sweep_paper.png / sweep_sizes.png. Bad samples of the split are skipped (`load_caption_dataset`'s "skip"), and
    the report counts them, with the images that could not be read while captioning. Returns the per-(model,
    condition) results."""
    if not model_dirs:
        raise ValueError("give at least one --model folder")
    rows, bad_samples = load_caption_dataset_with_report(data, split, data_format)
    if max_images is not None:
        rows = rows.select(range(min(max_images, len(rows))))
    references = dict(zip(rows["image_id"], rows["captions"]))
    if meteor and (reason := meteor_unavailable_reason()) is not None:
        logger.warning("METEOR left out: %s", reason)
        meteor = False
    human = leave_one_out_human_scores(references, meteor=meteor)
    results = []
    for model_dir, label in zip(model_dirs, model_labels(model_dirs, inference_branches)):
        model, processor = load_captioner(model_dir, inference_branches)
        for condition in conditions:
            run = caption_dataset(
                model, processor, rows, condition, batch_size=batch_size, num_beams=num_beams,
                max_new_tokens=max_new_tokens, keep_images=SAMPLES_ON_PAGE, description=f"{label} {condition.name}",
            )  # fmt: skip
            if not run.predictions:
                raise ValueError(f"{data} ({split}): no readable image to caption")
            seen = {image_id: references[image_id] for image_id in run.predictions}
            result = ConditionResult(
                label, condition, run.predictions,
                compute_caption_metrics(run.predictions, seen, meteor=meteor),
                leave_one_out_model_scores(run.predictions, seen, meteor=False),
                run.skipped_images, run.lr_images,
            )  # fmt: skip
            logger.info("%s %s: %s", label, condition.name, result.metrics)
            results.append(result)
    settings: dict[str, Any] = {
        "data": str(data), "split": split, "images": len(rows), "num_beams": num_beams,
        "max_new_tokens": max_new_tokens, "inference_branches": inference_branches or "as saved",
        "models": [str(d) for d in model_dirs],
    }  # fmt: skip
    write_report(Path(out), results, references, human, settings, bad_samples)
    return results
