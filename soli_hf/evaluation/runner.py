"""`soli evaluate`: models (PyTorch folders and/or ONNX folders) + data + split -> captions under each LR condition
-> metrics -> report files."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..bench.latency import footprint, time_captions
from ..captioner import Captioner, load_captioner
from ..data import load_caption_dataset_with_report, safe_load_image
from ..metrics import (
    caption_diversity,
    compute_caption_metrics,
    leave_one_out_human_scores,
    leave_one_out_model_scores,
)
from ..metrics.meteor import meteor_unavailable_reason
from ..training.checkpointing import EMA_MODEL_DIR, MODEL_DIR
from ..training.regions import first_images, region_ids
from .captioning import caption_dataset
from .conditions import LowResCondition
from .partial import PARTIAL_DIR, load_run, save_run, weights_stamp
from .regions import TAG_BASELINE, caption_region_dataset, check_region_captioners, region_references
from .report import ConditionResult, write_report

logger = logging.getLogger(__name__)

SAMPLES_ON_PAGE = 24
#: New tokens of every caption timed by `latency_photos` (12: about the mean Flickr8k caption, as in the latency
#: benchmark).
LATENCY_TOKENS = 12
#: The decoding settings each model's record in the report holds.
RECORDED_DECODING = ("num_beams", "max_new_tokens")


def model_labels(model_dirs: Sequence[str | Path], inference_branches: str | None) -> list[str]:
    """Short, distinct names for the report: the shortest tail of each path that no other model shares, the run
    folder included for a training run's `OUTPUT/model` (`stage2/model`, not `model`)."""
    paths = [Path(d).resolve().parts for d in model_dirs]
    labels = []
    for parts in paths:
        depth = 2 if parts[-1] in (MODEL_DIR, EMA_MODEL_DIR) and len(parts) > 1 else 1
        while depth < len(parts) and sum(other[-depth:] == parts[-depth:] for other in paths) > 1:
            depth += 1
        labels.append("/".join(parts[-depth:]))
    return [f"{label} [{inference_branches}]" if inference_branches else label for label in labels]


def model_record(label: str, source: str | Path, backend: str, captioner: Captioner, decoding: dict[str, int]) -> dict:
    """What the report says of one model: where it came from, how it ran (backend, inference mode, int8 or not),
    the decoding settings it actually used and what it weighs (files on disk, parameters trained and frozen)."""
    weight = footprint(captioner, source if Path(source).is_dir() else "")
    parameters = weight.parameters
    return {
        "model": label,
        "source": str(source),
        "backend": backend,
        "inference_branches": captioner.inference_branches,
        **{key: decoding[key] for key in RECORDED_DECODING},
        "quantization": captioner.quantization,
        "size_mib": weight.size_mib,
        "parameters": None
        if parameters is None
        else {
            "trained": parameters - weight.frozen_parameters,
            "frozen": weight.frozen_parameters,
        },
    }


def one_thread_latency_ms(captioner: Captioner, photos: Sequence[Image.Image]) -> float:
    """Median milliseconds per caption of a PyTorch captioner on one thread: batch 1, greedy, exactly
    `LATENCY_TOKENS` new tokens (as `scripts/benchmark.py latency` times them), each photo once after two untimed
    captions. The process's torch thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = time_captions(captioner, photos, repeats=1, warmup=2, tokens=LATENCY_TOKENS)
    finally:
        torch.set_num_threads(threads)
    return 1000 * float(np.median(seconds))


def _shared_setting(records: Sequence[dict[str, Any]], key: str) -> Any:
    """The value of `key` when every model used the same one, else "per model"."""
    values = {record[key] for record in records}
    return values.pop() if len(values) == 1 else "per model"


def run_evaluation(
    model_dirs: Sequence[str | Path],
    data: str | Path,
    split: str,
    out: str | Path,
    *,
    onnx_dirs: Sequence[str | Path] = (),
    conditions: Sequence[LowResCondition] = (LowResCondition(),),
    data_format: str | None = None,
    num_beams: int | None = None,
    batch_size: int = 50,
    max_new_tokens: int | None = None,
    max_images: int | None = None,
    inference_branches: str | None = None,
    num_threads: int | None = None,
    meteor: bool = True,
    latency_photos: int = 0,
    resume: bool = False,
) -> list[ConditionResult]:
    """Caption `split` of `data` with every model (saved SOLI folders or Hub ids in PyTorch, then exported ONNX
    folders) under every condition and write the report into `out`: metrics.json, captions.jsonl, report.md,
    samples.html (24 samples of the first condition) and, for sweeps, sweep_paper.png / sweep_sizes.png. With
    several models the report also says how many of each one's captions are identical to the first model's.

    Region data (`flickr30k_entities`: one row per box) is described box by box by region captioners (AlignCap
    folders; `evaluation.regions`), scored against each region's phrases, each model followed by its tag-only
    baseline (the tag head's top word); `max_images` then keeps the regions of the first photos, and there is no
    leave-one-out score (regions have 1 to 5 phrases).

    `num_beams` and `max_new_tokens` left None: each model's own generation config (or ONNX manifest); the report
    records what each model used. `inference_branches` replaces the saved mode of the PyTorch models; an ONNX
    folder must have been exported with it. `num_threads`: onnxruntime's threads. Bad samples of the split are
    skipped (`load_caption_dataset`'s "skip"), and the report counts them, with the images that could not be read
    while captioning. `latency_photos` > 0: each PyTorch model's one-thread milliseconds per caption on that many
    photos of the split (`one_thread_latency_ms`; whole-photo captioners only; time it on an otherwise idle machine).
    Each finished (model, condition) is saved under `out` (`evaluation.partial`) until the report is written;
    `resume` reuses what an interrupted evaluation with the same models, settings and split saved there (without
    it, anything saved before is discarded). Returns the per-(model, condition) results."""
    sources = [(model, "pytorch") for model in model_dirs] + [(folder, "onnx") for folder in onnx_dirs]
    if not sources:
        raise ValueError("give at least one model: a saved SOLI folder (--model) or an ONNX folder (--onnx)")
    rows, bad_samples = load_caption_dataset_with_report(data, split, data_format)
    regions = "box" in rows.column_names  # region rows (flickr30k_entities): a box and its chain's phrases
    if regions:
        rows = first_images(rows, max_images)
        references = region_references(rows)
    else:
        if max_images is not None:
            rows = rows.select(range(min(max_images, len(rows))))
        references = dict(zip(rows["image_id"], rows["captions"], strict=True))
    if meteor and (reason := meteor_unavailable_reason()) is not None:
        logger.warning("METEOR left out: %s", reason)
        meteor = False
    # people's leave-one-out score needs the same number of references everywhere: not for regions (1 to 5 phrases)
    human = {} if regions else leave_one_out_human_scores(references, meteor=meteor)
    results, records = [], []
    overrides = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    if not resume:
        shutil.rmtree(Path(out) / PARTIAL_DIR, ignore_errors=True)
    evaluated = {"data": str(data), "split": split, "rows": len(rows), "ids": _ids_digest(rows), "batch": batch_size}
    for (source, backend), label in zip(
        sources, model_labels([s for s, _ in sources], inference_branches), strict=True
    ):
        if backend == "onnx":
            captioner = load_captioner(onnx=source, inference_branches=inference_branches, num_threads=num_threads)
        else:
            captioner = load_captioner(source, inference_branches=inference_branches)
        if regions:
            check_region_captioners([captioner], [source])
        decoding = captioner.decoding(**overrides)
        records.append(model_record(label, source, backend, captioner, decoding))
        if latency_photos and backend == "pytorch" and not regions:
            loaded = (safe_load_image(rows[index], "skip") for index in range(min(latency_photos, len(rows))))
            photos = [photo.convert("RGB") for photo in loaded if photo is not None]
            records[-1]["latency_ms"] = one_thread_latency_ms(captioner, photos)
        for condition in conditions:
            settings = {
                "batch_size": batch_size,
                "keep_images": SAMPLES_ON_PAGE,
                "description": f"{label} {condition.name}",
            }
            key = {
                **evaluated,
                "model": str(source),
                "backend": backend,
                "weights": weights_stamp(source),
                "inference_branches": inference_branches,
                "condition": vars(condition),
                "decoding": decoding,
            }
            run = load_run(out, key) if resume else None
            if run is not None:
                logger.info("%s %s: saved captions reused (--resume)", label, condition.name)
            else:
                if regions:
                    run = caption_region_dataset(captioner, rows, condition, **settings, **decoding)
                else:
                    run = caption_dataset(captioner, rows, condition, **settings, **decoding)
                save_run(out, key, run)
            outputs = [(label, run.predictions, run.lr_images)]
            if regions and run.tag_predictions is not None:
                outputs.append((f"{label} {TAG_BASELINE}", run.tag_predictions, {}))
            if not run.predictions:
                raise ValueError(f"{data} ({split}): no readable image to caption")
            for name, predictions, lr_images in outputs:
                seen = {key: references[key] for key in predictions}
                result = ConditionResult(
                    name,
                    condition,
                    predictions,
                    compute_caption_metrics(predictions, seen, meteor=meteor) | caption_diversity(predictions),
                    {} if regions else leave_one_out_model_scores(predictions, seen, meteor=False),
                    run.skipped_images,
                    lr_images,
                )
                logger.info("%s %s: %s", name, condition.name, result.metrics)
                results.append(result)
    settings: dict[str, Any] = {
        "data": str(data),
        "split": split,
        "images": len(set(rows["image_id"])),
        **({"regions": len(rows)} if regions else {}),
        **{key: _shared_setting(records, key) for key in (*RECORDED_DECODING, "inference_branches")},
        "models": records,
    }
    write_report(Path(out), results, references, human, settings, bad_samples)
    return results


def _ids_digest(rows: Any) -> str:
    """A digest of the evaluated rows' ids (regions: their photos' and chains')."""
    ids = region_ids(rows) if "box" in rows.column_names else list(rows["image_id"])
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()
