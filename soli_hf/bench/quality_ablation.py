"""The caption-quality ablation of issue 15: one row per finished run of configs/ablation/ (which lever it pulls,
best epoch, dev CIDEr-D greedy of the trained weights and of their EMA, and, when the run was evaluated with
`soli evaluate --num_beams 3`, beam 3, BLEU-4, the share of distinct captions, the same with
`--inference-branches lr`, wall time) and dev CIDEr-D per epoch
of every run, as benchmarks/quality_ablation.{json,md,png}.

Rows accumulate: a run folder given again replaces its row, and the rows already recorded in the JSON of runs that
are not given (trained on another machine, whose run folders are not here) are kept as they were.

The runs are read with `training.reporting.summarize_run`, the figures behind `write_run_comparison`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..training.config import parse_training_config
from ..training.ema import EMA, EMA_PREFIX
from ..training.reporting import summarize_run
from .markdown import markdown_table
from .plots import saved_figure

#: Every ablation recipe writes its run to runs/ablation/<name>: the run folder's name is the recipe's.
RECIPE_FOLDER = "configs/ablation"
MISSING = "-"
#: Settings that say where and how a run was launched, not what it trained.
_LAUNCH_SETTINGS = {"output_dir", "resume", "overwrite_output_dir", "report_to"}


def run_recipe(run_dir: Path, recipe_folder: Path = Path(RECIPE_FOLDER)) -> str:
    """The command-line recipe of a run: `configs/ablation/<name>.yaml` for a row's own run; for a probe launched
    from another recipe with flags (e.g. the SCST learning-rate probes of `configs/ablation/scst/soli.yaml`), that
    recipe (the one of the same phase and starting model that needs the fewest flags) and the flags."""
    own = recipe_folder / f"{run_dir.name}.yaml"
    if own.is_file():
        return f"{RECIPE_FOLDER}/{own.name}"
    trained = json.loads((run_dir / "training_config.json").read_text(encoding="utf-8"))
    candidates = []
    for path in sorted(recipe_folder.rglob("*.yaml")):
        recipe = parse_training_config(["--config", str(path)]).to_dict()
        if (recipe["phase"], recipe["init_from"]) != (trained["phase"], trained.get("init_from")):
            continue
        flags = [
            f"--{key} {value}"
            for key, value in trained.items()
            if key not in _LAUNCH_SETTINGS and recipe.get(key) != value
        ]
        candidates.append((len(flags), f"{RECIPE_FOLDER}/{path.relative_to(recipe_folder)}", flags))
    if not candidates:
        return f"{run_dir / 'training_config.json'} (no recipe in {RECIPE_FOLDER})"
    _, path, flags = min(candidates)
    return " ".join([path, *flags])


def beam_metrics(evaluation_dir: Path, run_dir: Path) -> dict[str, float]:
    """The metrics of a run's saved model (`run_dir/model`) in a `soli evaluate` output folder: its first result
    (the main condition), found by the model's source where the evaluation compared several models."""
    summary = json.loads((evaluation_dir / "metrics.json").read_text(encoding="utf-8"))
    models = summary.get("settings", {}).get("models", [])
    if len(models) <= 1:
        return summary["results"][0]["metrics"]
    wanted = (run_dir / "model").resolve()
    labels = [model["model"] for model in models if Path(model["source"]).resolve() == wanted]
    if not labels:
        sources = ", ".join(model["source"] for model in models)
        raise ValueError(f"{evaluation_dir} evaluated {sources}, not {run_dir / 'model'}")
    return next(result["metrics"] for result in summary["results"] if result["model"] == labels[0])


def _best(history: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return max(values) if values else None


def ablation_row(run_dir: Path, beam_evaluation: Path | None, lr_evaluation: Path | None = None) -> dict[str, Any]:
    """One run's row: its name and recipe, best epoch and which weights earned it (trained or EMA), the best dev
    CIDEr-D (greedy) of the trained weights and of their EMA (None without one), beam-3 CIDEr-D, BLEU-4 and
    distinct captions of the saved model when `beam_evaluation` is given (else None), its beam-3 CIDEr-D with
    `inference_branches="lr"` when `lr_evaluation` is given (else None), BLEU-4 and distinct captions
    of the selected epoch (greedy), training + evaluation minutes (None when the run did not time its epochs) and
    its dev CIDEr-D per epoch (trained weights; EMA's, when kept). A fine-tuning run (SCST) counts its epochs after
    those of the model it started from (`first_epoch`), so that the plot draws it where that run ended."""
    summary = summarize_run(run_dir)
    history = summary["history"]
    offset = epochs_before(run_dir)
    beam = None if beam_evaluation is None else beam_metrics(beam_evaluation, run_dir)
    lr_mode = None if lr_evaluation is None else beam_metrics(lr_evaluation, run_dir)
    return {
        "name": run_dir.name,
        "recipe": run_recipe(run_dir),
        "run": str(run_dir),
        "model_variant": summary["model_variant"],
        "best_epoch": summary["best_epoch"],
        "best_weights": summary["best_weights"],
        "epochs_run": summary["epochs_run"],
        "cider_greedy": _best(history, "CIDEr"),
        "cider_greedy_ema": _best(history, EMA_PREFIX + "CIDEr"),
        "cider_beam3": None if beam is None else beam["CIDEr"],
        "cider_beam3_lr": None if lr_mode is None else lr_mode["CIDEr"],
        "bleu4": summary["dev_greedy"].get("Bleu_4"),
        "bleu4_beam3": None if beam is None else beam.get("Bleu_4"),
        "distinct_greedy": summary["dev_greedy"].get("distinct_captions"),
        "distinct_beam3": None if beam is None else beam.get("distinct_captions"),
        "wall_minutes": summary.get("train_and_eval_minutes"),
        "first_epoch": offset + 1,
        "cider_per_epoch": [[offset + entry["epoch"], entry["CIDEr"]] for entry in history],
        "ema_cider_per_epoch": [
            [offset + e["epoch"], e[EMA_PREFIX + "CIDEr"]] for e in history if EMA_PREFIX + "CIDEr" in e
        ],
    }


def epochs_before(run_dir: Path) -> int:
    """The epoch of the saved model a run started from (`init_from`'s `metrics.json`: its best epoch), 0 for a run
    from scratch or when that folder is gone."""
    config = json.loads((run_dir / "training_config.json").read_text(encoding="utf-8"))
    start = config.get("init_from")
    metrics = None if start is None else Path(start) / "metrics.json"
    if metrics is None or not metrics.is_file():
        return 0
    return int(json.loads(metrics.read_text(encoding="utf-8"))["best_epoch"])


def quality_ablation_markdown(results: Mapping[str, Any]) -> str:
    """The ablation table (Markdown), `-` where a figure was not measured."""
    header = [
        "run",
        "recipe",
        "best epoch",
        "dev CIDEr-D (greedy)",
        "EMA (greedy)",
        "dev CIDEr-D (beam 3)",
        "lr mode (beam 3)",
        "BLEU-4 (greedy / beam 3)",
        "distinct (greedy / beam 3)",
        "wall min",
    ]
    rows = [
        [
            row["name"],
            row["recipe"],
            f"{row['best_epoch']}/{row['epochs_run']}" + (" (EMA)" if row["best_weights"] == EMA else ""),
            *(_cell(row[key], 4) for key in ("cider_greedy", "cider_greedy_ema", "cider_beam3", "cider_beam3_lr")),
            f"{_cell(row['bleu4'], 4)} / {_cell(row['bleu4_beam3'], 4)}",
            f"{_percent(row['distinct_greedy'])} / {_percent(row['distinct_beam3'])}",
            _cell(row["wall_minutes"], 1),
        ]
        for row in results["runs"]
    ]
    return markdown_table(header, rows) + "\n\n" + per_epoch_markdown(results["runs"])


def per_epoch_markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    """Dev CIDEr-D (greedy) of every run after each epoch, trained weights / EMA: rows that stopped early (the
    cheaper lever-5 rows) are compared with the others at a common epoch."""
    epochs = sorted({epoch for row in runs for epoch, _ in row["cider_per_epoch"]})
    rows = []
    for row in runs:
        raw, ema = dict(row["cider_per_epoch"]), dict(row["ema_cider_per_epoch"])
        cells = [
            MISSING if epoch not in raw else _cell(raw[epoch], 3) + (f" / {ema[epoch]:.3f}" if epoch in ema else "")
            for epoch in epochs
        ]
        rows.append([row["name"], *cells])
    title = "Dev CIDEr-D (greedy) after each epoch, trained weights / EMA:"
    return title + "\n\n" + markdown_table(["run", *(str(epoch) for epoch in epochs)], rows)


def recorded_rows(out: Path) -> list[dict[str, Any]]:
    """The rows already in the ablation JSON `out` (none when it does not exist yet)."""
    if not out.is_file():
        return []
    return json.loads(out.read_text(encoding="utf-8"))["runs"]


def _cell(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _percent(share: float | None) -> str:
    return MISSING if share is None else f"{100 * share:.1f}%"


def plot_quality_ablation(rows: list[dict[str, Any]], path: Path) -> None:
    """Dev CIDEr-D (greedy) after each epoch of every run: the trained weights on the left, their EMA on the right,
    each run in one colour on both sides (matplotlib's 20-colour cycle), one legend for both beside them."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors
    with saved_figure(path, ncols=2, figsize=(13, 5), sharey=True) as (trained, averaged):
        for index, row in enumerate(rows):
            style = {"color": colours[index % len(colours)], "marker": "o", "markersize": 3}
            trained.plot(*zip(*row["cider_per_epoch"], strict=True), label=row["name"], **style)
            if row["ema_cider_per_epoch"]:
                averaged.plot(*zip(*row["ema_cider_per_epoch"], strict=True), **style)
        trained.set(xlabel="epoch", ylabel="dev CIDEr-D (greedy)", title="trained weights")
        averaged.set(xlabel="epoch", title="their EMA (decay 0.998)")
        for axis in (trained, averaged):
            axis.grid(alpha=0.3)
        trained.figure.suptitle("Caption-quality ablation: Flickr8k dev, 1,000 photos at 64x64")
        averaged.legend(*trained.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)


def write_quality_ablation(
    run_dirs: Sequence[Path],
    beam_evaluations: Mapping[Path, Path],
    out: Path,
    lr_evaluations: Mapping[Path, Path] | None = None,
) -> dict[str, Any]:
    """Write `out` (JSON) and, next to it, the table (.md) and dev CIDEr-D per epoch of every run (.png).
    `beam_evaluations` maps a run folder (one of `run_dirs`) to a beam-3 `soli evaluate` output folder of its saved
    model, `lr_evaluations` to one made with `--inference-branches lr` (a folder may hold several runs' models).
    The rows `out` already records of runs not in `run_dirs` are kept, in their place; new runs come after them."""
    lr_evaluations = lr_evaluations or {}
    unknown = sorted(str(run) for run in [*beam_evaluations, *lr_evaluations] if run not in run_dirs)
    if unknown:
        raise ValueError(f"beam evaluations of runs not among the runs: {unknown}")
    fresh = {run.name: ablation_row(run, beam_evaluations.get(run), lr_evaluations.get(run)) for run in run_dirs}
    kept = [fresh.pop(row["name"], row) for row in recorded_rows(out)]
    results = {"runs": [*kept, *fresh.values()]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(quality_ablation_markdown(results) + "\n", encoding="utf-8")
    plot_quality_ablation(results["runs"], out.with_suffix(".png"))
    return results
