"""Evaluation reports: caption a split under low-resolution conditions (the paper's protocol, fixed sizes) with
one or more models (any `Captioner`: saved SOLI folders in PyTorch, exported ONNX folders), score with coco-caption
metrics and a human leave-one-out reference, write the report.

    soli evaluate --model runs/flickr8k_cpu/model --data ../shared/data/flickr8k --split dev --out reports/dev
    soli evaluate --onnx onnx/fp32 onnx/int8 --data ../shared/data/flickr8k --split dev --out reports/int8

Modules:
    conditions  :class:`LowResCondition`, :func:`paper_protocol`, :func:`fixed_sizes`
    captioning  :func:`caption_dataset` (batched, any `Captioner`, progress bar)
    report      metrics.json, captions.jsonl, report.md, samples.html, resolution plots, caption agreement
    runner      :func:`run_evaluation`, the whole job
"""

from .captioning import CaptionRun, caption_dataset
from .conditions import PAPER_DEGRADATIONS, PAPER_SCALE_FACTORS, LowResCondition, fixed_sizes, paper_protocol
from .report import ConditionResult, caption_agreement, write_report
from .runner import run_evaluation

__all__ = [
    "PAPER_DEGRADATIONS",
    "PAPER_SCALE_FACTORS",
    "CaptionRun",
    "ConditionResult",
    "LowResCondition",
    "caption_agreement",
    "caption_dataset",
    "fixed_sizes",
    "paper_protocol",
    "run_evaluation",
    "write_report",
]
