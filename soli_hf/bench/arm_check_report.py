"""check.md of the ARM check (`soli_hf.bench.arm_check`), filled from its report dict (check.json): the prose is
in templates/arm_check*.md (string.Template), the tables and lists are made here.

Standard library only, like the rest of the ARM check's modules the aarch64 guest may import.
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from .markdown import markdown_table

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: The repository root: paths under it are written relative to it.
ROOT = Path(__file__).resolve().parents[2]


def split_target(spec: str) -> tuple[str, str]:
    """ "[EMULATOR:]CPU" (e.g. "cortex-a76", "trixie:max", "max,sme=off") -> (emulator name, qemu -cpu value); the
    emulator defaults to bookworm."""
    emulator, _, cpu = spec.rpartition(":")
    return emulator or "bookworm", cpu


def in_repository(path: str) -> str:
    """`path` relative to the repository root when it lies under it."""
    return path.replace(str(ROOT) + "/", "")


def fill(template_name: str, values: dict[str, Any]) -> str:
    """templates/`template_name` with every placeholder filled (`KeyError` for one that `values` lacks), without
    its trailing newline."""
    text = (TEMPLATES / template_name).read_text(encoding="utf-8")
    return Template(text).substitute(values).rstrip("\n")


def _qemu_release(version: str) -> str:
    """ "qemu-aarch64 version 7.2.22 (Debian ...)" -> "7.2.22"."""
    return version.replace("qemu-aarch64 version ", "").split(" (")[0]


def _kind(row: dict[str, Any]) -> str:
    return "int8" if row["quantization"] else "fp32"


def results_table(rows: list[dict[str, Any]]) -> str:
    """One line per (ONNX folder, emulated CPU): what the aarch64 process reports, identical counts per search,
    wall times."""
    modes = list(rows[0]["modes"]) if rows else []
    header = ["ONNX model", "qemu", "-cpu", "aarch64 process reports", "images"]
    header += [f"identical, {mode}" for mode in modes] + ["aarch64 wall (qemu)", "x86 wall"]
    cells = []
    for row in rows:
        arm, quant = row["arm64"] or {}, row["quantization"]
        emulator, cpu = split_target(row["cpu"])
        captioned = max(row["images_captioned_on_arm64"], 1)
        cells.append(
            [
                f"int8 ({quant['name']} target, {quant['weights_dtype']} weights, {quant.get('mode', 'dynamic')})"
                if quant
                else "fp32",
                f"{_qemu_release(row['qemu'])} ({emulator})",
                cpu,
                f"{arm.get('machine', '?')}, onnxruntime {arm.get('onnxruntime', '?')} "
                f"{arm.get('onnxruntime_device', '?')}, torch imported: {arm.get('torch_imported', '?')}",
                row["images"],
                *(f"{m['identical']}/{m['compared']}" for m in row["modes"].values()),
                f"{row['arm64_wall_seconds']:.0f} s ({row['arm64_wall_seconds'] / captioned:.2f} s/image)",
                f"{row['x86_wall_seconds']:.1f} s",
            ]
        )
    return markdown_table(header, cells)


def encoder_differences(rows: list[dict[str, Any]]) -> str:
    """A list: per row, max |x86 - aarch64| of each encoder output on the first batch."""
    return "\n".join(
        f"- {_kind(row)}, -cpu {row['cpu']}: "
        + ", ".join(f"{k} {v:.2e}" for k, v in row.get("encoder_max_abs_diff_first_batch", {}).items())
        for row in rows
    )


def differences(rows: list[dict[str, Any]]) -> str:
    """A list of every caption that differs and every failed aarch64 run, or a line saying there are none."""
    lines = []
    for row in rows:
        for mode, result in row["modes"].items():
            lines += [
                f"- {_kind(row)}, -cpu {row['cpu']}, {mode}, {diff['image']}: x86 “{diff['x86']}” / "
                f"aarch64 “{diff['arm64']}”"
                for diff in result["differences"]
            ]
        if "arm64_error" in row:
            failed = f"- {_kind(row)}, -cpu {row['cpu']}: the aarch64 run failed (exit {row['arm64_returncode']}):"
            lines += [failed, "", "```", row["arm64_error"], "```"]
    return "\n".join(lines) if lines else "None: every caption is identical."


def sme_table(results: list[dict[str, Any]]) -> str:
    """The SME probe: max |x86 - aarch64| of the int8 encoder per qemu and -cpu (or why the run failed)."""
    cells = [
        [
            _qemu_release(entry["qemu"]),
            split_target(entry["cpu"])[1],
            f"{entry['max_abs_diff_vs_x86']:.3g}"
            if "max_abs_diff_vs_x86" in entry
            else f"failed: {entry.get('error', '')[-120:]}",
        ]
        for entry in results
    ]
    return markdown_table(["qemu", "-cpu", "max abs diff vs x86"], cells)


def render_arm_check(report: dict[str, Any]) -> str:
    """check.md: set-up, one row per (ONNX folder, emulated CPU), the differences, the probes that ran."""
    host = report["x86"]
    versions = report["qemu"].items()
    emulators = " or ".join(
        f"{name}'s {text.replace('qemu-aarch64 version', 'qemu')}" for name, text in versions if text
    )
    sections = [
        fill(
            "arm_check.md",
            {
                "issue": report["issue"],
                "date": report["date"],
                "wall_minutes": f"{report['wall_seconds'] / 60:.1f}",
                "command": report["command"],
                "x86_cpu": host.get("cpuinfo_model_name", host["machine"]),
                **{f"x86_{key}": host[key] for key in ("machine", "python", "numpy", "pillow", "onnxruntime")},
                "x86_onnxruntime_device": host["onnxruntime_device"],
                "host_cores": report["host_cores"],
                "rootfs": report["rootfs"],
                "emulators": emulators,
                "threads": report["threads"],
                "batch_size": report["batch_size"],
                "caption_api_mismatches": report["caption_api_mismatches"],
                "image_source": report["image_source"],
                "results_table": results_table(report["rows"]),
                "encoder_differences": encoder_differences(report["rows"]),
                "differences": differences(report["rows"]),
            },
        )
    ]
    probe = report.get("probe_without_arm_cpuinfo")
    if probe:
        sections.append(fill("arm_check_cpuinfo_probe.md", probe))
    sme = report.get("probe_sme")
    if sme:
        values = {"onnx_dir": in_repository(sme["onnx_dir"]), "table": sme_table(sme["results"])}
        sections.append(fill("arm_check_sme_probe.md", values))
    return "\n\n".join(sections) + "\n"
