"""Where the time of a torch-free caption goes: `SoliOnnxCaptioner`'s stages and onnxruntime's operators.

Batch 1, greedy, exactly `tokens` new tokens, as `scripts/benchmark.py latency` measures it:

- stages (median ms), timed inside real captions: reducing the decoded photo to the model's input (`preprocess`),
  the encoder graph, the decoder-step graph's runs, and the rest of the search (the loop in numpy);
- operators: onnxruntime's own profile of each graph, its kernel time per operator type, ms per run.

numpy, pillow and onnxruntime only, so it also runs on the device (`python scripts/benchmark.py profile --onnx DIR`).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from ..onnx.manifest import describe_quantization
from ..onnx.runtime import SoliOnnxCaptioner, greedy_search, session_options
from ..onnx.spec import GREEDY_KEY
from .markdown import markdown_table


class _TimedSession:
    """An onnxruntime session whose `run` calls add up their wall time in `seconds`."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.seconds = session, 0.0

    def run(self, *args: Any) -> list[np.ndarray]:
        start = time.perf_counter()
        outputs = self.session.run(*args)
        self.seconds += time.perf_counter() - start
        return outputs


def _timed_caption(captioner: SoliOnnxCaptioner, image: Image.Image, tokens: int) -> dict[str, float]:
    """Milliseconds of each stage of one greedy caption of `image`, as `generate` runs them."""
    settings = captioner.settings(num_beams=1, min_new_tokens=tokens, max_new_tokens=tokens)
    start = time.perf_counter()
    pixel_values = captioner.preprocess(image)
    preprocessed = time.perf_counter()
    encoded = captioner.encode(pixel_values)
    encoded_at = time.perf_counter()
    if GREEDY_KEY in captioner.sessions:  # the whole search in one call of the greedy graph (fast mode's folders)
        captioner.search(encoded, num_beams=1, min_new_tokens=tokens, max_new_tokens=tokens)
        end = time.perf_counter()
        searched = {f"greedy graph ({tokens} tokens, one call)": end - encoded_at}
    else:
        decoder = captioner.decoder_session(encoded)
        decoder.session = session = _TimedSession(decoder.session)
        greedy_search(decoder, 1, settings)
        end = time.perf_counter()
        searched = {
            f"decoder graph ({tokens} runs)": session.seconds,
            "search loop (numpy)": end - encoded_at - session.seconds,
        }
    stages = {
        "preprocess": preprocessed - start,
        "encoder": encoded_at - preprocessed,
        **searched,
        "caption": end - start,
    }
    return {name: 1e3 * seconds for name, seconds in stages.items()}


def stage_times(
    captioner: SoliOnnxCaptioner, image: Image.Image, tokens: int, repeats: int, warmup: int = 3
) -> dict[str, float]:
    """Median ms of each stage of a greedy caption of `image` over `repeats` captions (see the module docstring)."""
    for _ in range(warmup):
        _timed_caption(captioner, image, tokens)
    runs = [_timed_caption(captioner, image, tokens) for _ in range(repeats)]
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def operator_times(
    graph_path: str | os.PathLike, feeds: dict[str, np.ndarray], threads: int, runs: int
) -> dict[str, float]:
    """onnxruntime's kernel time per operator type of `graph_path` on `feeds`, ms per run, largest first."""
    with tempfile.TemporaryDirectory(prefix="soli_ort_profile_") as scratch:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: microseconds / runs / 1e3 for op, microseconds in totals.most_common()}


def profile_onnx(
    onnx_dir: str | os.PathLike, images: Sequence[Image.Image], tokens: int = 12, threads: int = 1, repeats: int = 30
) -> dict[str, Any]:
    """Stage times (each photo's median over `repeats` runs, then the median over the photos) and the per-operator
    times of the encoder and decoder-step graphs (on the first photo) of an exported SOLI folder."""
    captioner = SoliOnnxCaptioner(onnx_dir, num_threads=threads)
    per_image = [stage_times(captioner, image, tokens, repeats) for image in images]
    stages = {name: statistics.median(times[name] for times in per_image) for name in per_image[0]}
    pixel_values = captioner.preprocess(images[0])
    start_token = np.full(1, captioner.generation.decoder_start_token_id, dtype=np.int64)
    inputs = {"encoder": [pixel_values], "decoder_step": [start_token, *captioner.encode(pixel_values)]}
    manifest = captioner.manifest
    operators = {
        key: operator_times(
            Path(onnx_dir) / graph["file"],
            dict(zip(captioner.input_names[key], inputs[key], strict=True)),
            threads,
            repeats,
        )
        for key, graph in manifest["graphs"].items()
        if key in inputs  # not the greedy graph: its loop runs the decoder step's operators, profiled here per run
    }
    return {
        "onnx_dir": str(onnx_dir),
        "inference_branches": manifest.get("inference_branches"),
        "quantization": describe_quantization(manifest.get("quantization")),
        "threads": threads,
        "tokens": tokens,
        "images": [list(image.size) for image in images],
        "repeats": repeats,
        "stages_ms": stages,
        "operators_ms_per_run": operators,
        "onnxruntime": ort.__version__,
    }


def profile_markdown(result: dict[str, Any], top: int = 8) -> str:
    """The stage table and, per graph, its `top` operator types."""
    stages = result["stages_ms"]
    lines = [
        (
            f"`{result['onnx_dir']}` (inference_branches={result['inference_branches']}, weights: "
            f"{result['quantization']}), {result['threads']} thread(s), batch 1, greedy, {result['tokens']} new "
            f"tokens, median over {len(result['images'])} photos of each photo's median of {result['repeats']} runs; "
            f"onnxruntime {result['onnxruntime']}."
        ),
        "",
        markdown_table(["stage", "ms"], [[name, f"{ms:.2f}"] for name, ms in stages.items()]),
    ]
    for graph, operators in result["operators_ms_per_run"].items():
        total = sum(operators.values())
        rows = [[op, f"{ms:.3f}", f"{100 * ms / total:.0f}%"] for op, ms in list(operators.items())[:top]]
        title = f"{graph}: onnxruntime kernel time {total:.3f} ms per run"
        lines += ["", title, "", markdown_table(["operator", "ms", "share"], rows)]
    return "\n".join(lines)


def benchmark_profile(
    model_dir: Path, onnx_dirs: Sequence[Path], tokens: int, threads: int, repeats: int
) -> dict[str, Any]:
    """`profile_onnx` of the given ONNX folders, or of `model_dir`'s int8 exports (both and lr: that needs torch),
    on the sample photos, with the machine it ran on."""
    from .latency import ORT_INT8
    from .machine import machine
    from .sample_photos import load_sample_photos

    photos = [photo.convert("RGB") for photo in load_sample_photos().values()]
    with tempfile.TemporaryDirectory(prefix="soli_profile_") as scratch:
        if onnx_dirs:
            folders = {str(folder): folder for folder in onnx_dirs}
        else:  # named by what they were: the temporary folder is gone afterwards
            from .exports import export_soli, inference_modes

            modes = inference_modes(model_dir)
            artifacts = export_soli(model_dir, modes, Path(scratch))
            folders = {f"{model_dir.name} exported ({ORT_INT8}-{mode})": artifacts[ORT_INT8, mode] for mode in modes}
        profiles = [
            profile_onnx(folder, photos, tokens, threads, repeats) | {"onnx_dir": name}
            for name, folder in folders.items()
        ]
    return {"machine": machine(), "profiles": profiles}


def profiles_markdown(report: dict[str, Any]) -> str:
    """`profile_markdown` of every profile of a `benchmark_profile` report."""
    return "\n\n".join(profile_markdown(profile) for profile in report["profiles"])


def write_profile_report(report: dict[str, Any], json_path: Path) -> None:
    """The Markdown report next to the JSON (same stem, .md)."""
    text = f"# Where SOLI's onnxruntime caption time goes\n\n{profiles_markdown(report)}\n"
    json_path.with_suffix(".md").write_text(text, encoding="utf-8")
