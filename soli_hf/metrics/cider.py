"""CIDEr-D: coco-caption's ``Cider`` metric and a fast per-sample reward for SCST.

coco-caption's ``pycocoevalcap.cider.Cider`` is CIDEr-D (Vedantam et al. 2015):
for each n-gram order 1..4, captions become TF-IDF vectors with
``idf = log(num_documents) - log(max(1, df))``, where a document is the set of
references of one image; the similarity of a candidate to a reference is
``sum(min(v_cand, v_ref) * v_ref) / (|v_cand| |v_ref|)`` (clipped), multiplied by
a Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``, ``sigma = 6``, where
``delta`` is the difference of the two captions' *bigram* counts (that is what
coco-caption's code measures as length); it is averaged over references and
orders and multiplied by 10.

:class:`CiderD` holds the document frequencies of one reference corpus and scores
batches of candidates with vectorised NumPy code; the corpus metric
(:func:`cider_d`) is the same computation with the evaluated corpus as the
reference corpus, which is what coco-caption does.

Implementation: words get integer ids; an n-gram of order k+1 is identified
exactly by ``(id of its first k words) << 32 | id of its last word``, where the
id of an order-k n-gram is its rank among the corpus' order-k n-grams (n-grams
the corpus lacks are ranked after them, per call).  All counting, matching and
similarity computations are then NumPy array operations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import chain, count
from os import PathLike
from typing import Any, NamedTuple

import numpy as np

from .ptb_tokenizer import tokenize

__all__ = ["CiderD", "cider_d"]

#: A caption: raw text, or token ids (a sequence of ints, e.g. a list or a 1-D array).
Caption = str | Sequence[int] | np.ndarray
#: A word: a string for text, an int for token ids.
Word = Hashable
#: A hashable form of a caption (text as is, ids as a tuple), used to cache references.
_Key = str | tuple[int, ...]

_SHIFT = 32  # bits of a word id inside an n-gram key
_MAX_ID = (1 << 31) - 1  # word ids and per-order n-gram ids must stay below this


class _Words(NamedTuple):
    """Captions as concatenated word ids."""

    ids: np.ndarray  # int64, all captions' word ids one after the other
    lengths: np.ndarray  # int64, words per caption


class _Grams(NamedTuple):
    """Distinct n-grams per caption: caption index, global n-gram id, count (one entry each)."""

    owner: np.ndarray
    ids: np.ndarray
    counts: np.ndarray


class CiderD:
    """CIDEr-D scorer with document frequencies cached from a reference corpus.

    Build it once from the training references, then call :meth:`score_batch`
    for the self-critical reward of every batch; or use :func:`cider_d` for the
    corpus metric.  Scores agree with coco-caption's ``Cider`` when the same
    corpus is used for the document frequencies.

    Captions may be text or token ids:

    * text (``str``) is PTB-tokenised like coco-caption (lower-cased, punctuation
      removed) unless ``tokenize=False``, in which case it is split on whitespace
      as it is (use this for text that is already tokenised);
    * token ids (lists/arrays of ints, anything with ``tolist()``) are used as the
      words directly, cut at the first ``eos_id`` if one is given.  References and
      candidates must then use the same vocabulary, and the scorer must be built
      from id references too (its document frequencies are over ids).

    The words of every reference are cached by caption, so references that come
    back batch after batch are tokenised once.  (Like coco-caption, the captions
    of one call are tokenised as one text, and a caption ending in an
    abbreviation can tokenise differently depending on the next caption's first
    letter; a cached reference keeps the tokens of its first call.)

    Args:
        references: the reference captions of each image (one document per
            image), as ``{image_id: [caption, ...]}`` or ``[[caption, ...], ...]``.
        n: highest n-gram order.
        sigma: width of the Gaussian length penalty.
        tokenize: PTB-tokenise text captions (default) or only split them.
        eos_id: end-of-sequence id for token-id captions.
    """

    def __init__(
        self,
        references: Mapping[Hashable, Sequence[Caption]] | Sequence[Sequence[Caption]],
        *,
        n: int = 4,
        sigma: float = 6.0,
        tokenize: bool = True,
        eos_id: int | None = None,
    ) -> None:
        self.n, self.sigma, self.tokenize, self.eos_id = n, sigma, tokenize, eos_id
        documents = list(references.values()) if isinstance(references, Mapping) else list(references)
        if not documents or any(len(document) == 0 for document in documents):
            raise ValueError("CiderD needs at least one document (image), each with at least one reference")
        keys = [self._key(caption) for document in documents for caption in document]
        self.kind = _kind(keys)
        self._vocabulary: dict[Word, int] = {}
        self._cache: dict[_Key, np.ndarray] = {}
        self._keys: list[np.ndarray] = []  # per order: sorted n-gram keys of the corpus
        words = self._word_ids(self._words(keys))
        self._cache.update(zip(keys, np.split(words.ids, np.cumsum(words.lengths)[:-1]), strict=True))
        grams = self._ngrams(words, self._add_order)
        document = np.repeat(np.arange(len(documents)), [len(d) for d in documents])[grams.owner]
        stride = max(self._num_known, 1)
        pairs = _distinct(document * stride + grams.ids)  # (document, n-gram) present
        self.num_documents = len(documents)
        self._set_document_frequency(np.bincount(pairs % stride, minlength=self._num_known))

    # ------------------------------------------------------------------ state

    @property
    def _num_known(self) -> int:
        return sum(len(keys) for keys in self._keys)

    def _set_document_frequency(self, document_frequency: np.ndarray) -> None:
        """IDF weight ``log(N) - log(max(1, df))`` and order of every corpus n-gram."""
        self._document_frequency = document_frequency.astype(np.int64)
        self._log_documents = float(np.log(float(self.num_documents)))
        self._weights = self._log_documents - np.log(np.maximum(1.0, document_frequency.astype(np.float64)))
        self._orders = np.repeat(np.arange(len(self._keys)), [len(keys) for keys in self._keys])

    @property
    def document_frequency(self) -> dict[tuple[Word, ...], int]:
        """Number of documents (images) whose references contain each n-gram."""
        words = [None, *self._vocabulary]  # id -> word
        grams: list[tuple[Word, ...]] = []
        previous: list[tuple[Word, ...]] = [()]
        for keys in self._keys:
            current = [previous[key >> _SHIFT] + (words[key & 0xFFFFFFFF],) for key in keys.tolist()]
            grams.extend(current)
            previous = current
        return dict(zip(grams, self._document_frequency.tolist(), strict=True))

    def save(self, path: str | PathLike[str]) -> None:
        """Write the settings, vocabulary and document frequencies to a JSON file."""
        state = {
            "n": self.n,
            "sigma": self.sigma,
            "tokenize": self.tokenize,
            "eos_id": self.eos_id,
            "kind": self.kind,
            "num_documents": self.num_documents,
            "vocabulary": list(self._vocabulary),
            "ngram_keys": [keys.tolist() for keys in self._keys],
            "document_frequency": self._document_frequency.tolist(),
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(state, handle, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> CiderD:
        """Rebuild a scorer written by :meth:`save`."""
        with open(path, encoding="utf-8") as handle:
            state: dict[str, Any] = json.load(handle)
        scorer = cls.__new__(cls)
        scorer.n, scorer.sigma = state["n"], state["sigma"]
        scorer.tokenize, scorer.eos_id = state["tokenize"], state["eos_id"]
        scorer.kind, scorer.num_documents = state["kind"], state["num_documents"]
        scorer._vocabulary = dict(zip(state["vocabulary"], count(1)))
        scorer._cache = {}
        scorer._keys = [np.asarray(keys, dtype=np.int64) for keys in state["ngram_keys"]]
        scorer._set_document_frequency(np.asarray(state["document_frequency"], dtype=np.int64))
        return scorer

    # ---------------------------------------------------------------- captions

    def _key(self, caption: Caption) -> _Key:
        """Text as is; token ids as a tuple cut at ``eos_id``."""
        if isinstance(caption, str):
            return caption
        ids = tuple(map(int, caption.tolist() if hasattr(caption, "tolist") else caption))
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return ids

    def _words(self, keys: Sequence[_Key]) -> list[Sequence[Word]]:
        """Words of each caption: PTB tokens (or whitespace split) for text, the ids otherwise."""
        if not keys or not isinstance(keys[0], str):
            return list(keys)  # type: ignore[arg-type]
        return [line.split() for line in (tokenize(keys) if self.tokenize else keys)]  # type: ignore[arg-type]

    def _word_ids(self, captions: Sequence[Sequence[Word]], unknown: dict[Word, int] | None = None) -> _Words:
        """Word ids of captions.  Words the corpus lacks get ids after its own, from
        ``unknown`` (shared by all the captions of a call); without it they join the
        vocabulary (building)."""
        flat = list(chain.from_iterable(captions))
        if unknown is None:
            new = [word for word in dict.fromkeys(flat) if word not in self._vocabulary]
            self._vocabulary.update(zip(new, count(len(self._vocabulary) + 1)))
        ids = list(map(self._vocabulary.get, flat))
        if None in ids:
            assert unknown is not None
            ids = [
                unknown.setdefault(w, len(self._vocabulary) + 1 + len(unknown)) if i is None else i
                for w, i in zip(flat, ids, strict=True)
            ]
        if ids and max(ids) > _MAX_ID:
            raise ValueError(f"more than {_MAX_ID} distinct words")
        return _Words(np.asarray(ids, dtype=np.int64), np.asarray([len(c) for c in captions], dtype=np.int64))

    def _reference_ids(self, keys: Sequence[_Key], unknown: dict[Word, int]) -> list[np.ndarray]:
        """Word ids of references; those made only of corpus words are cached by caption."""
        missing = list(dict.fromkeys(key for key in keys if key not in self._cache))
        fresh = self._word_ids(self._words(missing), unknown)
        split = np.split(fresh.ids, np.cumsum(fresh.lengths)[:-1]) if missing else []
        local = dict(zip(missing, split, strict=True))
        known = len(self._vocabulary)
        self._cache.update((key, ids) for key, ids in local.items() if not (ids > known).any())
        return [self._cache.get(key, local.get(key)) for key in keys]  # type: ignore[misc]

    # ---------------------------------------------------------------- n-grams

    def _ngrams(self, words: _Words, resolve: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> _Grams:
        """Every caption's distinct n-grams (orders 1..n) with their counts.

        ``resolve(k, keys)`` turns the keys of order-(k+1) n-gram occurrences into
        their global ids and their ranks within the order (building and scoring differ
        only there).
        """
        owner = np.repeat(np.arange(len(words.lengths)), words.lengths)
        position = np.arange(len(owner)) - np.repeat(np.cumsum(words.lengths) - words.lengths, words.lengths)
        remaining = words.lengths[owner] - position  # words from each position to the caption's end
        rank = np.zeros(len(owner), dtype=np.int64)  # rank of the n-gram starting at each position
        owners, ids = [], []
        for k in range(self.n):
            start = np.flatnonzero(remaining > k)
            keys = (rank[start] << _SHIFT) | words.ids[start + k]
            global_ids, rank[start] = resolve(k, keys)
            owners.append(owner[start])
            ids.append(global_ids)
        all_ids = np.concatenate(ids)
        total = int(all_ids.max()) + 1 if len(all_ids) else 1
        pairs, counts = np.unique(np.concatenate(owners) * total + all_ids, return_counts=True)
        return _Grams(pairs // total, pairs % total, counts.astype(np.float64))

    def _add_order(self, k: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Building: the corpus' order-(k+1) n-grams are the distinct keys."""
        distinct, rank = np.unique(keys, return_inverse=True)
        if len(distinct) > _MAX_ID:
            raise ValueError(f"more than {_MAX_ID} distinct {k + 1}-grams")
        offset = self._num_known
        self._keys.append(distinct)
        return offset + rank, rank

    # ----------------------------------------------------------------- scoring

    def score_batch(self, candidates: Sequence[Caption], references: Sequence[Sequence[Caption]]) -> np.ndarray:
        """Per-sample CIDEr-D of each candidate against its own references.

        Document frequencies are the cached corpus ones (n-grams unseen in the
        corpus have df 0), as in the CiderD reward of self-critical training.

        Args:
            candidates: B captions: strings, or token ids as sequences of ints or
                as a (B, T) array/tensor (see the class docs for ``eos_id``).
            references: for each candidate, its reference captions (at least one).

        Returns:
            float64 array of shape (B,).
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        if any(len(refs) == 0 for refs in references):
            raise ValueError("every candidate needs at least one reference")
        if len(candidates) == 0:
            return np.zeros(0)
        if hasattr(candidates, "tolist"):  # a (B, T) array or tensor of token ids
            candidates = candidates.tolist()
        cand_keys = [self._key(caption) for caption in candidates]
        ref_keys = [self._key(ref) for refs in references for ref in refs]
        kind = _kind(cand_keys + ref_keys)
        if kind != self.kind:
            raise ValueError(f"this scorer's document frequencies are over {self.kind}, but the batch has {kind}")
        unknown: dict[Word, int] = {}
        cand_words = self._word_ids(self._words(cand_keys), unknown)
        ref_ids = self._reference_ids(ref_keys, unknown)
        # Candidates and references share one id space, so their unseen n-grams match too.
        words = _Words(
            np.concatenate([cand_words.ids, *ref_ids]),
            np.concatenate([cand_words.lengths, [len(ids) for ids in ref_ids]]).astype(np.int64),
        )
        lookup = _Lookup(self)
        grams = self._ngrams(words, lookup)
        weights = np.concatenate([self._weights, np.full(lookup.num_unseen, self._log_documents)])
        orders = np.concatenate([self._orders, np.concatenate(lookup.unseen_orders or [np.zeros(0, np.int64)])])
        ref_owner = np.repeat(np.arange(len(candidates)), [len(refs) for refs in references])
        return _cider_d(grams, words.lengths, len(candidates), ref_owner, weights, orders, self.n, self.sigma)


class _Lookup:
    """Scoring: global ids of n-gram keys; keys the corpus lacks are numbered after its own."""

    def __init__(self, scorer: CiderD) -> None:
        self.keys = scorer._keys
        self.offsets = np.cumsum([0] + [len(keys) for keys in self.keys])
        self.num_unseen = 0
        self.unseen_orders: list[np.ndarray] = []

    def __call__(self, k: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        corpus = self.keys[k]
        distinct, occurrence = np.unique(keys, return_inverse=True)
        slot = np.searchsorted(corpus, distinct)
        found = slot < len(corpus)
        found[found] = corpus[slot[found]] == distinct[found]
        unseen_rank = np.cumsum(~found) - 1
        rank = np.where(found, slot, len(corpus) + unseen_rank)
        global_ids = np.where(found, self.offsets[k] + slot, self.offsets[-1] + self.num_unseen + unseen_rank)
        num_unseen = int(np.count_nonzero(~found))
        self.num_unseen += num_unseen
        self.unseen_orders.append(np.full(num_unseen, k, dtype=np.int64))
        return global_ids[occurrence], rank[occurrence]


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (``np.unique`` without its slow hash path)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _kind(keys: Sequence[_Key]) -> str:
    """The kind of captions, ``"text"`` or ``"token ids"``; a mix is an error."""
    texts = sum(isinstance(key, str) for key in keys)
    if texts not in (0, len(keys)):
        raise ValueError("captions must be all text or all token ids, not a mix")
    return "text" if texts else "token ids"


def _norms(owner: np.ndarray, orders: np.ndarray, values: np.ndarray, rows: int, n: int) -> np.ndarray:
    """Euclidean norm of each caption's TF-IDF vector, per order: shape (rows, n)."""
    squares = np.bincount(owner * n + orders, weights=values**2, minlength=rows * n)
    return np.sqrt(squares).reshape(rows, n)


def _cider_d(
    grams: _Grams,
    lengths: np.ndarray,
    num_cands: int,
    ref_owner: np.ndarray,
    weights: np.ndarray,
    orders: np.ndarray,
    n: int,
    sigma: float,
) -> np.ndarray:
    """CIDEr-D of each candidate.

    Captions ``0 .. num_cands-1`` of ``grams``/``lengths`` are the candidates, the
    rest the references; ``ref_owner[j]`` is the candidate of reference ``j``.
    ``weights`` and ``orders`` give the IDF weight and order of every n-gram id.
    """
    num_refs = len(ref_owner)
    values = grams.counts * weights[grams.ids]  # TF-IDF vectors
    is_cand = grams.owner < num_cands
    c_owner, c_ids, c_values = grams.owner[is_cand], grams.ids[is_cand], values[is_cand]
    r_index, r_ids, r_values = grams.owner[~is_cand] - num_cands, grams.ids[~is_cand], values[~is_cand]

    # Clipped dot product of each reference with its candidate, per order.
    stride = len(weights)
    c_at_r = _lookup(c_owner * stride + c_ids, c_values, ref_owner[r_index] * stride + r_ids)
    overlap = np.minimum(c_at_r, r_values) * r_values
    r_orders = orders[r_ids]
    dots = np.bincount(r_index * n + r_orders, weights=overlap, minlength=num_refs * n).reshape(num_refs, n)
    dots = dots.astype(np.float64)  # (bincount gives ints when there is no n-gram at all)
    c_norms = _norms(c_owner, orders[c_ids], c_values, num_cands, n)
    norms = c_norms[ref_owner] * _norms(r_index, r_orders, r_values, num_refs, n)
    similarity = np.divide(dots, norms, out=np.zeros_like(dots), where=norms != 0)

    # Gaussian penalty on the difference of bigram counts (coco-caption's "length").
    bigrams = np.maximum(lengths - 1, 0).astype(np.float64)
    delta = bigrams[ref_owner] - bigrams[num_cands:]
    similarity *= np.exp(-(delta**2) / (2 * sigma**2))[:, None]

    per_candidate = np.zeros((num_cands, n))
    np.add.at(per_candidate, ref_owner, similarity)
    return per_candidate.mean(axis=1) / np.bincount(ref_owner, minlength=num_cands) * 10.0


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` at ``queries`` in the unique, sorted ``keys``; 0 where absent."""
    if len(keys) == 0:
        return np.zeros(len(queries))
    slot = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[slot] == queries, values[slot], 0.0)


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """Corpus CIDEr-D of tokenised captions, as coco-caption's ``Cider.compute_score``.

    Document frequencies come from ``references`` themselves (one document per image).

    Returns:
        (corpus score = mean over images, per-image scores)
    """
    scorer = CiderD(references, tokenize=False)
    scores = scorer.score_batch(hypotheses, references)
    return float(np.mean(scores)), scores
