"""coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and a human baseline."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from .bleu import bleu_scores
from .cider import cider_d
from .input_checks import validate_captions, validate_references
from .meteor import meteor_score, meteor_unavailable_reason
from .ptb_tokenizer import tokenize_captions
from .rouge import rouge_l_scores

__all__ = ["METRIC_KEYS", "compute_caption_metrics", "leave_one_out_human_scores", "leave_one_out_model_scores"]

#: Result keys, named as coco-caption names them.
METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def compute_caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    meteor: bool = True,
) -> dict[str, float]:
    """Score captions exactly as coco-caption (pycocoevalcap) does.

    Captions are PTB-tokenised (pure Python, see :mod:`.ptb_tokenizer`), then
    scored with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (document frequencies from
    ``references``).  METEOR needs Java and pycocoevalcap's jar; when either is
    missing the ``METEOR`` key is left out with a warning.

    Args:
        predictions: image id -> generated caption.
        references: image id -> human captions (at least one), same ids.
        meteor: compute METEOR (the only metric that needs Java; ~seconds).

    Returns:
        ``{"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}`` -> score.

    Raises:
        ValueError: mismatched ids, an id without references, or a non-string
            caption (the message names the id).
    """
    validate_captions(predictions, references)
    # Like coco-caption: references in one tokenizer call, predictions in another.
    refs = tokenize_captions(references)
    hyps = tokenize_captions({i: [predictions[i]] for i in references})
    return _scores([hyps[i][0] for i in references], list(refs.values()), meteor=meteor)


def _scores(hyps: Sequence[str], refs: Sequence[Sequence[str]], *, meteor: bool) -> dict[str, float]:
    """All metrics of tokenised captions, keyed like coco-caption."""
    results = {f"Bleu_{k + 1}": score for k, score in enumerate(bleu_scores(hyps, refs))}
    if meteor:
        reason = meteor_unavailable_reason()
        if reason is None:
            results["METEOR"] = meteor_score(hyps, refs)[0]
        else:
            warnings.warn(f"METEOR not computed: {reason}", RuntimeWarning, stacklevel=3)
    results["ROUGE_L"] = float(np.mean(rouge_l_scores(hyps, refs)))
    results["CIDEr"] = cider_d(hyps, refs)[0]
    return results


def leave_one_out_human_scores(
    references: Mapping[Hashable, Sequence[str]], *, meteor: bool = True
) -> dict[str, float]:
    """How well people agree with each other: each human caption scored against the others.

    For fold ``j`` (``j < k``, ``k`` = the smallest number of references of any
    image), the ``j``-th reference of every image is the prediction and that
    image's other references are the references; each fold is scored with
    :func:`compute_caption_metrics` and the folds are averaged.  Compare with
    :func:`leave_one_out_model_scores`, which scores a model against the same folds.

    Args:
        references: image id -> human captions (at least two per image).
        meteor: include METEOR (one Java run per fold).

    Returns:
        Metric name -> mean over the ``k`` folds.

    Raises:
        ValueError: invalid captions, or an image with fewer than two references.
    """
    results = [
        compute_caption_metrics(held_out, rest, meteor=meteor) for held_out, rest in _reference_folds(references)
    ]
    return {key: float(np.mean([result[key] for result in results])) for key in results[0]}


def leave_one_out_model_scores(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *, meteor: bool = True
) -> dict[str, float]:
    """A model's captions scored like :func:`leave_one_out_human_scores` scores people: fold ``j`` drops the
    ``j``-th reference of every image, the folds are averaged. The two results are directly comparable.

    Raises:
        ValueError: as :func:`leave_one_out_human_scores`, or ids that differ from the references'.
    """
    validate_captions(predictions, references)
    results = [compute_caption_metrics(predictions, rest, meteor=meteor) for _, rest in _reference_folds(references)]
    return {key: float(np.mean([result[key] for result in results])) for key in results[0]}


def _reference_folds(
    references: Mapping[Hashable, Sequence[str]],
) -> list[tuple[dict[Hashable, str], dict[Hashable, list[str]]]]:
    """(held-out reference, the others) of every image, for each fold ``j < k`` (``k``: fewest references)."""
    validate_references(references)
    too_few = [i for i, refs in references.items() if len(refs) < 2]
    if too_few:
        raise ValueError(f"leave-one-out needs at least two references per image; id {too_few[0]!r} has one")
    folds = min(len(refs) for refs in references.values())
    return [
        (
            {i: refs[j] for i, refs in references.items()},
            {i: [r for k, r in enumerate(refs) if k != j] for i, refs in references.items()},
        )
        for j in range(folds)
    ]
