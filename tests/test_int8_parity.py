"""The int8-vs-float32 report of exported ONNX folders (`python scripts/benchmark.py int8`,
`soli_hf.bench.int8_parity`): a tiny SOLI exported, quantized and evaluated on a few generated photos. The checks
read the numbers back from the evaluation reports and the files, never expect particular captions or scores (int8
rounding differs from CPU to CPU)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from conftest import write_caption_folder

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'soli-hf[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export(dynamo=True) needs it)")

from soli_hf.bench.int8_parity import (  # noqa: E402
    BEAMS,
    FLOAT32,
    MAX_CIDER_DROP,
    MIN_IDENTICAL_SHARE,
    MODE_VARIANTS,
    bar_failures,
    int8_parity_markdown,
    is_reusable,
    read_stamps,
)

ROOT = Path(__file__).resolve().parents[1]


def passing(**changes: object) -> list[dict]:
    """Greedy and beam-3 evaluations that meet the bar exactly at its edges, with `changes` made to beam 3's."""
    edge = {"identical": 900, "compared": 1000, "cider_d_drop": MAX_CIDER_DROP}
    return [{"num_beams": 1, **edge}, {"num_beams": 3, **edge, **changes}]


def test_the_bar_is_met_at_its_edges_and_missed_just_past_them() -> None:
    assert MIN_IDENTICAL_SHARE == 0.9 and MAX_CIDER_DROP == 0.005 and BEAMS == (1, 3)
    assert bar_failures("lr", passing(), 10 * 10**6) == []
    assert bar_failures("lr", passing(cider_d_drop=-0.005), 10 * 10**6) == []  # within 0.005 either way
    assert bar_failures("lr", passing(cider_d_drop=-0.02), 10 * 10**6) == [
        "beam 3 CIDEr-D drop -0.0200, not within 0.005"
    ]
    assert bar_failures("both", passing(), 10**9) == []  # "both" has no size bar
    assert bar_failures("lr", passing(identical=899), 10 * 10**6) == ["beam 3 899/1000 (89.9%) identical < 90%"]
    assert bar_failures("lr", passing(identical=27, compared=30), 10 * 10**6) == []  # 0.9 exactly, however made
    assert bar_failures("lr", passing(cider_d_drop=0.0051), 10 * 10**6) == [
        "beam 3 CIDEr-D drop +0.0051, not within 0.005"
    ]
    assert bar_failures("lr", passing(), 10 * 10**6 + 1) == ["graphs 10.00 MB > 10 MB"]
    assert bar_failures("lr", passing()[:1], 1) == ["beam 3 not evaluated"]
    assert len(bar_failures("lr", passing(identical=0, cider_d_drop=1.0), 10**8)) == 3


def run_script(*args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["scripts/benchmark.py", *args])
    runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="__main__")


def check_mode(mode: dict, markdown: str, work: Path) -> None:
    """One inference mode of the report against its evaluation reports and its folders."""
    name = mode["inference_branches"]
    fp32 = f"fp32-{name}"
    assert mode["images"] == {"1": 3, "3": 3}
    # The float32 folder is the reference: first in every evaluation, the one the others are compared with.
    reference = mode["reference"]
    assert reference["variant"] == FLOAT32 and reference["quantization"] is None and reference["label"] == fp32
    assert [variant["variant"] for variant in mode["variants"]] == list(MODE_VARIANTS[name])
    table = markdown.split(f"## inference_branches {name}\n\n", 1)[1].splitlines()
    assert table[2].startswith(f"| {fp32} | float32 | ") and table[2].count("| reference ") == 3
    assert [line.split(" | ")[0] for line in table[3:6]] == [f"| {v}-{name}" for v in MODE_VARIANTS[name]]

    for num_beams in BEAMS:
        evaluation = Path(mode["evaluations"][str(num_beams)])
        summary = json.loads((evaluation / "metrics.json").read_text())
        assert summary["settings"]["models"][0]["model"] == fp32 and summary["settings"]["num_beams"] == num_beams
        agreement = {entry["model"]: entry for entry in summary["caption_agreement"]}
        captions: dict[str, dict[str, str]] = {}
        for line in (evaluation / "captions.jsonl").read_text().splitlines():
            record = json.loads(line)
            captions.setdefault(record["model"], {})[record["image_id"]] = record["caption"]
        scores = {result["model"]: result["metrics"] for result in summary["results"]}
        assert reference["scores"][BEAMS.index(num_beams)] == {
            "num_beams": num_beams,
            **{key: scores[fp32][key] for key in ("CIDEr", "Bleu_4", "ROUGE_L")},
        }
        for variant in mode["variants"]:
            row = next(e for e in variant["evaluations"] if e["num_beams"] == num_beams)
            entry = agreement[variant["label"]]
            assert entry["first_model"] == fp32
            assert [row[key] for key in ("identical", "compared", "share", "cider_d_drop")] == [
                entry[key] for key in ("identical", "compared", "share", "cider_d_drop")
            ]
            assert row["cider_d_drop"] == row["float32"]["CIDEr"] - row["int8"]["CIDEr"]
            same = sum(captions[variant["label"]][key] == caption for key, caption in captions[fp32].items())
            assert row["identical"] == same and row["compared"] == 3
            assert row["int8"]["Bleu_4"] == scores[variant["label"]]["Bleu_4"]

    for record in [reference, *mode["variants"]]:
        folder = Path(record["folder"])
        assert folder == work / record["label"]
        sizes = {path.name: path.stat().st_size for path in folder.iterdir() if path.suffix in (".onnx", ".bin")}
        assert record["graph_bytes"] == sizes and set(sizes) >= {"encoder.onnx", "decoder_step.onnx"}
        total = sum(sizes.values())
        assert record["total_bytes"] == total
        row = next(line for line in table if line.startswith(f"| {record['label']} |"))
        assert f"| {total / 1e6:.2f} ({total / 2**20:.2f}) |" in row
        manifest = json.loads((folder / "soli_onnx.json").read_text())
        assert record["quantization"] == manifest.get("quantization") and manifest["inference_branches"] == name
        if record is reference:
            continue
        assert record["quantization"]["mode"] == record["variant"]
        assert record["weights"].startswith(f"{record['variant']} (arm64): ")
        by_beams = {e["num_beams"]: e for e in record["evaluations"]}
        for num_beams in BEAMS:
            assert f"| {by_beams[num_beams]['identical']}/3 (" in row
        # the verdict follows the numbers
        expected = (name != "lr" or total <= 10**7) and all(
            e["identical"] >= 0.9 * e["compared"] and abs(e["cider_d_drop"]) <= 0.005 for e in record["evaluations"]
        )
        assert record["meets_bar"] is expected and record["bar_failures"] == bar_failures(
            name, record["evaluations"], total
        )
        assert row.endswith("| met |" if expected else "| not met |")
    met = [variant["label"] for variant in mode["variants"] if variant["meets_bar"]]
    assert mode["meeting_the_bar"] == met
    assert f"Issue 16's bar, `{name}`: met by {', '.join(met) if met else 'none'}" in markdown


def test_the_report_reads_the_evaluations_and_the_files(
    tmp_path: Path, saved_image_sensitive_model: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = write_caption_folder(tmp_path / "data", {"train": 3, "dev": 4})
    work, out = tmp_path / "work", tmp_path / "report" / "int8.json"
    flags = ["--model", str(saved_image_sensitive_model), "--data", str(data), "--calibration-data", str(data)]
    flags += ["--calibration-images", "3", "--max-images", "3", "--work-dir", str(work), "--out", str(out)]
    run_script("int8", *flags, monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert printed.count("exported ") == 8 and "reused " not in printed
    report = json.loads(out.read_text())
    markdown = out.with_suffix(".md").read_text()
    assert report["settings"]["calibration"]["images"] == 3 and report["settings"]["max_images"] == 3
    assert report["command"].startswith("python scripts/benchmark.py int8 --model")
    assert len(report["equivalent_commands"]) == 8 + 2 * len(BEAMS)
    assert [mode["inference_branches"] for mode in report["modes"]] == ["both", "lr"]
    for mode in report["modes"]:
        check_mode(mode, markdown, work)

    # --render-only rewrites the same report from the JSON.
    out.with_suffix(".md").unlink()
    run_script("int8", "--out", str(out), "--render-only", monkeypatch=monkeypatch)
    assert out.with_suffix(".md").read_text() == markdown == int8_parity_markdown(report)

    # Run again: every export is reused (same model files and settings) and every caption resumed, same report.
    capsys.readouterr()
    run_script("int8", *flags, "--modes", "lr", monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert printed.count("reused ") == 4 and "exported " not in printed
    again = json.loads(out.read_text())
    assert again["modes"] == report["modes"][1:]
    # A folder whose files changed since, or a different setting, is exported again.
    stamps = read_stamps(work)
    folder = work / "compact-lr"
    assert is_reusable(folder, stamps["compact-lr"]["key"], stamps)
    assert not is_reusable(folder, {**stamps["compact-lr"]["key"], "inference_branches": "both"}, stamps)
    (folder / "decoder_step.onnx").write_bytes((folder / "decoder_step.onnx").read_bytes() + b"\0")
    assert not is_reusable(folder, stamps["compact-lr"]["key"], stamps)


def test_a_mode_the_model_lacks_is_refused(tmp_path: Path, saved_tiny_model: Path) -> None:
    from soli_hf import SoliConfig
    from soli_hf.bench.int8_parity import benchmark_int8_parity

    with pytest.raises(ValueError, match="modes must be some of"):
        benchmark_int8_parity(saved_tiny_model, tmp_path, ["a.png"], modes=["hr"], work_dir=tmp_path / "w")
    with pytest.raises(ValueError, match="no calibration photos"):
        benchmark_int8_parity(saved_tiny_model, tmp_path, [], modes=["lr"], work_dir=tmp_path / "w")
    lr_only = tmp_path / "lr_only"
    SoliConfig(use_sr_branch=False).save_pretrained(lr_only)  # the config is all that is read before exporting
    with pytest.raises(ValueError, match=r"no SR branch: it cannot run inference_branches \['both'\]"):
        benchmark_int8_parity(lr_only, tmp_path, ["a.png"], work_dir=tmp_path / "w")
