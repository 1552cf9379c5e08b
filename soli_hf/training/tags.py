"""Semantic tags (the tagging loss of AlignCap, adapted): the tag vocabulary and each image's multi-hot targets.

The tags are the `num_tags` content words (nouns, verbs, colours, ...) found in the most training images' references
after a stopword list is removed: document frequency, one document per image. Words are split exactly as the
caption tokenizer splits them (its normaliser and pre-tokenizer), so a tag is always a word of the captions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# Function words that carry no content to predict from an image: articles, pronouns, prepositions, conjunctions,
# auxiliaries and the like. Counting words ("two") and colours stay: they are visible.
STOPWORDS = frozenset(
    """
    a an the this that these those there here it its they them their theirs he him his she her hers we us our
    you your i me my someone something
    is are was were be been being am has have had having do does did doing will would can could shall should may
    might must
    and or but nor so yet if then than as while because though although
    of in on at to from by with without into onto over under above below up down out off about around through
    across along behind beside besides between near next toward towards upon within against among past before
    after during for via
    s t not no very too also just only all any some each every other another such own same more most much many
    few both either neither what which who whom whose where when why how
    """.split()
)


def caption_words(tokenizer: Any, caption: str) -> list[str]:
    """The words of a caption as the caption tokenizer splits them (lower case, punctuation removed)."""
    backend = tokenizer.backend_tokenizer
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(caption))]


def image_words(tokenizer: Any, references: Iterable[str]) -> set[str]:
    """The set of words of all an image's references."""
    return {word for caption in references for word in caption_words(tokenizer, caption)}


def build_tag_vocabulary(tokenizer: Any, references_per_image: Iterable[Sequence[str]], num_tags: int) -> list[str]:
    """The `num_tags` non-stopwords that occur in the references of the most images (ties: alphabetical order).

    Raises:
        ValueError: when the captions hold fewer than `num_tags` distinct content words.
    """
    frequency = Counter(
        word
        for references in references_per_image
        for word in image_words(tokenizer, references)
        if word not in STOPWORDS and not word.isdigit()
    )
    if len(frequency) < num_tags:
        raise ValueError(f"num_tags={num_tags}, but the training captions hold only {len(frequency)} content words")
    ranked = sorted(frequency.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:num_tags]]


def tag_targets(tokenizer: Any, references: Iterable[str], tag_words: Sequence[str]) -> np.ndarray:
    """The multi-hot float32 vector (num_tags,) of one image: 1 where its references contain the tag word."""
    words = image_words(tokenizer, references)
    return np.array([word in words for word in tag_words], dtype=np.float32)
