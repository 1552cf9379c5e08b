"""Training throughput of the real CPU recipe under each speed setting (`python scripts/benchmark.py training`).

Every setting (full precision, channels_last, bf16 autocast, both, torch.compile, 1 or 2 loading workers) trains the
recipe (`configs/flickr8k_cpu.yaml`: the real backbone and data) for one short epoch of `max_train_images` images in
its own process (its peak RSS is its own, and accelerate's precision is set once per process), through the same
`train()` as `scripts/train.py`. Its throughput is the median of the per-step images/s that the loop logs
(`losses.jsonl`, the batch's loading included) after `warmup_steps` steps. The epoch's dev loss on
`max_eval_images` images is the quality check: bf16 must not move it by more than `BF16_DEV_LOSS_TOLERANCE`.

The report records the CPU model and its bf16 / AMX flags and the library versions: bf16 pays on CPUs with
`avx512_bf16` or AMX, and costs on those without.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .machine import library_versions, machine
from .markdown import markdown_table

SETTINGS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"mixed_precision": "bf16"},
    "bf16+channels_last": {"mixed_precision": "bf16", "channels_last": True},
    "compile": {"torch_compile": True},
    "workers_1": {"num_workers": 1},
    "workers_2": {"num_workers": 2},
}
BASELINE = "fp32"
BF16_DEV_LOSS_TOLERANCE = 0.02  # relative: a short run's dev caption loss, bf16 against full precision
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what makes bf16 fast on a CPU
LIBRARIES = ("torch", "transformers", "accelerate")
# the run a setting's process makes: scripts/train.py's call, without the script (not part of the installed package)
TRAIN = "from soli_hf.training import parse_training_config, train; train(parse_training_config())"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, bool]:
    """Whether the CPU has each of `CPU_FLAGS` (all False where there is no /proc/cpuinfo)."""
    present: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                break
    return {flag: flag in present for flag in CPU_FLAGS}


def run_flags(
    recipe: Path, overrides: dict[str, Any], output_dir: Path, max_train_images: int, max_eval_images: int
) -> list[str]:
    """The command-line flags of one setting's run: the recipe, one epoch on the first `max_train_images` images,
    no checkpoint before the epoch's end, no tracker, and the setting's `overrides`."""
    values = {
        "num_epochs": 1,
        "max_train_images": max_train_images,
        "max_eval_images": max_eval_images,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "report_to": "none",
        "save_every_steps": 10**9,
        "keep_checkpoints": 1,
    } | overrides
    return ["--config", str(recipe), *(item for name, value in values.items() for item in (f"--{name}", str(value)))]


def step_throughput(records: list[dict[str, Any]], warmup_steps: int) -> tuple[float, int]:
    """The median images/s of the logged steps after the first `warmup_steps`, and how many steps that is.

    Raises:
        ValueError: no step is left after the warm-up.
    """
    measured = [record["images_per_second"] for record in records[warmup_steps:]]
    if not measured:
        raise ValueError(f"{len(records)} steps logged, none after {warmup_steps} warm-up steps: train on more images")
    return statistics.median(measured), len(measured)


def measure_setting(
    overrides: dict[str, Any], recipe: Path, output_dir: Path, max_train_images: int, max_eval_images: int, warmup: int
) -> dict[str, Any]:
    """Train one setting in a subprocess; its throughput, steps measured, peak RSS (MiB), dev loss and wall time,
    or `error` (the run's last output line) when it failed."""
    flags = run_flags(recipe, overrides, output_dir, max_train_images, max_eval_images)
    command = [sys.executable, "-c", TRAIN, *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall_seconds = time.perf_counter() - start
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        return {"overrides": overrides, "error": lines[-1], "wall_seconds": wall_seconds}
    records = [json.loads(line) for line in (output_dir / "losses.jsonl").read_text(encoding="utf-8").splitlines()]
    images_per_second, steps = step_throughput(records, warmup)
    (epoch,) = json.loads((output_dir / "model" / "metrics.json").read_text(encoding="utf-8"))["history"]
    return {
        "overrides": overrides,
        "images_per_second": images_per_second,
        "steps_measured": steps,
        "peak_rss_mib": epoch["peak_memory_mb"],
        "dev_loss": epoch["val_loss"],
        "wall_seconds": wall_seconds,
    }


def bf16_quality(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """bf16's dev loss against full precision's (relative difference, and whether it is within the tolerance);
    None unless both settings ran."""
    reference, bf16 = results.get(BASELINE, {}).get("dev_loss"), results.get("bf16", {}).get("dev_loss")
    if reference is None or bf16 is None:
        return None
    difference = abs(bf16 - reference) / reference
    return {
        "fp32_dev_loss": reference,
        "bf16_dev_loss": bf16,
        "relative_difference": difference,
        "tolerance": BF16_DEV_LOSS_TOLERANCE,
        "within_tolerance": difference <= BF16_DEV_LOSS_TOLERANCE,
    }


def benchmark_training_speed(
    recipe: Path,
    settings: list[str],
    max_train_images: int = 320,
    max_eval_images: int = 50,
    warmup_steps: int = 3,
) -> dict[str, Any]:
    """Measure `settings` (names of `SETTINGS`) one after the other, each in its own process and temporary run
    folder; the report: machine, CPU flags, library versions, the parameters, each setting's figures, the bf16
    quality check."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="soli-training-speed-") as work:
        for name in settings:
            print(f"training speed: {name} ...", file=sys.stderr, flush=True)
            results[name] = measure_setting(
                SETTINGS[name], recipe, Path(work) / name, max_train_images, max_eval_images, warmup_steps
            )
    return {
        "machine": machine(),
        "cpu_flags": cpu_flags(),
        "libraries": library_versions(LIBRARIES),
        "recipe": recipe.as_posix(),
        "max_train_images": max_train_images,
        "max_eval_images": max_eval_images,
        "warmup_steps": warmup_steps,
        "settings": results,
        "bf16_quality": bf16_quality(results),
    }


def training_speed_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine, a table of the settings (speed-up against fp32 where it ran), the bf16
    quality check."""
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in report["cpu_flags"].items())
    versions = ", ".join(f"{name} {version}" for name, version in report["libraries"].items())
    baseline = report["settings"].get(BASELINE, {}).get("images_per_second")
    rows = []
    for name, figures in report["settings"].items():
        if "error" in figures:
            rows.append([name, "failed", "", "", "", figures["error"]])
            continue
        speedup = f"{figures['images_per_second'] / baseline:.2f}x" if baseline else ""
        rows.append(
            [
                name,
                f"{figures['images_per_second']:.1f}",
                speedup,
                f"{figures['peak_rss_mib']:.0f}",
                f"{figures['dev_loss']:.4f}",
                f"median of {figures['steps_measured']} steps",
            ]
        )
    header = ["setting", "train images/s", "vs fp32", "peak RSS (MiB)", "dev loss", "notes"]
    lines = [
        "# Training throughput on CPU",
        "",
        f"`python scripts/benchmark.py training` on {report['machine']['cpu_model']} ({report['machine']['cpus']} "
        f"CPUs; {flags}); {versions}. Recipe `{report['recipe']}`, one epoch of the first "
        f"{report['max_train_images']} training images, throughput after {report['warmup_steps']} warm-up steps "
        f"(the batch's loading included), dev loss on {report['max_eval_images']} dev images.",
        "",
        markdown_table(header, rows),
        "",
    ]
    quality = report["bf16_quality"]
    if quality is None:
        lines.append("bf16 quality check: not run (it needs the fp32 and bf16 settings).")
    else:
        verdict = "within" if quality["within_tolerance"] else "OUTSIDE"
        lines.append(
            f"bf16 quality check: dev loss {quality['bf16_dev_loss']:.4f} against {quality['fp32_dev_loss']:.4f} in "
            f"full precision, a relative difference of {quality['relative_difference']:.2%}, {verdict} the "
            f"{quality['tolerance']:.0%} tolerance."
        )
    return "\n".join(lines) + "\n"


def write_training_speed_report(report: dict[str, Any], json_path: Path) -> None:
    """The Markdown report next to the JSON (same stem, .md)."""
    json_path.with_suffix(".md").write_text(training_speed_markdown(report), encoding="utf-8")
