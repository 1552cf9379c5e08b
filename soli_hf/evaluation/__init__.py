"""Evaluation reports: caption a split under low-resolution conditions (the paper's protocol, fixed sizes) with
one or more models, score with coco-caption metrics and a human leave-one-out reference, write the report.

    soli evaluate --model runs/flickr8k_cpu/model --data ../shared/data/flickr8k --split dev --out reports/dev

Modules:
    conditions  :class:`LowResCondition`, :func:`paper_protocol`, :func:`fixed_sizes`
    captioning  :func:`caption_dataset` (batched `generate`, progress bar)
    report      metrics.json, captions.jsonl, report.md, samples.html, resolution plots
    runner      :func:`run_evaluation`, the whole job
"""

from .captioning import CaptionRun, caption_dataset
from .conditions import PAPER_DEGRADATIONS, PAPER_SCALE_FACTORS, LowResCondition, fixed_sizes, paper_protocol
from .report import ConditionResult, write_report
from ..caption_files import load_captioner
from .runner import run_evaluation

__all__ = [
    "PAPER_DEGRADATIONS",
    "PAPER_SCALE_FACTORS",
    "CaptionRun",
    "ConditionResult",
    "LowResCondition",
    "caption_dataset",
    "fixed_sizes",
    "load_captioner",
    "paper_protocol",
    "run_evaluation",
    "write_report",
]
