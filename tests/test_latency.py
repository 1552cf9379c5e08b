"""The latency benchmark: behaviour only (timings belong to scripts/benchmark.py, not to tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_report
from PIL import Image

from soli_hf.bench.latency import (
    ORT_FP32,
    ORT_INT8,
    ORT_INT8_STATIC,
    PYTORCH,
    SOLI,
    LatencySetup,
    batches,
    footprint,
    measure,
    measure_in_subprocess,
    time_captions,
)
from soli_hf.bench.latency_report import (
    TARGETS_MS,
    latency_document,
    latency_markdown,
    plot_latency,
)
from soli_hf.bench.latency_suite import BATCH_SIZE, latency_setups
from soli_hf.bench.model_card import latency_section
from soli_hf.bench.peers import PEERS, PeerCaptioner
from soli_hf.captioner import Captioner
from soli_hf.onnx.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
TINY_TRANSFORMER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[str, ...]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index, (size, colour) in enumerate([((80, 60), (200, 30, 30)), ((40, 90), (20, 30, 200))]):
        Image.new("RGB", size, colour).save(folder / f"photo{index}.png")
        paths.append(str(folder / f"photo{index}.png"))
    return tuple(paths)


@pytest.mark.slow
def test_pytorch_configuration_in_its_own_process(saved_tiny_model, photos) -> None:
    setup = LatencySetup(SOLI, PYTORCH, 1, 5, photos, str(saved_tiny_model), "lr", repeats=2, warmup=1)
    row = measure_in_subprocess(setup).to_dict()
    assert (row["system"], row["backend"], row["inference_branches"], row["threads"]) == (SOLI, PYTORCH, "lr", 1)
    assert row["measurements"] == len(row["per_image_ms"]) == 4 and row["warmup"] == 1
    assert row["caption_tokens"] == 5  # every caption was checked to have exactly 5 new tokens
    assert 0 < row["median_ms"] <= row["p90_ms"] <= max(row["per_image_ms"])
    assert row["size_mib"] == (saved_tiny_model / "model.safetensors").stat().st_size / 2**20
    assert row["parameters"] > 0 and row["peak_rss_mib"] > 50 and row["torch_loaded"]


@pytest.mark.slow
def test_onnx_configuration_runs_without_torch_and_checks_its_export(saved_tiny_model, photos, tmp_path) -> None:
    export_onnx(saved_tiny_model, tmp_path)  # the tiny model's default inference mode: "both"
    setup = LatencySetup(SOLI, ORT_FP32, 1, 3, photos[:1], str(tmp_path), "both", repeats=1, warmup=0)
    row = measure_in_subprocess(setup).to_dict()
    assert not row["torch_loaded"] and row["measurements"] == 1 and row["caption_tokens"] == 3
    sizes = sum((tmp_path / name).stat().st_size for name in ("encoder.onnx", "decoder_step.onnx"))
    assert row["size_mib"] == sizes / 2**20 and row["parameters"] is None
    mismatches = {  # the folder is fp32, exported for "both"
        (ORT_FP32, "lr"): "exported with inference_branches='both', not 'lr'",
        (ORT_INT8, "both"): "float32 graphs, expected int8 ones for ort-int8",
    }
    for (backend, mode), message in mismatches.items():
        with pytest.raises(RuntimeError, match=message):
            measure_in_subprocess(LatencySetup(SOLI, backend, 1, 3, photos[:1], str(tmp_path), mode))


@pytest.mark.slow
def test_calibrated_exports_are_timed_as_their_own_backends(saved_tiny_model, photos, tmp_path) -> None:
    """With calibration photos the suite also exports static and fast int8 for each mode and compact int8 for "lr",
    and each backend accepts only its own kind of graphs."""
    from soli_hf.bench.exports import export_soli
    from soli_hf.bench.latency import ORT_INT8_COMPACT, ORT_INT8_FAST, ORT_INT8_STATIC
    from soli_hf.onnx.manifest import quantization_kind, read_manifest

    artifacts = export_soli(saved_tiny_model, ("both", "lr"), tmp_path, calibration=list(photos))
    calibrated = {key for key in artifacts if key[0] in (ORT_INT8_STATIC, ORT_INT8_FAST, ORT_INT8_COMPACT)}
    assert calibrated == {
        (ORT_INT8_STATIC, "both"),
        (ORT_INT8_STATIC, "lr"),
        (ORT_INT8_FAST, "both"),
        (ORT_INT8_FAST, "lr"),
        (ORT_INT8_COMPACT, "lr"),
    }
    kinds = {
        ORT_FP32: "float32",
        ORT_INT8: "int8",
        ORT_INT8_STATIC: "static int8",
        ORT_INT8_FAST: "fast int8",
        ORT_INT8_COMPACT: "compact int8",
    }
    for (backend, _), folder in artifacts.items():
        if backend != PYTORCH:
            assert quantization_kind(read_manifest(folder).get("quantization")) == kinds[backend]
    row = measure_in_subprocess(
        LatencySetup(SOLI, ORT_INT8_COMPACT, 1, 3, photos[:1], str(artifacts[ORT_INT8_COMPACT, "lr"]), "lr")
    ).to_dict()
    assert row["backend"] == ORT_INT8_COMPACT and not row["torch_loaded"]


def test_the_onnx_captioner_and_the_latency_code_import_no_torch() -> None:
    code = (
        "import sys; import soli_hf.bench.latency, soli_hf.onnx.runtime; from soli_hf.captioner import OnnxCaptioner; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    env = {**os.environ, "SOLI_HF_NO_TORCH": "1"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert completed.stdout.strip() == "[]"


class FixedLengthCaptioner(Captioner):
    """Always `length` new tokens, whatever the decoding settings ask: what the timing loop must refuse."""

    name, preprocessing, generation_defaults = "fixed", {}, {}

    def __init__(self, length: int) -> None:
        self.length = length

    def preprocess(self, images):
        return np.zeros((1, 3, 8, 8), dtype=np.float32)

    def _generate(self, pixel_values, settings):
        return np.zeros((len(pixel_values), 1 + self.length), dtype=np.int64)

    def decode(self, sequences):
        return [""] * len(sequences)


def test_timing_loop_asserts_the_caption_length() -> None:
    images = [Image.new("RGB", (8, 8))] * 3
    assert len(time_captions(FixedLengthCaptioner(4), images, repeats=2, warmup=1, tokens=4)) == 6
    with pytest.raises(AssertionError, match="expected exactly 5"):
        time_captions(FixedLengthCaptioner(4), images, repeats=1, warmup=0, tokens=5)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peers_are_captioners_that_generate_exactly_the_requested_tokens(name) -> None:
    captioner = PeerCaptioner(name, vision=TINY_TRANSFORMER, text=TINY_TRANSFORMER)
    images = [Image.new("RGB", (120, 90), (10, 200, 30))]
    assert len(time_captions(captioner, images, repeats=1, warmup=0, tokens=3)) == 1  # exactly 3 new tokens
    pixel_values = captioner.preprocess(images)
    assert pixel_values.shape == (1, 3, captioner.preprocessing["image_size"], captioner.preprocessing["image_size"])
    ids = captioner.generate(pixel_values, num_beams=1, min_new_tokens=3, max_new_tokens=3)
    assert captioner.decode(ids) == [" ".join(str(token) for token in ids[0])]  # no vocabulary: the ids as text
    assert captioner.lr_images(pixel_values)[0].size == pixel_values.shape[2:]
    weight = footprint(captioner)
    assert weight.size_mib == 4 * weight.parameters / 2**20 and weight.size_source == "fp32 parameters x 4 bytes"


def test_latency_setups_cover_every_backend_mode_and_thread_count(tmp_path) -> None:
    artifacts = {(backend, mode): tmp_path for backend in (PYTORCH, ORT_FP32, ORT_INT8) for mode in ("both", "lr")}
    setups = latency_setups(artifacts, ["a.png", "b.png", "c.png", "d.png"], 12, 2, peers=True, batch_size=1)
    soli = [s for s in setups if s.system == SOLI]
    threads = sorted({1, os.cpu_count()})
    assert {(s.backend, s.inference_branches, s.threads) for s in soli} == {
        (b, m, t) for b, m in artifacts for t in threads
    } and len(soli) == 6 * len(threads)
    peers = [s for s in setups if s.system != SOLI]
    assert {(s.system, s.threads) for s in peers} == {(p, t) for p in PEERS for t in threads}
    assert all(len(s.photos) == 3 and s.repeats == 1 and s.backend == PYTORCH for s in peers)
    assert all(s.tokens == 12 for s in setups)


def test_target_and_ratios_come_from_the_rows() -> None:
    report = sample_report()
    assert report["target"]["met"] == {"both": False, "lr": True} and report["target"]["targets_ms"] == TARGETS_MS
    assert report["target"]["int8_over_fp32"] == {"lr": 0.5}  # the fp32 graphs measured for lr only
    one, two = report["peers"]
    assert one["soli_over_peer"] == {"pytorch-eager both": 0.02, "ort-int8 both": 0.008, "ort-int8 lr": 0.00225}
    assert two["soli_over_peer"] == {"ort-int8 lr": 0.004}  # only what was measured at 2 threads


def test_latency_section_renders_soli_and_peer_tables(tmp_path) -> None:
    path = tmp_path / "latency_cpu.json"
    path.write_text(json.dumps(sample_report()))
    section = latency_section(path)
    assert "Some CPU with 2 CPUs" in section and "exactly 12 new tokens" in section
    assert (
        "`both` at most 9 ms: 16.0 ms (not met); `lr` at most 5 ms: 4.5 ms (met, 0.50x the float32 graphs)" in section
    )
    assert "| ort-int8 | lr | 1 | 4.5 | 5.4 | 100 | 12 | 20.0 | 150 |" in section
    assert "| blip-base | Salesforce/blip-image-captioning-base | 1 | 2000 | 2400 | 100 | 12 | 200 M |" in section
    assert "| 0.02 | 0.008 | 0.00225 |" in section and "never loaded torch" in section
    plot_latency(sample_report(), tmp_path / "latency_cpu.png")
    assert (tmp_path / "latency_cpu.png").stat().st_size > 1000


def test_the_committed_latency_report_renders_from_its_json() -> None:
    report = json.loads((ROOT / "benchmarks" / "latency_cpu.json").read_text(encoding="utf-8"))
    assert latency_document(report) == (ROOT / "benchmarks" / "latency_cpu.md").read_text(encoding="utf-8")


# --- throughput at a larger batch ----------------------------------------------------------------------------------


def test_batches_hold_every_image_once_and_cycle_to_fill() -> None:
    assert batches(["a", "b", "c"], 1) == [["a"], ["b"], ["c"]]
    assert batches(["a", "b", "c"], 2) == [["a", "b"], ["c", "a"]]
    assert batches(["a", "b"], 5) == [["a", "b", "a", "b", "a"]]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        batches(["a"], 0)


def test_timing_loop_times_one_call_per_batch() -> None:
    images = [Image.new("RGB", (8, 8))] * 3
    assert len(time_captions(FixedLengthCaptioner(4), images, repeats=2, warmup=1, tokens=4, batch_size=2)) == 4


def test_latency_setups_add_the_batch_rows_with_all_threads(tmp_path) -> None:
    backends = (PYTORCH, ORT_FP32, ORT_INT8, ORT_INT8_STATIC)
    artifacts = {(backend, mode): tmp_path for backend in backends for mode in ("both", "lr")}
    setups = latency_setups(artifacts, ["a.png", "b.png"], 12, 3, peers=True)
    batched = [s for s in setups if s.batch_size > 1]
    assert {s.batch_size for s in batched} == {BATCH_SIZE} and {s.threads for s in batched} == {os.cpu_count()}
    soli = {(s.backend, s.inference_branches) for s in batched if s.system == SOLI}
    assert soli == {(b, m) for b in (PYTORCH, ORT_INT8, ORT_INT8_STATIC) for m in ("both", "lr")}
    assert {s.system for s in batched if s.system != SOLI} == set(PEERS)
    assert all(s.repeats == 3 for s in batched if s.system == SOLI)
    single = latency_setups(artifacts, ["a.png", "b.png"], 12, 3, peers=True, batch_size=1)
    assert single == [s for s in setups if s.batch_size == 1]


def test_batch_mode_runs_and_reports_images_per_second(saved_tiny_model, photos) -> None:
    import torch

    threads = torch.get_num_threads()
    setup = LatencySetup(SOLI, PYTORCH, 1, 3, photos, str(saved_tiny_model), "lr", repeats=2, warmup=1, batch_size=4)
    try:
        row = measure(setup).to_dict()  # in this process, whose torch threads it sets
    finally:
        torch.set_num_threads(threads)
    assert row["batch_size"] == 4 and row["measurements"] == 2 == len(row["per_image_ms"])  # one call per batch
    assert row["images_per_second"] == pytest.approx(1000 / row["median_ms"])
    report = sample_report() | {"throughput": [row]}
    text = latency_markdown(report)
    assert "Throughput at batch 4 with 1 threads" in text
    assert f"| soli | pytorch-eager | lr | 1 | 4 | {row['images_per_second']:.1f} |" in text
    assert "Throughput" not in latency_markdown(sample_report())  # reports without batch rows render as before


def test_each_onnx_backend_names_the_weights_it_needs() -> None:
    from soli_hf.onnx.manifest import quantization_kind

    assert quantization_kind(None) == "float32"
    assert quantization_kind({"mode": "dynamic"}) == "int8"
    assert quantization_kind({"mode": "static"}) == "static int8"
