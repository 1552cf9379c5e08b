"""Pictures and tables of training runs: loss curves and per-epoch dev metrics (matplotlib PNG), and the
comparison of several finished runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bench.markdown import markdown_table
from ..bench.plots import saved_figure
from .ema import EMA, EMA_PREFIX, RAW, metrics_of

LOSS_KEYS = ("loss", "caption_loss", "contrastive_loss", "sr_loss", "reward", "itc_loss", "itm_loss", "itg_loss")
EPOCH_KEYS = ("CIDEr", "Bleu_4", "val_loss", "val_itg_loss")  # val_itg_loss: the Q-Former family's stage 1


def plot_training_curves(step_log: Path, history: list[dict[str, Any]], out: Path) -> None:
    """Left: the step losses (smoothed); right: dev CIDEr-D, BLEU-4 and validation loss per epoch (and those of the
    EMA weights, dashed, when the run kept an EMA)."""
    records = [json.loads(line) for line in step_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    with saved_figure(out, 1, 2, figsize=(11, 4)) as (left, right):
        for key in LOSS_KEYS:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                left.plot(steps, _smooth(values), label=key)
        left.set(xlabel="step", title="training (EMA 0.9)")
        left.legend()
        epochs = [entry["epoch"] for entry in history]
        for key in (*EPOCH_KEYS, *(EMA_PREFIX + key for key in EPOCH_KEYS)):
            if history and key in history[0]:
                style = "--" if key.startswith(EMA_PREFIX) else "-"
                right.plot(epochs, [entry[key] for entry in history], style, marker="o", label=key)
        right.set(xlabel="epoch", title="dev split (greedy)")
        right.legend()


def _smooth(values: tuple[float, ...], decay: float = 0.9) -> list[float]:
    smoothed, running = [], values[0]
    for value in values:
        running = decay * running + (1 - decay) * value
        smoothed.append(running)
    return smoothed


SUMMARY_METRICS = ("CIDEr", "Bleu_4", "Bleu_1", "ROUGE_L", "distinct_captions", "val_loss")


def training_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """From a run's `metrics.json`: best epoch and the dev metrics of its selected weights (the trained ones, or the
    EMA's: `best_weights`), epochs run and the schedule's, median training throughput (images/s, data pipeline
    included) and peak memory."""
    history = metrics["history"]
    best = metrics_of(metrics["best"], metrics.get("best_weights") or RAW)
    speeds = sorted(entry["train_images_per_second"] for entry in history)
    return {
        "epochs_run": len(history),
        "num_epochs": metrics.get("num_epochs", len(history)),  # the schedule's (more when stopped early or cut)
        "best_epoch": metrics["best_epoch"],
        "best_weights": metrics.get("best_weights") or RAW,
        "dev_greedy": {key: best[key] for key in SUMMARY_METRICS if key in best},
        "train_images_per_second": speeds[len(speeds) // 2],
        "peak_memory_mb": max(entry["peak_memory_mb"] for entry in history),
    }


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run (`OUTPUT` of scripts/train.py): its variant and phase (the dual-encoder
    Q-Former's: its model type and training stage), `training_figures`, the whole history and, when the run recorded
    them, its training + evaluation minutes."""
    metrics = json.loads((run_dir / "model" / "metrics.json").read_text(encoding="utf-8"))
    config = json.loads((run_dir / "training_config.json").read_text(encoding="utf-8"))
    history = metrics["history"]
    if config.get("model_type", "soli") == "soli":
        summary = {"run": str(run_dir), "model_variant": config["model_variant"], "phase": config["phase"]}
    elif config["model_type"] == "aligncap":  # the region captioner: its family and decoder
        summary = {"run": str(run_dir), "model_variant": "aligncap", "phase": f"{config['decoder_type']} decoder"}
    else:  # the dual-encoder Q-Former: its family and training stage
        summary = {
            "run": str(run_dir),
            "model_variant": config["model_type"],
            "phase": f"stage {config['training_stage']}",
        }
    summary |= training_figures(metrics) | {"history": history}
    if all("train_seconds" in entry for entry in history):
        summary["train_and_eval_minutes"] = sum(e["train_seconds"] + e["eval_seconds"] for e in history) / 60
    return summary


def write_run_comparison(run_dirs: list[Path], out_dir: Path, at_epoch: int | None = None) -> dict[str, Any]:
    """`comparison.json`, a Markdown table (`comparison.md`) and dev CIDEr-D per epoch (`comparison.png`) of
    several runs: each run's best epoch, or with `at_epoch` every run's dev metrics after that epoch (trained
    weights), the fair comparison of runs cut at the same epoch of one schedule (`stop_after_epochs`)."""
    runs = [summarize_run(run_dir) for run_dir in run_dirs]
    if at_epoch is not None:
        short = [run["run"] for run in runs if run["epochs_run"] < at_epoch]
        if short:
            raise ValueError(f"runs that did not reach epoch {at_epoch}: {', '.join(short)}")
        for run in runs:
            at = metrics_of(run["history"][at_epoch - 1], RAW)
            run["dev_greedy"] = {key: at[key] for key in SUMMARY_METRICS if key in at}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps({"at_epoch": at_epoch, "runs": runs}, indent=2), "utf-8")
    header = ["run", "variant", "phase", "best epoch" if at_epoch is None else "epoch", *SUMMARY_METRICS]
    header += ["train img/s", "peak MB"]
    rows = [
        [
            run["run"],
            run["model_variant"],
            run["phase"],
            f"{run['best_epoch'] if at_epoch is None else at_epoch}/{run['num_epochs']}"
            + (" (EMA)" if at_epoch is None and run["best_weights"] == EMA else ""),
            *(f"{run['dev_greedy'][key]:.4f}" if key in run["dev_greedy"] else "" for key in SUMMARY_METRICS),
            f"{run['train_images_per_second']:.1f}",
            f"{run['peak_memory_mb']:.0f}",
        ]
        for run in runs
    ]
    (out_dir / "comparison.md").write_text(markdown_table(header, rows) + "\n", encoding="utf-8")
    with saved_figure(out_dir / "comparison.png", figsize=(6, 4)) as axis:
        for run in runs:
            history = run["history"]
            axis.plot([e["epoch"] for e in history], [e["CIDEr"] for e in history], marker="o", label=run["run"])
        if at_epoch is not None:
            axis.axvline(at_epoch, color="grey", linestyle=":", label=f"compared at epoch {at_epoch}")
        axis.set(xlabel="epoch", ylabel="dev CIDEr-D (greedy)", title="dev split")
        axis.legend()
    return {"at_epoch": at_epoch, "runs": runs}
