"""The ARM check's report and its aarch64 side, without qemu: check.md fills every field of its templates, and the
guest (`python -m soli_hf.bench.arm_check --guest`) captions with the torch-free captioner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from soli_hf.bench.arm_check_report import fill, render_arm_check
from soli_hf.captioner import load_captioner
from soli_hf.onnx.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
QEMU_72 = "qemu-aarch64 version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"


def _row(cpu: str, quantization: dict | None, identical: int, error: str | None = None) -> dict:
    differences = [{"image": "dog.jpg", "x86": "a dog runs", "arm64": "a dog is running"}] * (3 - identical)
    row = {
        "onnx_dir": ".cache/arm64/onnx/int8-arm64",
        "quantization": quantization,
        "cpu": cpu,
        "qemu": QEMU_72,
        "images": 3,
        "images_captioned_on_arm64": 3,
        "arm64_returncode": 1 if error else 0,
        "arm64": {"machine": "aarch64", "onnxruntime": "1.31.1", "onnxruntime_device": "CPU", "torch_imported": False},
        "arm64_wall_seconds": 9.0,
        "x86_wall_seconds": 0.5,
        "modes": {"num_beams=1": {"identical": identical, "compared": 3, "differences": differences}},
        "encoder_max_abs_diff_first_batch": {"memory": 1e-5, "keys": 1e-2},
    }
    return row | ({"arm64_error": error} if error else {})


def sample_report() -> dict:
    """A report with every part check.md can show: a difference, a failed run, both probes."""
    int8 = {"name": "arm64", "weights_dtype": "QInt8"}
    return {
        "issue": "ARM: same captions",
        "date": "2026-01-01 00:00:00 UTC",
        "command": "python scripts/check_arm.py",
        "qemu": {"bookworm": QEMU_72, "trixie": ""},
        "rootfs": "12.8",
        "threads": 1,
        "batch_size": 10,
        "image_source": "3 files given with --images",
        "host_cores": 2,
        "caption_api_mismatches": 0,
        "wall_seconds": 90.0,
        "x86": {
            "machine": "x86_64",
            "python": "3.11.7",
            "numpy": "2.4.6",
            "pillow": "13.0.0",
            "onnxruntime": "1.31.1",
            "onnxruntime_device": "CPU",
        },
        "rows": [_row("cortex-a76", int8, 2), _row("trixie:max", None, 3, error="Segmentation fault")],
        "probe_without_arm_cpuinfo": {
            "command": "qemu-aarch64-static -cpu cortex-a76 python3.11 -c 'import x'",
            "returncode": -11,
            "output": "qemu: uncaught target signal 11",
        },
        "probe_sme": {
            "onnx_dir": str(ROOT / ".cache/arm64/onnx/int8-arm64"),
            "results": [
                {"cpu": "max", "qemu": QEMU_72, "max_abs_diff_vs_x86": 10.9},
                {"cpu": "trixie:max,sme=off", "qemu": QEMU_72, "error": "killed"},
            ],
        },
    }


def test_check_md_fills_every_field_of_its_templates() -> None:
    markdown = render_arm_check(sample_report())
    assert "${" not in markdown
    assert "x86: x86_64 (x86_64, 2 cores), Python 3.11.7" in markdown  # no CPU model name: the machine
    assert "run by bookworm's qemu 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3) (`qemu-aarch64" in markdown
    assert "| int8 (arm64 target, QInt8 weights, dynamic) | 7.2.22 (bookworm) | cortex-a76 |" in markdown
    assert "| fp32 | 7.2.22 (trixie) | max |" in markdown and "| 2/3 | 9 s (3.00 s/image) | 0.5 s |" in markdown
    assert "- int8, -cpu cortex-a76: memory 1.00e-05, keys 1.00e-02" in markdown
    difference = "- int8, -cpu cortex-a76, num_beams=1, dog.jpg: x86 “a dog runs” / aarch64 “a dog is running”"
    assert difference in markdown
    assert "the aarch64 run failed (exit 1):\n\n```\nSegmentation fault\n```" in markdown
    assert "$ qemu-aarch64-static -cpu cortex-a76" in markdown and "(exit status -11)" in markdown
    assert "The int8 encoder (`.cache/arm64/onnx/int8-arm64`)" in markdown  # relative to the repository
    assert "| 7.2.22 | max | 10.9 |" in markdown and "| 7.2.22 | max,sme=off | failed: killed |" in markdown
    assert markdown.endswith("| failed: killed |\n")


def test_without_probes_or_differences_the_report_says_so() -> None:
    report = sample_report()
    del report["probe_without_arm_cpuinfo"], report["probe_sme"]
    report["rows"] = [_row("cortex-a76", None, 3)]
    markdown = render_arm_check(report)
    assert markdown.endswith("## Differences\n\nNone: every caption is identical.\n")


def test_a_template_field_without_a_value_is_an_error() -> None:
    with pytest.raises(KeyError, match="output"):
        fill("arm_check_cpuinfo_probe.md", {"command": "x", "returncode": 0})


@pytest.mark.slow
def test_the_guest_side_captions_without_torch(saved_tiny_model: Path, tmp_path: Path) -> None:
    export_onnx(saved_tiny_model, tmp_path / "onnx")
    photos = []
    for index, colour in enumerate([(200, 30, 30), (20, 30, 200)]):
        Image.new("RGB", (50, 40), colour).save(tmp_path / f"photo{index}.png")
        photos.append(str(tmp_path / f"photo{index}.png"))
    job = {"onnx_dir": str(tmp_path / "onnx"), "images": photos, "beam_sizes": [1, 2], "batch_size": 1, "threads": 1}
    completed = subprocess.run(
        [sys.executable, "-m", "soli_hf.bench.arm_check", "--guest"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SOLI_HF_NO_TORCH": "1"},
        timeout=300,
    )
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [event["event"] for event in events] == ["info", "batch", "batch", "done"]
    assert not events[0]["torch_imported"] and not events[0]["transformers_imported"]
    assert "encoded" in events[1] and "encoded" not in events[2]  # the first batch's encoder outputs, for the host
    captioner = load_captioner(onnx=tmp_path / "onnx")
    for beams in (1, 2):
        got = [caption for event in events[1:3] for caption in event["captions"][str(beams)]]
        assert got == captioner.caption(photos, num_beams=beams)
