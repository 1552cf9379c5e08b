"""The speed of SOLI's CIDEr-D against pycocoevalcap's (`scripts/benchmark.py metrics`): the corpus metric and the
per-batch SCST reward.

Data: 5,000 Flickr8k training images x 5 human captions (25,000 references) read from ../shared when present,
otherwise synthetic captions. Each image's "prediction" is one of its own human captions (caption ``i % 5``), as in
a leave-one-out human baseline; timings do not depend on the overlap.

1. Corpus CIDEr-D of the 5,000 predictions: ``soli_hf.metrics.cider_d`` vs ``pycocoevalcap.cider.Cider.compute_score``,
   both on the same pre-tokenised text.
2. SCST reward for batches of 32 images x 5 sampled captions (160 candidates, each against its image's 5
   references), with document frequencies cached from the 25,000 references: ``CiderD.score_batch`` (text and token
   ids) vs pycocoevalcap's ``CiderScorer`` given the same cached document frequencies (the CiderD "corpus" reward of
   self-critical training code).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import CiderD, cider_d, tokenize
from .machine import machine

FLICKR8K_TEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k" / "Flickr8k_text"
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


def benchmark_metrics(num_batches: int, repeats: int) -> dict[str, Any]:
    """Both benchmarks on the Flickr8k references (or synthetic ones), with the machine they ran on."""
    raw_references, source = load_references()
    corpus, references = benchmark_corpus(raw_references, repeats)
    return {
        "data": source,
        "repeats": repeats,
        "machine": machine(),
        "corpus_cider_d": corpus,
        "scst_reward": benchmark_reward(references, num_batches, repeats),
    }


def metrics_table(results: dict[str, Any]) -> str:
    """The plain-text table `scripts/benchmark.py metrics` prints: times, speed-ups and agreement."""
    corpus, reward = results["corpus_cider_d"], results["scst_reward"]
    seconds = corpus["our_ptb_tokenization_seconds_25k_references"]
    return "\n".join(
        [
            f"data: {results['data']}, best of {results['repeats']} runs",
            f"{'benchmark':<44}{'ours':>12}{'pycocoevalcap':>15}{'speed-up':>10}{'max |diff|':>12}",
            f"{'corpus CIDEr-D, 5k preds / 25k refs (s)':<44}{corpus['ours_seconds']:>12.3f}"
            f"{corpus['pycocoevalcap_seconds']:>15.3f}{corpus['speedup']:>9.1f}x"
            f"{corpus['max_abs_diff_per_image']:>12.1e}",
            f"{'SCST reward, 32x5 per batch (ms/batch)':<44}{reward['ours_ms_per_batch']:>12.2f}"
            f"{reward['pycocoevalcap_ms_per_batch']:>15.2f}{reward['speedup']:>9.1f}x{reward['max_abs_diff']:>12.1e}",
            f"{'  same, candidates as token ids (ms/batch)':<44}{reward['ours_token_ids_ms_per_batch']:>12.2f}"
            f"{reward['pycocoevalcap_ms_per_batch']:>15.2f}{reward['speedup_token_ids']:>9.1f}x"
            f"{reward['max_abs_diff_token_ids']:>12.1e}",
            f"corpus CIDEr-D: ours {corpus['ours_cider']:.6f}, pycocoevalcap {corpus['pycocoevalcap_cider']:.6f}",
            f"PTB tokenisation of the 25k references (pure Python): {seconds:.2f} s",
        ]
    )
