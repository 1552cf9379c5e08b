"""SOLI benchmarks. `python scripts/benchmark.py metrics`: our CIDEr-D against pycocoevalcap's, the corpus
metric and the per-batch SCST reward. `python scripts/benchmark.py latency`: caption latency of a model against
its peers (details below).

Data: 5,000 Flickr8k training images x 5 human captions (25,000 references) read
from ../shared when present, otherwise synthetic captions.  Each image's
"prediction" is one of its own human captions (caption ``i % 5``), as in a
leave-one-out human baseline; timings do not depend on the overlap.

1. Corpus CIDEr-D of the 5,000 predictions: ``soli_hf.metrics.cider_d`` vs
   ``pycocoevalcap.cider.Cider.compute_score``, both on the same pre-tokenised text.
2. SCST reward for batches of 32 images x 5 sampled captions (160 candidates,
   each against its image's 5 references), with document frequencies cached from
   the 25,000 references: ``CiderD.score_batch`` (text and token ids) vs
   pycocoevalcap's ``CiderScorer`` given the same cached document frequencies
   (the CiderD "corpus" reward of self-critical training code).

Prints a table and writes JSON (``--out``, default benchmarks/metrics.json).
Run: ``python scripts/benchmark.py metrics [--out PATH] [--batches 50] [--repeats 3]``.

Latency: batch 1, greedy, every caption exactly ``--tokens`` new tokens (default 12, about a mean Flickr8k
caption), preprocessing from the decoded photo included, on scikit-image's 5 sample photos. SOLI in PyTorch eager,
onnxruntime fp32 and onnxruntime int8 (the "arm64" settings, exported and quantized into a temporary folder), each
with ``inference_branches`` both and lr, with 1 thread and all threads; then the peers of ``soli_hf.peers``
(ViT+GPT-2, BLIP base, GIT base; random weights, 3 photos x 1 pass) with SOLI/peer latency ratios. Every
configuration runs in its own subprocess (its peak RSS is its own; onnxruntime ones without torch). Writes the JSON
(``--out``, default benchmarks/latency_cpu.json) and, next to it, a Markdown report (.md) and a bar chart (.png).
Run: ``python scripts/benchmark.py latency [--model DIR] [--out PATH] [--repeats 20] [--tokens 12] [--no-peers]``.

Profile: where an onnxruntime caption's time goes (``soli_hf.bench.onnx_profile``): the stages (preprocessing, encoder,
one decoder step, the numpy search loop) and onnxruntime's kernel time per operator type of each graph, for the
given exported folders or, by default, the shipped model's int8 exports (both and lr). Writes the JSON (default
benchmarks/onnx_profile.json) and a Markdown report next to it.
Run: ``python scripts/benchmark.py profile [--onnx DIR ...] [--threads 1] [--repeats 30] [--tokens 12]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from soli_hf.caption_files import DEFAULT_MODEL_DIR
from soli_hf.bench.latency import BACKENDS, ORT_FP32, ORT_INT8, PYTORCH, SOLI, LatencySetup, measure_in_subprocess
from soli_hf.bench.latency_report import latency_markdown, plot_latency, soli_over_peer, target_check
from soli_hf.metrics import CiderD, cider_d, tokenize

FLICKR8K_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k" / "Flickr8k_text"
NUM_IMAGES, REFS_PER_IMAGE = 5000, 5
BATCH_IMAGES, SAMPLES_PER_IMAGE = 32, 5

#: (candidates, references of each candidate)
Batch = tuple[list[str], list[list[str]]]
RewardFunction = Callable[[Sequence[str], Sequence[Sequence[str]]], np.ndarray]


def load_references(num_images: int = NUM_IMAGES) -> tuple[list[list[str]], str]:
    """``num_images`` lists of 5 raw captions, and where they came from."""
    train_list = FLICKR8K_TEXT / "Flickr_8k.trainImages.txt"
    if train_list.is_file():
        captions: dict[str, list[str]] = defaultdict(list)
        for line in (FLICKR8K_TEXT / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
            key, caption = line.split("\t", 1)
            captions[key.split("#")[0]].append(caption)
        images = train_list.read_text(encoding="utf-8").split()[:num_images]
        return [captions[image][:REFS_PER_IMAGE] for image in images], "flickr8k-train"
    return synthetic_references(num_images), "synthetic"


def synthetic_references(num_images: int, seed: int = 0) -> list[list[str]]:
    """Caption-like random sentences: a subject, a verb and a place from small vocabularies."""
    rng = random.Random(seed)
    subjects = ["a dog", "a man", "two children", "a woman", "a black cat", "a group of people", "a boy", "a girl"]
    verbs = ["runs", "is sitting", "plays", "jumps", "is walking", "stands", "rides a bike", "swims"]
    places = ["on the grass", "in the snow", "near a lake", "on a street", "in a park", "at the beach", "indoors"]
    extras = ["", "with a ball", "in a red shirt", "while smiling", "next to a tree", "at night"]

    def caption() -> str:
        parts = (rng.choice(subjects), rng.choice(verbs), rng.choice(places), rng.choice(extras))
        return " ".join(part for part in parts if part) + " ."

    return [[caption() for _ in range(REFS_PER_IMAGE)] for _ in range(num_images)]


def best_time(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest wall time over ``repeats`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def coco_corpus_cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """pycocoevalcap's ``Cider.compute_score`` per-image scores."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [hyp] for i, hyp in enumerate(hypotheses)}
    return np.asarray(Cider().compute_score(gts, res)[1])


class _CorpusSize(list):
    """A list of cooked references whose ``len`` is the cached corpus' size (coco-caption uses it as N)."""

    def __init__(self, items: list, corpus_size: int) -> None:
        super().__init__(items)
        self.corpus_size = corpus_size

    def __len__(self) -> int:
        return self.corpus_size


def coco_reward_scorer(references: Sequence[Sequence[str]]) -> RewardFunction:
    """pycocoevalcap's CiderScorer with document frequencies cached from ``references``."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    corpus = CiderScorer(n=4, sigma=6.0)
    for refs in references:
        corpus.cook_append(None, list(refs))
    corpus.compute_doc_freq()
    document_frequency, corpus_size = corpus.document_frequency, len(references)

    def score(candidates: Sequence[str], batch_refs: Sequence[Sequence[str]]) -> np.ndarray:
        scorer = CiderScorer(n=4, sigma=6.0)
        for candidate, refs in zip(candidates, batch_refs, strict=True):
            scorer.cook_append(candidate, list(refs))
        scorer.document_frequency = document_frequency
        scorer.crefs = _CorpusSize(scorer.crefs, corpus_size)
        return np.asarray(scorer.compute_cider())

    return score


def make_batches(references: list[list[str]], num_batches: int, seed: int = 0) -> list[Batch]:
    """SCST-like batches: per image, 5 "samples" (its captions with one word dropped) and its references."""
    rng = random.Random(seed)
    batches = []
    for _ in range(num_batches):
        candidates, batch_refs = [], []
        for image in rng.sample(range(len(references)), BATCH_IMAGES):
            for caption in references[image][:SAMPLES_PER_IMAGE]:
                words = caption.split()
                del words[rng.randrange(len(words))]
                candidates.append(" ".join(words))
                batch_refs.append(references[image])
        batches.append((candidates, batch_refs))
    return batches


def benchmark_corpus(raw_references: list[list[str]], repeats: int) -> tuple[dict[str, Any], list[list[str]]]:
    """Corpus CIDEr-D, ours vs pycocoevalcap; also returns the tokenised references."""
    flat_raw = [ref for refs in raw_references for ref in refs]
    tokenize_seconds, flat = best_time(lambda: tokenize(flat_raw), 1)
    references = [flat[i * REFS_PER_IMAGE : (i + 1) * REFS_PER_IMAGE] for i in range(len(raw_references))]
    hypotheses = [refs[i % REFS_PER_IMAGE] for i, refs in enumerate(references)]
    ours_seconds, (ours_score, ours_per_image) = best_time(lambda: cider_d(hypotheses, references), repeats)
    coco_seconds, coco_per_image = best_time(lambda: coco_corpus_cider(hypotheses, references), repeats)
    results = {
        "predictions": len(hypotheses),
        "references": len(flat),
        "ours_seconds": ours_seconds,
        "pycocoevalcap_seconds": coco_seconds,
        "speedup": coco_seconds / ours_seconds,
        "ours_cider": ours_score,
        "pycocoevalcap_cider": float(np.mean(coco_per_image)),
        "max_abs_diff_per_image": float(np.max(np.abs(ours_per_image - coco_per_image))),
        "our_ptb_tokenization_seconds_25k_references": tokenize_seconds,
    }
    return results, references


def _max_difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(a - b)) for a, b in zip(ours, theirs, strict=True)))


def benchmark_reward(references: list[list[str]], num_batches: int, repeats: int) -> dict[str, Any]:
    """Per-batch SCST reward with cached document frequencies, ours (text and ids) vs pycocoevalcap."""
    batches = [(tokenize(c), r) for c, r in make_batches(references, num_batches)]
    build_ours, scorer = best_time(lambda: CiderD(references, tokenize=False), 1)
    build_coco, coco_score = best_time(lambda: coco_reward_scorer(references), 1)
    vocabulary: dict[str, int] = {}

    def ids(caption: str) -> list[int]:
        return [vocabulary.setdefault(word, len(vocabulary) + 1) for word in caption.split()] + [0]  # 0 = eos

    id_scorer = CiderD([[ids(r) for r in refs] for refs in references], eos_id=0)
    id_batches = [
        ([ids(c) for c in cands], [[ids(r) for r in refs] for refs in refs_list]) for cands, refs_list in batches
    ]

    def run(score: RewardFunction, data: list) -> list[np.ndarray]:
        return [score(candidates, refs) for candidates, refs in data]

    ours, ours_rewards = best_time(lambda: run(scorer.score_batch, batches), repeats)
    ours_ids, id_rewards = best_time(lambda: run(id_scorer.score_batch, id_batches), repeats)
    coco, coco_rewards = best_time(lambda: run(coco_score, batches), repeats)
    return {
        "batches": num_batches,
        "candidates_per_batch": BATCH_IMAGES * SAMPLES_PER_IMAGE,
        "ours_ms_per_batch": 1e3 * ours / num_batches,
        "ours_token_ids_ms_per_batch": 1e3 * ours_ids / num_batches,
        "pycocoevalcap_ms_per_batch": 1e3 * coco / num_batches,
        "speedup": coco / ours,
        "speedup_token_ids": coco / ours_ids,
        "ours_build_seconds": build_ours,
        "pycocoevalcap_build_seconds": build_coco,
        "max_abs_diff": _max_difference(ours_rewards, coco_rewards),
        "max_abs_diff_token_ids": _max_difference(id_rewards, coco_rewards),
    }


def benchmark(num_batches: int, repeats: int) -> dict[str, Any]:
    raw_references, source = load_references()
    corpus, references = benchmark_corpus(raw_references, repeats)
    return {
        "data": source,
        "repeats": repeats,
        "machine": machine(),
        "corpus_cider_d": corpus,
        "scst_reward": benchmark_reward(references, num_batches, repeats),
    }


def print_table(results: dict[str, Any]) -> None:
    corpus, reward = results["corpus_cider_d"], results["scst_reward"]
    print(f"data: {results['data']}, best of {results['repeats']} runs")
    print(f"{'benchmark':<44}{'ours':>12}{'pycocoevalcap':>15}{'speed-up':>10}{'max |diff|':>12}")
    print(
        f"{'corpus CIDEr-D, 5k preds / 25k refs (s)':<44}{corpus['ours_seconds']:>12.3f}"
        f"{corpus['pycocoevalcap_seconds']:>15.3f}{corpus['speedup']:>9.1f}x{corpus['max_abs_diff_per_image']:>12.1e}"
    )
    print(
        f"{'SCST reward, 32x5 per batch (ms/batch)':<44}{reward['ours_ms_per_batch']:>12.2f}"
        f"{reward['pycocoevalcap_ms_per_batch']:>15.2f}{reward['speedup']:>9.1f}x{reward['max_abs_diff']:>12.1e}"
    )
    print(
        f"{'  same, candidates as token ids (ms/batch)':<44}{reward['ours_token_ids_ms_per_batch']:>12.2f}"
        f"{reward['pycocoevalcap_ms_per_batch']:>15.2f}{reward['speedup_token_ids']:>9.1f}x"
        f"{reward['max_abs_diff_token_ids']:>12.1e}"
    )
    print(f"corpus CIDEr-D: ours {corpus['ours_cider']:.6f}, pycocoevalcap {corpus['pycocoevalcap_cider']:.6f}")
    seconds = corpus["our_ptb_tokenization_seconds_25k_references"]
    print(f"PTB tokenisation of the 25k references (pure Python): {seconds:.2f} s")


def machine() -> dict[str, Any]:
    """The Python version, processor architecture, CPU model and CPU count of this machine."""
    return {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
    }


#: Every caption's new tokens in the latency benchmark (min_new_tokens = max_new_tokens).
DEFAULT_TOKENS = 12
TOKENS_NOTE = (
    "about the mean Flickr8k caption: the training captions average 11.8 words, 11.0 SOLI tokens, 12 with the "
    "end token"
)
SOLI_WARMUP, PEER_PHOTOS, PEER_WARMUP, PEER_REPEATS = 3, 3, 1, 1


def inference_modes(model_dir: Path) -> tuple[str, ...]:
    """The `inference_branches` a saved SOLI has: "both" and "lr", or "lr" alone without the SR branch."""
    from soli_hf import SoliConfig

    return ("both", "lr") if SoliConfig.from_pretrained(model_dir).use_sr_branch else ("lr",)


def export_soli(model_dir: Path, modes: Sequence[str], folder: Path) -> dict[tuple[str, str], Path]:
    """The artifact of each (backend, inference mode): the model folder for PyTorch, fp32 and int8 ("arm64", the
    deployed settings) ONNX exports written under `folder`."""
    from soli_hf import SoliForConditionalGeneration, SoliProcessor
    from soli_hf.onnx.export import export_onnx
    from soli_hf.onnx.quantize import quantize_onnx

    processor = SoliProcessor.from_pretrained(model_dir)
    for mode in modes:
        model = SoliForConditionalGeneration.from_pretrained(model_dir, inference_branches=mode).eval()
        export_onnx(model, folder / f"{ORT_FP32}-{mode}", processor=processor)
        quantize_onnx(folder / f"{ORT_FP32}-{mode}", folder / f"{ORT_INT8}-{mode}", target="arm64")
    return {
        (backend, mode): model_dir if backend == PYTORCH else folder / f"{backend}-{mode}"
        for backend in BACKENDS
        for mode in modes
    }


def latency_setups(
    artifacts: dict[tuple[str, str], Path], photos: list[str], tokens: int, repeats: int, peers: bool
) -> list[LatencySetup]:
    """Every configuration: SOLI's backends x inference modes x {1, all} threads, then the peers."""
    from soli_hf.bench.peers import PEERS

    thread_counts = sorted({1, os.cpu_count() or 1})
    setups = [
        LatencySetup(SOLI, backend, threads, tokens, tuple(photos), str(artifact), mode, repeats, SOLI_WARMUP)
        for (backend, mode), artifact in artifacts.items()
        for threads in thread_counts
    ]
    if peers:
        peer_photos = tuple(photos[:PEER_PHOTOS])
        setups += [
            LatencySetup(name, PYTORCH, threads, tokens, peer_photos, repeats=PEER_REPEATS, warmup=PEER_WARMUP)
            for name in PEERS
            for threads in thread_counts
        ]
    return setups


def benchmark_latency(model_dir: Path, tokens: int, repeats: int, peers: bool) -> dict[str, Any]:
    """Latency of every configuration, each in its own subprocess, on scikit-image's sample photos."""
    from soli_hf.bench.peers import PEERS
    from soli_hf.bench.sample_photos import load_sample_photos

    modes = inference_modes(model_dir)
    with tempfile.TemporaryDirectory(prefix="soli_latency_") as scratch:
        folder = Path(scratch)
        photos = []
        for name, photo in load_sample_photos().items():
            photo.save(folder / f"{name}.png")
            photos.append(str(folder / f"{name}.png"))
        artifacts = export_soli(model_dir, modes, folder)
        results = []
        for setup in (progress := tqdm(latency_setups(artifacts, photos, tokens, repeats, peers), unit="config")):
            progress.set_description(
                f"{setup.system} {setup.backend} {setup.inference_branches or '-'} x{setup.threads}"
            )
            results.append(measure_in_subprocess(setup).to_dict())
    soli_rows = [r for r in results if r["system"] == SOLI]
    peer_rows = [
        r | {"like": PEERS[r["system"]].like, "soli_over_peer": soli_over_peer(soli_rows, r)}
        for r in results
        if r["system"] != SOLI
    ]
    return {
        "model": str(model_dir),
        "machine": machine(),
        "versions": library_versions(),
        "photos": [Path(p).stem for p in photos],
        "tokens": tokens,
        "tokens_note": TOKENS_NOTE,
        "decoding": "batch 1, greedy (num_beams=1), min_new_tokens = max_new_tokens = tokens; SOLI keeps its saved "
        "no_repeat_ngram_size and suppress_tokens, the peers their config defaults",
        "repeats": repeats,
        "target": target_check(soli_rows),
        "results": soli_rows,
        "peers": peer_rows,
    }


def cpu_model() -> str:
    """The CPU's model name (Linux), or the processor architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that run the captioners."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "onnxruntime", "numpy", "pillow")}


def benchmark_profile(
    model_dir: Path, onnx_dirs: Sequence[Path], tokens: int, threads: int, repeats: int
) -> dict[str, Any]:
    """`soli_hf.bench.onnx_profile` of the given ONNX folders, or of `model_dir`'s int8 exports (both and lr), on the
    sample photos."""
    from soli_hf.bench.onnx_profile import profile_onnx
    from soli_hf.bench.sample_photos import load_sample_photos

    photos = [photo.convert("RGB") for photo in load_sample_photos().values()]
    with tempfile.TemporaryDirectory(prefix="soli_profile_") as scratch:
        if onnx_dirs:
            folders = {str(folder): folder for folder in onnx_dirs}
        else:  # named by what they were: the temporary folder is gone afterwards
            modes = inference_modes(model_dir)
            artifacts = export_soli(model_dir, modes, Path(scratch))
            folders = {f"{model_dir.name} exported ({ORT_INT8}-{mode})": artifacts[ORT_INT8, mode] for mode in modes}
        profiles = [
            profile_onnx(folder, photos, tokens, threads, repeats) | {"onnx_dir": name}
            for name, folder in folders.items()
        ]
    return {"machine": machine(), "profiles": profiles}


def write_latency_outputs(results: dict[str, Any], out: Path) -> None:
    """The Markdown report and the bar chart next to the JSON (same stem, .md and .png)."""
    title = f"# SOLI caption latency ({results['machine']['cpu_model']}, {results['machine']['cpus']} CPUs)"
    out.with_suffix(".md").write_text(f"{title}\n\n{latency_markdown(results)}\n", encoding="utf-8")
    plot_latency(results, out.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)
    metrics = benchmarks.add_parser("metrics", help="CIDEr-D corpus metric and SCST reward vs pycocoevalcap")
    metrics.add_argument("--out", type=Path, default=Path("benchmarks/metrics.json"), help="JSON output path")
    metrics.add_argument("--batches", type=int, default=50, help="SCST batches to time")
    metrics.add_argument("--repeats", type=int, default=3, help="timed runs per benchmark (best is kept)")
    latency = benchmarks.add_parser(
        "latency", help="caption latency, size and peak RSS: PyTorch eager, ORT fp32 and int8, and peers"
    )
    latency.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="a saved SOLI folder")
    latency.add_argument("--out", type=Path, default=Path("benchmarks/latency_cpu.json"), help="JSON output path")
    latency.add_argument("--repeats", type=int, default=20, help="timed passes of SOLI over the 5 sample photos")
    latency.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="new tokens of every caption")
    latency.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True, help="time the peers too")
    profile = benchmarks.add_parser(
        "profile", help="where an onnxruntime caption's time goes: stages and per-operator kernel times"
    )
    profile.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="exported (int8) when no --onnx")
    profile.add_argument("--onnx", type=Path, action="append", default=[], help="an exported folder (repeatable)")
    profile.add_argument("--out", type=Path, default=Path("benchmarks/onnx_profile.json"), help="JSON output path")
    profile.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    profile.add_argument("--repeats", type=int, default=30, help="timed runs of each stage per photo")
    profile.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="new tokens of every caption")
    args = parser.parse_args()
    if args.benchmark == "profile":
        from soli_hf.bench.onnx_profile import profile_markdown

        results = benchmark_profile(args.model, args.onnx, args.tokens, args.threads, args.repeats)
        report = "\n\n".join(profile_markdown(profile) for profile in results["profiles"])
        print(report)
    elif args.benchmark == "latency":
        results = benchmark_latency(args.model, args.tokens, args.repeats, args.peers)
        print(latency_markdown(results))
    else:
        results = benchmark(args.batches, args.repeats)
        print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.benchmark == "latency":
        write_latency_outputs(results, args.out)
    elif args.benchmark == "profile":
        text = f"# Where SOLI's onnxruntime caption time goes\n\n{report}\n"
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
