"""Fill the model card template (model_cards/template.md) from a model folder, its recipe and evaluation reports,
so that every figure on the card comes from a file a command wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

from ..configuration_soli import SoliConfig
from ..evaluation.report import REPORT_METRICS
from ..modeling_soli import SoliForConditionalGeneration
from ..training.reporting import training_figures
from .flops import model_summary
from .latency_report import latency_markdown
from .markdown import markdown_table, metric_cells
from .quality_ablation import quality_ablation_markdown

MAIN_CONDITION = "bicubic@input"
#: The training options beyond the paper's losses that the card names with this model's values (0 / False: off).
OPTIONAL_TRAINING_SETTINGS = (
    "distillation_weight",
    "num_tags",
    "tags_in_memory",
    "label_smoothing",
    "lr_only_probability",
)


def load_evaluations(evaluation_dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The results of several `soli evaluate` reports (in order), the first report's settings and its human score."""
    reports = [json.loads((Path(d) / "metrics.json").read_text(encoding="utf-8")) for d in evaluation_dirs]
    if not reports:
        raise ValueError("give at least one evaluation report folder (soli evaluate --out DIR)")
    results = [result for report in reports for result in report["results"]]
    return results, reports[0]["settings"], reports[0]["human_leave_one_out"]


def results_table(results: list[dict[str, Any]], settings: dict[str, Any], input_size: int) -> str:
    """Markdown: every model (and inference mode) on the main LR condition."""
    rows = [r for r in results if r["condition"]["name"] == MAIN_CONDITION]
    if not rows:
        raise ValueError(f"the evaluation reports hold no {MAIN_CONDITION} result (soli evaluate's main condition)")
    table = markdown_table(
        ["model", *REPORT_METRICS], [[row["model"], *metric_cells(row["metrics"], REPORT_METRICS, 3)] for row in rows]
    )
    return (
        f"{settings['images']} dev images at {input_size}x{input_size} (bicubic), beam search {settings['num_beams']}, "
        f"coco-caption metrics (CIDEr is CIDEr-D):\n\n{table}"
    )


def protocol_table(results: list[dict[str, Any]]) -> str:
    """Markdown: CIDEr-D / BLEU-4 per model and degradation over the paper's scale factors ('' when absent)."""
    rows = [r for r in results if r["condition"]["scale_factor"] is not None]
    if not rows:
        return ""
    factors = sorted({r["condition"]["scale_factor"] for r in rows}, reverse=True)
    series = list(dict.fromkeys((r["model"], r["condition"]["degradation"]) for r in rows))
    table_rows = []
    for model, degradation in series:
        by_factor = {
            r["condition"]["scale_factor"]: r["metrics"]
            for r in rows
            if (r["model"], r["condition"]["degradation"]) == (model, degradation)
        }
        cells = [
            f"{by_factor[f]['CIDEr']:.3f} / {by_factor[f]['Bleu_4']:.3f}" if f in by_factor else "" for f in factors
        ]
        table_rows.append([model, degradation, *cells])
    table = markdown_table(["model", "degradation", *(f"x{f:g}" for f in factors)], table_rows)
    return (
        "Over the SOLI paper's protocol (the photo reduced to a fraction of its size, then given to the model at its\n"
        f"input size); CIDEr-D / BLEU-4:\n\n{table}"
    )


def recipe_section(model_dir: Path, recipe: Path | None, training_command: str | None) -> str:
    """The recipe file verbatim, the command, and the run's own training figures."""
    parts = []
    if training_command:
        parts.append(f"```bash\n{training_command}\n```")
    if recipe is not None:
        parts.append(f"`{recipe.as_posix()}`:\n\n```yaml\n{recipe.read_text(encoding='utf-8').strip()}\n```")
    metrics_file = model_dir / "metrics.json"
    if metrics_file.is_file():
        figures = training_figures(json.loads(metrics_file.read_text(encoding="utf-8")))
        best = figures["dev_greedy"]
        parts.append(
            f"Best epoch {figures['best_epoch']} of {figures['epochs_run']} (kept by greedy dev CIDEr-D "
            f"{best['CIDEr']:.3f}, BLEU-4 {best['Bleu_4']:.3f}); training throughput "
            f"{figures['train_images_per_second']:.1f} images/s (data pipeline included), peak memory "
            f"{figures['peak_memory_mb']:.0f} MB."
        )
    return "\n\n".join(parts)


def latency_section(benchmark: Path | None) -> str:
    """Markdown from `scripts/benchmark.py latency` JSON, or a line saying latency was not measured."""
    if benchmark is None:
        return "Not measured yet."
    report = json.loads(benchmark.read_text(encoding="utf-8"))
    machine = report["machine"]
    cpu = machine.get("cpu_model", machine["processor"])
    intro = (
        f"`python scripts/benchmark.py latency` ({benchmark.as_posix()}) on {cpu} with {machine['cpus']} CPUs. On a "
        "shared virtual machine the medians vary by about 30% between runs."
    )
    return f"{intro}\n\n{latency_markdown(report)}"


def ablation_section(config: SoliConfig, ablation: Path | None, findings: Path | None = None) -> str:
    """This model's values of the optional training settings, and the ablation table of what each lever bought
    (`scripts/benchmark.py ablation` JSON) when given, followed by `findings` (Markdown: what the rows say)."""
    settings = ", ".join(f"`{name}={getattr(config, name)!r}`" for name in OPTIONAL_TRAINING_SETTINGS)
    text = f"This model: {settings}."
    if ablation is None:
        return text
    table = quality_ablation_markdown(json.loads(ablation.read_text(encoding="utf-8")))
    return (
        f"{text}\n\nWhat each lever bought, one change per row from one recipe (`python scripts/benchmark.py "
        f"ablation`, {ablation.as_posix()}; dev split, 64x64; greedy columns are the best epoch's, beam-3 columns each "
        f"run's saved model with its own decoding, which allows repeated trigrams):\n\n{table}"
        + (f"\n\n{findings.read_text(encoding='utf-8').strip()}" if findings is not None else "")
    )


def _count(value: float) -> str:
    return f"{value / 1e9:.2f} G" if value >= 1e9 else f"{value / 1e6:.1f} M"


def render_model_card(
    template: str,
    model_dir: Path,
    evaluation_dirs: Sequence[Path],
    *,
    repo_id: str,
    recipe: Path | None = None,
    training_command: str | None = None,
    evaluation_command: str | None = None,
    hardware: str = "on a CPU",
    latency_benchmark: Path | None = None,
    ablation: Path | None = None,
    ablation_findings: Path | None = None,
) -> str:
    """The filled card (Markdown with YAML front matter); `ablation` is the JSON of `scripts/benchmark.py
    ablation`, `ablation_findings` a Markdown file of what its rows say."""
    model = SoliForConditionalGeneration.from_pretrained(model_dir)
    summary = model_summary(model)
    results, settings, human = load_evaluations(evaluation_dirs)
    size = model.config.image_size
    flops = ", ".join(
        f'{_count(f["total"])}FLOPs per caption with `inference_branches="{mode}"`'
        for mode, f in summary["flops_per_image"].items()
    )
    main_model = next(r for r in results if r["condition"]["name"] == MAIN_CONDITION)
    human_text = ", ".join(f"{k} {human[k]:.3f}" for k in REPORT_METRICS if k in human)
    same_folds = main_model["leave_one_out"]
    human_text += (
        f" (this model against the same references: CIDEr-D {same_folds['CIDEr']:.3f}, "
        f"BLEU-4 {same_folds['Bleu_4']:.3f})"
    )
    values = {
        "model_name": Path(model_dir).resolve().name,
        "repo_id": repo_id,
        "input_size": f"{size}x{size}",
        "parameters": _count(summary["parameters"]["total"]),
        "flops": flops,
        "vocab_size": summary["vocab_size"],
        "recipe": recipe_section(Path(model_dir), recipe, training_command),
        "results": results_table(results, settings, size)
        + (f"\n\nMade by:\n\n```bash\n{evaluation_command}\n```" if evaluation_command else ""),
        "protocol": protocol_table(results),
        "human": human_text,
        "latency": latency_section(latency_benchmark),
        "ablation": ablation_section(model.config, ablation, ablation_findings),
        "hardware": hardware,
    }
    return Template(template).substitute(values)
