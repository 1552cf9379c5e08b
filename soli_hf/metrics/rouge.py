"""ROUGE-L exactly as coco-caption computes it (``pycocoevalcap.rouge``).

Per image: the longest common subsequence (LCS) with each reference gives a
precision and a recall; the best precision and the best recall (taken
independently over the references) are combined into an F-measure with
``beta = 1.2``.  The corpus score is the mean over images.  As in coco-caption,
captions are split on single spaces, so an empty caption is one empty token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["lcs_length", "rouge_l_scores"]

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison-Dix / Hyyro): one big-integer update per token of ``a``.
    """
    if not a or not b:
        return 0
    positions: dict[str, int] = {}
    for i, token in enumerate(b):
        positions[token] = positions.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    row = full
    for token in a:
        matches = row & positions.get(token, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(b) - row.bit_count()


def _rouge_l(candidate: str, references: Sequence[str], beta: float) -> float:
    tokens = candidate.split(" ")
    precisions, recalls = [], []
    for reference in references:
        ref_tokens = reference.split(" ")
        common = lcs_length(ref_tokens, tokens)
        precisions.append(common / float(len(tokens)))
        recalls.append(common / float(len(ref_tokens)))
    prec, rec = max(precisions), max(recalls)
    if prec == 0 or rec == 0:
        return 0.0
    return ((1 + beta**2) * prec * rec) / float(rec + beta**2 * prec)


def rouge_l_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA) -> np.ndarray:
    """Per-image ROUGE-L of tokenised captions (their mean is the corpus score).

    Args:
        hypotheses: one tokenised caption per image.
        references: the tokenised reference captions of each image (at least one each).
        beta: recall weight of the F-measure.
    """
    return np.array([_rouge_l(h, refs, beta) for h, refs in zip(hypotheses, references, strict=True)])
