"""Caption metrics that agree with coco-caption (pycocoevalcap), without Java except for METEOR.

* :func:`compute_caption_metrics` -- BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) of
  ``{id: caption}`` against ``{id: [references]}``, keyed like coco-caption.
* :func:`leave_one_out_human_scores` -- the same metrics for people: each human
  caption scored against the other captions of its image;
  :func:`leave_one_out_model_scores` scores a model against the same folds.
* :func:`caption_diversity` -- the share of distinct captions and the words used.
* :class:`CiderD` -- document frequencies cached from a training corpus and a
  vectorised per-sample CIDEr-D for self-critical sequence training rewards.
* :func:`tokenize` / :func:`tokenize_captions` -- coco-caption's PTB tokenisation
  in pure Python.
* ``soli_hf/metrics/caption_metrics`` -- the same metric for ``evaluate.load``.
"""

from .bleu import bleu_scores
from .cider import CiderD, cider_d
from .diversity import DIVERSITY_KEYS, caption_diversity
from .input_checks import validate_captions, validate_references
from .meteor import meteor_score, meteor_unavailable_reason
from .ptb_tokenizer import PUNCTUATIONS, tokenize, tokenize_captions, tokenize_lines
from .rouge import rouge_l_scores
from .scoring import METRIC_KEYS, compute_caption_metrics, leave_one_out_human_scores, leave_one_out_model_scores

__all__ = [
    "DIVERSITY_KEYS",
    "METRIC_KEYS",
    "PUNCTUATIONS",
    "CiderD",
    "bleu_scores",
    "caption_diversity",
    "cider_d",
    "compute_caption_metrics",
    "leave_one_out_human_scores",
    "leave_one_out_model_scores",
    "meteor_score",
    "meteor_unavailable_reason",
    "rouge_l_scores",
    "tokenize",
    "tokenize_captions",
    "tokenize_lines",
    "validate_captions",
    "validate_references",
]
