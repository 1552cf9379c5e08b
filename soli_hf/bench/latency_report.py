"""Reading a latency report (the JSON of `scripts/benchmark.py latency`): SOLI/peer ratios, the int8 one-thread
target, Markdown tables (latency at batch 1; throughput at a larger batch, where measured) and a bar chart of the
batch-1 latencies. Used by the benchmark (its .md and .png) and by the model card."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .latency import ORT_FP32, ORT_INT8, ORT_INT8_COMPACT, ORT_INT8_FAST, PYTORCH
from .markdown import markdown_table
from .plots import saved_figure

#: The latency targets (issue 16): SOLI on onnxruntime int8, one thread, batch 1, at most this many ms per photo.
TARGETS_MS = {"lr": 5.0, "both": 9.0}
#: The SOLI configurations (backend, inference_branches) compared with each peer.
RATIO_BASES = ((PYTORCH, "both"), (ORT_INT8, "both"), (ORT_INT8, "lr"))

Row = dict[str, Any]


def ratio_key(backend: str, inference_branches: str) -> str:
    """The name of a SOLI configuration in a peer row's `soli_over_peer`."""
    return f"{backend} {inference_branches}"


def soli_over_peer(soli_rows: Sequence[Row], peer: Row) -> dict[str, float]:
    """Median latency of SOLI (each of `RATIO_BASES` that was measured) over the peer's, at the peer's threads."""
    medians = {
        (r["backend"], r["inference_branches"]): r["median_ms"] for r in soli_rows if r["threads"] == peer["threads"]
    }
    return {ratio_key(*base): medians[base] / peer["median_ms"] for base in RATIO_BASES if base in medians}


def target_check(soli_rows: Sequence[Row], backend: str = ORT_INT8) -> dict[str, Any]:
    """Whether SOLI on onnxruntime int8 (`backend`: dynamic, or another int8 mode) with one thread meets
    `TARGETS_MS`, per inference mode, and its median over that of the float32 graphs measured in the same run
    (`int8_over_fp32`)."""

    def medians(backend: str) -> dict[str, float]:
        return {
            r["inference_branches"]: r["median_ms"] for r in soli_rows if r["backend"] == backend and r["threads"] == 1
        }

    int8, fp32 = medians(backend), medians(ORT_FP32)
    return {
        "backend": backend,
        "threads": 1,
        "targets_ms": {mode: TARGETS_MS[mode] for mode in int8},
        "median_ms": int8,
        "met": {mode: ms <= TARGETS_MS[mode] for mode, ms in int8.items()},
        "int8_over_fp32": {mode: ms / fp32[mode] for mode, ms in int8.items() if mode in fp32},
    }


def target_sentence(target: dict[str, Any]) -> str:
    """The targets and, per inference mode, whether the measured median meets them."""
    if not target["median_ms"]:
        return f"Targets ({target['backend']}, one thread): not measured."
    verdicts = []
    for mode, ms in target["median_ms"].items():
        ratio = target["int8_over_fp32"].get(mode)
        versus_fp32 = f", {ratio:.2f}x the float32 graphs" if ratio is not None else ""
        met = "met" if target["met"][mode] else "not met"
        verdicts.append(f"`{mode}` at most {target['targets_ms'][mode]:g} ms: {ms:.1f} ms ({met}{versus_fp32})")
    return f"Targets {target['backend']}, one thread, batch 1: " + "; ".join(verdicts) + "."


def soli_table(rows: Sequence[Row]) -> str:
    """Markdown: one line per SOLI configuration."""
    header = [
        "backend",
        "inference_branches",
        "threads",
        "median ms",
        "p90 ms",
        "n",
        "tokens",
        "size MiB",
        "peak RSS MiB",
    ]
    cells = [
        [
            r["backend"],
            r["inference_branches"],
            r["threads"],
            f"{r['median_ms']:.1f}",
            f"{r['p90_ms']:.1f}",
            r["measurements"],
            r["caption_tokens"],
            f"{r['size_mib']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def peer_table(peers: Sequence[Row]) -> str:
    """Markdown: one line per peer and thread count, with the SOLI/peer median ratios."""
    keys = list(dict.fromkeys(key for p in peers for key in p["soli_over_peer"]))
    header = ["peer", "like", "threads", "median ms", "p90 ms", "n", "tokens", "parameters", "size MiB", "peak RSS MiB"]
    cells = [
        [
            p["system"],
            p["like"],
            p["threads"],
            f"{p['median_ms']:.0f}",
            f"{p['p90_ms']:.0f}",
            p["measurements"],
            p["caption_tokens"],
            f"{p['parameters'] / 1e6:.0f} M",
            f"{p['size_mib']:.0f}",
            f"{p['peak_rss_mib']:.0f}",
            *(f"{p['soli_over_peer'][k]:.3g}" if k in p["soli_over_peer"] else "" for k in keys),
        ]
        for p in peers
    ]
    return markdown_table([*header, *(f"SOLI {k} / peer" for k in keys)], cells)


def throughput_table(rows: Sequence[Row]) -> str:
    """Markdown: one line per configuration timed at a batch above 1 (SOLI's and the peers'), images per second."""
    header = ["system", "backend", "inference_branches", "threads", "batch", "images/s", "ms per image", "n", "RSS MiB"]
    cells = [
        [
            r["system"],
            r["backend"],
            r["inference_branches"] or "",
            r["threads"],
            r["batch_size"],
            f"{r['images_per_second']:.1f}",
            f"{r['median_ms']:.1f}",
            r["measurements"],
            f"{r['peak_rss_mib']:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def latency_markdown(report: dict[str, Any]) -> str:
    """The settings, the target verdict, the SOLI table and (when measured) the peer table."""
    rows, peers = report["results"], report.get("peers", [])
    no_torch = [r for r in rows if r["backend"] != PYTORCH]
    parts = [
        f"Batch 1, greedy, every caption exactly {report['tokens']} new tokens ({report['tokens_note']}); "
        "median and p90 of the per-image times (preprocessing of the decoded photo included) after "
        f"{rows[0]['warmup']} untimed captions; each configuration in its own process, whose peak RSS is given. "
        "Size: model.safetensors (PyTorch), encoder.onnx + decoder_step.onnx (onnxruntime), fp32 parameters x 4 "
        "bytes (peers)."
        + (
            " The onnxruntime processes never loaded torch."
            if no_torch and not any(r["torch_loaded"] for r in no_torch)
            else ""
        ),
        # from the rows: older reports hold older targets
        *[
            target_sentence(target_check(report["results"], backend))
            for backend in (ORT_INT8, ORT_INT8_FAST, ORT_INT8_COMPACT)
            if backend == ORT_INT8 or any(row["backend"] == backend for row in rows)
        ],
        soli_table(rows),
    ]
    if peers:
        parts += [
            "Peers (PyTorch eager, random weights, base configurations, their native input sizes; "
            f"{peers[0]['measurements']} timed captions after {peers[0]['warmup']} untimed):",
            peer_table(peers),
        ]
    if throughput := report.get("throughput"):
        parts += [
            f"Throughput at batch {throughput[0]['batch_size']} with {throughput[0]['threads']} threads: each timed "
            "call preprocesses and captions a batch of the photos (cycling to fill it), the same exact caption "
            "length; images/s from the median of the n timed calls, after one untimed.",
            throughput_table(throughput),
        ]
    return "\n\n".join(parts)


def plot_latency(report: dict[str, Any], path: Path) -> None:
    """A horizontal bar chart of the median ms of every configuration, one bar per thread count, log scale."""
    from matplotlib.ticker import FuncFormatter

    rows = [*report["results"], *report.get("peers", [])]
    labels = list(dict.fromkeys(_label(r) for r in rows))
    threads = sorted({r["threads"] for r in rows})
    height = 0.8 / len(threads)
    with saved_figure(path, figsize=(8, 0.45 * len(labels) + 1.2), dpi=120) as axes:
        for index, count in enumerate(threads):
            medians = {_label(r): r["median_ms"] for r in rows if r["threads"] == count}
            positions = [i + index * height for i, label in enumerate(labels) if label in medians]
            axes.barh(
                positions,
                [medians[label] for label in labels if label in medians],
                height,
                label=f"{count} thread{'s' * (count > 1)}",
            )
        for (mode, target_ms), style in zip(TARGETS_MS.items(), (":", "--"), strict=True):
            axes.axvline(target_ms, color="grey", linestyle=style, label=f"{mode} target")
        axes.set_yticks([i + height * (len(threads) - 1) / 2 for i in range(len(labels))], labels)
        axes.invert_yaxis()
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.set_xlabel(f"median ms per image (batch 1, greedy, {report['tokens']} tokens)")
        axes.legend(loc="upper right")


def latency_document(report: dict[str, Any]) -> str:
    """The whole Markdown report written next to the JSON: a title naming the machine, then `latency_markdown`."""
    machine = report["machine"]
    return f"# SOLI caption latency ({machine['cpu_model']}, {machine['cpus']} CPUs)\n\n{latency_markdown(report)}\n"


def write_latency_report(report: dict[str, Any], json_path: Path) -> None:
    """The Markdown report and the bar chart next to the JSON (same stem, .md and .png)."""
    json_path.with_suffix(".md").write_text(latency_document(report), encoding="utf-8")
    plot_latency(report, json_path.with_suffix(".png"))


def _label(row: Row) -> str:
    if row["inference_branches"] is None:
        return row["system"]
    return f"SOLI {row['backend']} {row['inference_branches']}"
