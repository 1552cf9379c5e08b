"""The files of an evaluation: metrics.json, captions.jsonl, report.md, samples.html and the resolution plots.

Both metrics.json and report.md say what was not scored: the bad samples the loader skipped (missing or unreadable
images, empty captions, malformed or undecodable annotation lines, by kind, with the first few named) and, per model
and condition, the images that could not be read while captioning. When several models are compared they also say,
for each model after the first, how many of its captions are identical to the first model's (e.g. int8 vs float32
graphs of one model) and how much CIDEr-D it loses against it. A region evaluation (`regions`) has a row per model
and per model's tag-only baseline, keyed by region, and no leave-one-out table."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..bench.html_gallery import GalleryCard, write_gallery
from ..bench.markdown import markdown_table, metric_cells
from ..bench.plots import saved_figure
from ..data import BadSampleReport
from ..onnx.manifest import describe_quantization
from .conditions import LowResCondition

REPORT_METRICS = ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
#: Beside the metrics against all references: how varied the captions are (`metrics.caption_diversity`).
DIVERSITY_HEADER = ("distinct captions", "words used")
PLOT_METRICS = ("CIDEr", "Bleu_4")
#: How many of the skipped bad samples the report names (metrics.json and report.md).
SKIPPED_EXAMPLES = 10
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass
class ConditionResult:
    """One model under one LR condition: its captions, its metrics against all references, against the
    leave-one-out folds (comparable with the human score), and the number of images of the loaded split that
    could not be read while captioning (`skipped_images`)."""

    model: str
    condition: LowResCondition
    predictions: dict[str, str]
    metrics: dict[str, float]
    leave_one_out: dict[str, float]
    skipped_images: int = 0
    lr_images: dict[str, Image.Image] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (captions and images left out)."""
        condition = {"name": self.condition.name, **vars(self.condition)}
        return {
            "model": self.model,
            "condition": condition,
            "images": len(self.predictions),
            "skipped_images": self.skipped_images,
            "metrics": self.metrics,
            "leave_one_out": self.leave_one_out,
        }


def write_report(
    out: Path,
    results: Sequence[ConditionResult],
    references: dict[str, list[str]],
    human: dict[str, float],
    settings: dict[str, Any],
    bad_samples: BadSampleReport | None = None,
) -> None:
    """Write every file of the report into `out` (created); `bad_samples`: what the loader skipped."""
    out.mkdir(parents=True, exist_ok=True)
    bad_samples = bad_samples or BadSampleReport()
    summary = {
        "settings": settings,
        "human_leave_one_out": human,
        "skipped_while_loading": skipped_while_loading(bad_samples),
        "results": [r.to_dict() for r in results],
        "caption_agreement": caption_agreement(results),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with (out / "captions.jsonl").open("w", encoding="utf-8") as handle:
        for result in results:
            for image_id, caption in result.predictions.items():
                record = {"model": result.model, "condition": result.condition.name, "image_id": image_id}
                handle.write(json.dumps(record | {"caption": caption}) + "\n")
    plots = write_resolution_plots(out, results)
    write_samples_page(out / "samples.html", results, references)
    report = markdown_report(results, human, settings, plots, bad_samples)
    (out / "report.md").write_text(report, encoding="utf-8")


def caption_agreement(results: Sequence[ConditionResult]) -> list[dict[str, Any]]:
    """For each model after the first, under each condition: how many of its captions are identical to the first
    model's, on the images both captioned, and the CIDEr-D drop (the first model's CIDEr-D minus this one's)."""
    first_model = results[0].model if results else None
    reference = {r.condition: r for r in results if r.model == first_model}
    agreement = []
    for result in results:
        first = reference.get(result.condition)
        if result.model == first_model or first is None:
            continue
        both = result.predictions.keys() & first.predictions.keys()
        identical = sum(result.predictions[image_id] == first.predictions[image_id] for image_id in both)
        agreement.append(
            {
                "model": result.model,
                "first_model": first_model,
                "condition": result.condition.name,
                "identical": identical,
                "compared": len(both),
                "share": identical / len(both) if both else 0.0,
                "cider_d_drop": first.metrics["CIDEr"] - result.metrics["CIDEr"],
            }
        )
    return agreement


def skipped_while_loading(bad_samples: BadSampleReport) -> dict[str, Any]:
    """metrics.json's record of the loader's skips: the total, the count per kind and the first few, named."""
    return {
        "bad_samples": len(bad_samples),
        "by_kind": bad_samples.counts,
        "first": [sample.message for sample in bad_samples.samples[:SKIPPED_EXAMPLES]],
    }


def markdown_report(
    results: Sequence[ConditionResult],
    human: dict[str, float],
    settings: dict[str, Any],
    plots: list[str],
    bad_samples: BadSampleReport | None = None,
) -> str:
    """Tables of every (model, condition), the human score, what was skipped, and links to the pictures."""
    lines = [f"# Caption evaluation: {settings['data']} ({settings['split']})", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items() if key != "models"]
    lines += _model_lines(settings.get("models", []))
    lines += _skipped_lines(bad_samples or BadSampleReport(), results)
    header = ["model", "LR input", *REPORT_METRICS]
    lines += ["", "## All references", ""]
    rows = [_metric_row(r.model, r.condition.name, r.metrics) + _diversity_cells(r.metrics) for r in results]
    lines += [markdown_table([*header, *DIVERSITY_HEADER], rows)]
    if human:
        lines += ["", "## Leave-one-out: the model and people scored against the same 4 references", ""]
        rows = [_metric_row("people (each reference vs the others)", "-", human)]
        rows += [_metric_row(r.model, r.condition.name, r.leave_one_out) for r in results]
        lines += [markdown_table(["captions by", *header[1:]], rows)]
    lines += _agreement_lines(caption_agreement(results))
    lines += ["", "CIDEr is coco-caption's CIDEr-D (sigma 6, clipping)."]
    if human:
        lines += ["Leave-one-out rows: the mean over 5 folds, each dropping one reference per image; METEOR there for"]
        lines += ["people only (one Java run per fold).", ""]
    else:  # region data: each box described, scored against its chain's phrases (1 to 5)
        lines += ["Regions: each box's description scored against all the phrases of its chain; a model's tag-only"]
        lines += ["baseline describes each box with the tag head's most probable word. No leave-one-out score.", ""]
    lines += ["Samples (input as the model saw it, captions, references): [samples.html](samples.html)", ""]
    lines += [f"![{plot}]({plot})" for plot in plots]
    return "\n".join(lines) + "\n"


def _model_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """The report's "Models" table: where each model came from and how it ran (the settings it actually used)."""
    if not records:
        return []
    header = ["model", "source", "backend", "inference branches", "beams", "max new tokens", "weights", "size MiB"]
    header += ["parameters trained / frozen"]
    timed = any("latency_ms" in record for record in records)
    header += ["ms per caption, 1 thread"] if timed else []
    rows = []
    for record in records:
        parameters = record.get("parameters")
        row = [
            record["model"],
            f"`{record['source']}`",
            record["backend"],
            record["inference_branches"],
            record["num_beams"],
            record["max_new_tokens"],
            describe_quantization(record["quantization"]),
            f"{record['size_mib']:.1f}" if "size_mib" in record else "-",
            f"{_millions(parameters['trained'])} / {_millions(parameters['frozen'])}" if parameters else "-",
        ]
        rows.append(row + ([f"{record['latency_ms']:.1f}" if "latency_ms" in record else "-"] if timed else []))
    lines = ["", "## Models", "", markdown_table(header, rows)]
    if timed:
        lines += ["", "ms per caption: PyTorch on one thread, batch 1, greedy, exactly 12 new tokens, median over the"]
        lines += ["first photos of the split (`--latency-photos`); times from a busy machine are not comparable."]
    return lines


def _millions(count: int) -> str:
    """A parameter count in millions, e.g. `14.0 M`."""
    return f"{count / 1e6:.1f} M"


def _agreement_lines(agreement: Sequence[dict[str, Any]]) -> list[str]:
    """The report's "Caption agreement" section (several models only)."""
    if not agreement:
        return []
    first = agreement[0]["first_model"]
    header = ["model", "LR input", f"captions identical to {first}'s", f"CIDEr-D drop ({first} - model)"]
    rows = [
        [
            row["model"],
            row["condition"],
            f"{row['identical']}/{row['compared']} ({100 * row['share']:.1f}%)",
            f"{row['cider_d_drop']:+.4f}",
        ]
        for row in agreement
    ]
    return ["", f"## Caption agreement with the first model ({first})", "", markdown_table(header, rows)]


def _skipped_lines(bad_samples: BadSampleReport, results: Sequence[ConditionResult]) -> list[str]:
    """The report's "Skipped" section: the loader's bad samples (by kind, the first few named) and the images
    unreadable while captioning, per model and condition."""
    lines = ["", "## Skipped", ""]
    if bad_samples:
        counts = ", ".join(f"{kind}={count}" for kind, count in bad_samples.counts.items())
        shown = bad_samples.samples[:SKIPPED_EXAMPLES]
        lines.append(f"- while loading: {len(bad_samples)} bad sample(s) ({counts}); the first {len(shown)}:")
        lines += [f"  - `{sample.message}`" for sample in shown]
    else:
        lines.append("- while loading: none")
    unreadable = [r for r in results if r.skipped_images]
    for result in unreadable:
        where = f"{result.model} {result.condition.name}"
        lines.append(f"- while captioning, {where}: {result.skipped_images} unreadable image(s)")
    if not unreadable:
        lines.append("- while captioning: none")
    return lines


def _metric_row(name: str, condition: str, metrics: dict[str, float]) -> list[str]:
    return [name, condition, *metric_cells(metrics, REPORT_METRICS, 4)]


def _diversity_cells(metrics: dict[str, float]) -> list[str]:
    """The share of distinct captions (as a percentage) and the number of words used."""
    if "distinct_captions" not in metrics:
        return ["n/a", "n/a"]
    return [f"{100 * metrics['distinct_captions']:.1f}%", f"{metrics['vocabulary_size']:.0f}"]


def write_resolution_plots(out: Path, results: Sequence[ConditionResult]) -> list[str]:
    """`sweep_paper.png` (metric vs scale factor) and `sweep_sizes.png` (metric vs LR size), one line per model
    and degradation, when the results hold at least two such conditions; returns the file names written."""
    written = []
    for file_name, axis_of, label in (
        ("sweep_paper.png", lambda c: c.scale_factor, "scale factor of the photo (paper protocol)"),
        ("sweep_sizes.png", lambda c: c.size, "LR size (pixels, square)"),
    ):
        chosen = [r for r in results if axis_of(r.condition) is not None]
        if len({r.condition for r in chosen}) < 2:
            continue
        models = list(dict.fromkeys(r.model for r in chosen))
        degradations = list(dict.fromkeys(r.condition.degradation for r in chosen))
        with saved_figure(out / file_name, 1, len(PLOT_METRICS), figsize=(5.5 * len(PLOT_METRICS), 4)) as axes:
            _plot_sweep(axes, chosen, models, degradations, axis_of, label)
        written.append(file_name)
    return written


def _plot_sweep(
    axes: Any, chosen: Sequence[ConditionResult], models: list[str], degradations: list[str], axis_of: Any, label: str
) -> None:
    """One panel per metric: the metric against the condition's scale factor or size, a line per model and
    degradation."""
    import matplotlib.ticker

    for axis, metric in zip(axes, PLOT_METRICS, strict=True):
        for model, degradation in itertools.product(models, degradations):
            points = sorted(
                (axis_of(r.condition), r.metrics[metric])
                for r in chosen
                if (r.model, r.condition.degradation) == (model, degradation)
            )
            style = {"color": f"C{models.index(model)}", "linestyle": LINE_STYLES[degradations.index(degradation)]}
            axis.plot(*zip(*points, strict=True), marker="o", label=f"{model} ({degradation})", **style)
        axis.set(xscale="log", xlabel=label, ylabel=metric, title=metric)
        axis.set_xticks(sorted({axis_of(r.condition) for r in chosen}), minor=False)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.legend(fontsize="small")


def write_samples_page(path: Path, results: Sequence[ConditionResult], references: dict[str, list[str]]) -> None:
    """An HTML page of the kept samples of the first condition: the LR input as the model saw it, each model's
    caption and the references."""
    first = results[0].condition
    shown = [r for r in results if r.condition == first]
    cards = [
        GalleryCard(image, image_id, [(r.model, r.predictions.get(image_id, "")) for r in shown], references[image_id])
        for image_id, image in shown[0].lr_images.items()
    ]
    write_gallery(path, f"Samples, LR input {first.name}", cards)
