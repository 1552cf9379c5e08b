"""How varied a captioner's captions are: a model that gives many photos the same sentence is not describing them.

Captions are compared after coco-caption's PTB tokenisation (lower case, punctuation dropped), so "A dog runs."
and "a dog runs" are the same caption.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from .ptb_tokenizer import tokenize_captions

#: The keys `caption_diversity` returns (beside coco-caption's in evaluation results).
DIVERSITY_KEYS = ("distinct_captions", "vocabulary_size")


def caption_diversity(predictions: Mapping[Hashable, str]) -> dict[str, float]:
    """`distinct_captions`: distinct sentences / captions (1.0: no two images share a caption; 10 images all
    captioned "a dog runs": 0.1); `vocabulary_size`: the number of distinct words used.

    Raises:
        ValueError: when there is no caption.
    """
    if not predictions:
        raise ValueError("caption_diversity needs at least one caption")
    tokenized = tokenize_captions({key: [caption] for key, caption in predictions.items()})
    sentences = [captions[0] for captions in tokenized.values()]
    words = {word for sentence in sentences for word in sentence.split()}
    return {"distinct_captions": len(set(sentences)) / len(sentences), "vocabulary_size": float(len(words))}
