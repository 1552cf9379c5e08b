"""Corpus BLEU exactly as coco-caption computes it (``pycocoevalcap.bleu``).

Differences from textbook BLEU that coco-caption has and this keeps:

* the brevity penalty uses, per caption, the reference length *closest* to the
  hypothesis length (ties go to the shorter reference), summed over the corpus;
* precisions are pooled over the corpus and smoothed with tiny constants,
  ``(correct + 1e-15) / (guess + 1e-9)``, so an empty corpus scores ~0, not NaN;
* BLEU-k is the k-th root of the running product of the first k precisions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import chain

__all__ = ["bleu_scores"]

Ngram = tuple[str, ...]

_TINY = 1e-15
_SMALL = 1e-9


def ngram_counts(words: Sequence[str], n: int) -> Counter[Ngram]:
    """Counts of every 1- to ``n``-gram of ``words`` (coco-caption's ``precook``)."""
    shifted = (zip(*(words[i:] for i in range(order)), strict=False) for order in range(1, n + 1))
    return Counter(chain.from_iterable(shifted))


def _closest_length(lengths: Sequence[int], target: int) -> int:
    return min(lengths, key=lambda length: (abs(length - target), length))


def _max_reference_counts(references: Sequence[Sequence[str]], n: int) -> dict[Ngram, int]:
    """For every n-gram, its largest count in any one reference (for clipping)."""
    clip: dict[Ngram, int] = {}
    for words in references:
        for gram, count in ngram_counts(words, n).items():
            if count > clip.get(gram, 0):
                clip[gram] = count
    return clip


def bleu_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-``n`` of tokenised captions.

    Args:
        hypotheses: one tokenised (space-separated) caption per image.
        references: the tokenised reference captions of each image.
        n: highest n-gram order.

    Returns:
        ``[BLEU-1, ..., BLEU-n]``.
    """
    correct, guess = [0] * n, [0] * n
    hyp_total = ref_total = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        words = hypothesis.split()
        ref_words = [ref.split() for ref in refs]
        clip = _max_reference_counts(ref_words, n)
        for gram, count in ngram_counts(words, n).items():
            correct[len(gram) - 1] += min(clip.get(gram, 0), count)
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        hyp_total += len(words)
        ref_total += _closest_length([len(r) for r in ref_words], len(words))
    return _combine(correct, guess, hyp_total, ref_total)


def _combine(correct: list[int], guess: list[int], hyp_total: int, ref_total: int) -> list[float]:
    """Geometric means of the pooled precisions times the brevity penalty."""
    scores, product = [], 1.0
    for k, (c, g) in enumerate(zip(correct, guess, strict=True)):
        product *= float(c + _TINY) / (g + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (hyp_total + _TINY) / (ref_total + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores
