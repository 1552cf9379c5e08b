"""The caption-quality ablation of issue 15: one row per finished run of configs/ablation/ (which lever it pulls,
best epoch, dev CIDEr-D greedy and, when the run was evaluated with `soli evaluate --num_beams 3`, beam 3, BLEU-4,
wall time) and dev CIDEr-D per epoch of every run, as benchmarks/quality_ablation.{json,md,png}.

The runs are read with `training.reporting.summarize_run`, the figures behind `write_run_comparison`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..training.reporting import summarize_run
from .markdown import markdown_table
from .plots import saved_figure

#: Every ablation recipe writes its run to runs/ablation/<name>: the run folder's name is the recipe's.
RECIPE_FOLDER = "configs/ablation"
MISSING = "-"


def beam_cider(evaluation_dir: Path) -> float:
    """Corpus CIDEr-D of a `soli evaluate` output folder (its `metrics.json`'s first result)."""
    summary = json.loads((evaluation_dir / "metrics.json").read_text(encoding="utf-8"))
    return summary["results"][0]["metrics"]["CIDEr"]


def ablation_row(run_dir: Path, beam_evaluation: Path | None) -> dict[str, Any]:
    """One run's row: its name and recipe, best epoch, dev CIDEr-D (greedy; beam 3 when `beam_evaluation` is
    given, else None), BLEU-4, training + evaluation minutes (None when the run did not time its epochs) and its
    dev CIDEr-D per epoch."""
    summary = summarize_run(run_dir)
    return {
        "name": run_dir.name,
        "recipe": f"{RECIPE_FOLDER}/{run_dir.name}.yaml",
        "run": str(run_dir),
        "model_variant": summary["model_variant"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "cider_greedy": summary["dev_greedy"]["CIDEr"],
        "cider_beam3": None if beam_evaluation is None else beam_cider(beam_evaluation),
        "bleu4": summary["dev_greedy"].get("Bleu_4"),
        "wall_minutes": summary.get("train_and_eval_minutes"),
        "cider_per_epoch": [[entry["epoch"], entry["CIDEr"]] for entry in summary["history"]],
    }


def quality_ablation_markdown(results: Mapping[str, Any]) -> str:
    """The ablation table (Markdown), `-` where a figure was not measured."""
    header = ["run", "recipe", "best epoch", "dev CIDEr-D (greedy)", "dev CIDEr-D (beam 3)", "BLEU-4", "wall min"]
    rows = [
        [
            row["name"],
            row["recipe"],
            f"{row['best_epoch']}/{row['epochs_run']}",
            *(_cell(row[key], digits) for key, digits in (("cider_greedy", 4), ("cider_beam3", 4), ("bleu4", 4))),
            _cell(row["wall_minutes"], 1),
        ]
        for row in results["runs"]
    ]
    return markdown_table(header, rows)


def _cell(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def write_quality_ablation(
    run_dirs: Sequence[Path], beam_evaluations: Mapping[Path, Path], out: Path
) -> dict[str, Any]:
    """Write `out` (JSON) and, next to it, the table (.md) and dev CIDEr-D per epoch of every run (.png).
    `beam_evaluations` maps a run folder (one of `run_dirs`) to its beam-3 `soli evaluate` output folder."""
    unknown = sorted(str(run) for run in beam_evaluations if run not in run_dirs)
    if unknown:
        raise ValueError(f"beam evaluations of runs not among the runs: {unknown}")
    results = {"runs": [ablation_row(run, beam_evaluations.get(run)) for run in run_dirs]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(quality_ablation_markdown(results) + "\n", encoding="utf-8")
    with saved_figure(out.with_suffix(".png"), figsize=(7, 4.5)) as axis:
        for row in results["runs"]:
            epochs, ciders = zip(*row["cider_per_epoch"], strict=True)
            axis.plot(epochs, ciders, marker="o", label=row["name"])
        axis.set(xlabel="epoch", ylabel="dev CIDEr-D (greedy)", title="caption-quality ablation, Flickr8k dev, 64x64")
        axis.legend()
    return results
