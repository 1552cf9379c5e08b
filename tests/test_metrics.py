"""Caption metrics: exact agreement with coco-caption (pycocoevalcap), the CIDEr-D reward, the evaluate module.

pycocoevalcap (the reference) needs Java for its tokenizer and METEOR; it is run
once per fixture (module scope).  Flickr8k captions are read from ../shared at
test time and never stored in the repository.
"""

from __future__ import annotations

import importlib.util
import math
import random
import shutil
import socket
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from soli_hf.metrics import (
    METRIC_KEYS,
    CiderD,
    caption_diversity,
    compute_caption_metrics,
    leave_one_out_human_scores,
    tokenize,
    tokenize_captions,
)
from soli_hf.metrics import meteor as meteor_module
from soli_hf.metrics.rouge import lcs_length

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_TEXT = REPO.parent / "shared" / "data" / "flickr8k" / "Flickr8k_text"
EVALUATE_MODULE = REPO / "soli_hf" / "metrics" / "caption_metrics"
#: Allowed |ours - coco-caption| per metric.
TOLERANCE = {key: 1e-6 for key in METRIC_KEYS} | {"METEOR": 1e-3}

#: Awkward predictions (with hand-written references) that stress tokenisation and the metrics.
AWKWARD: dict[str, tuple[str, list[str]]] = {
    "empty": ("", ["a dog runs across a field", "a brown dog is running", "the dog runs on grass"]),
    "punctuation only": ("... !!! ?? , ; : -- ( )", ["a man is standing on a ledge", "someone stands high up"]),
    "repeated words": ("a a a a a a dog dog dog dog", ["a dog and a dog", "two dogs play together", "a dog"]),
    "very long": (
        " ".join(["a man in a red shirt is walking down the street with his dog"] * 6),
        ["a man walks his dog down the street", "a man in red walks a dog"],
    ),
    "unicode": (
        "Un café naïve à Zürich — “quoted” ‘text’ … 😀 ΣΑΣ",
        ["a cafe in zurich", "people sit at a café in Zürich"],
    ),
    "numbers": (
        "3 dogs and 1,000 cats at 12:30 on 2/3/2004 , 50% off $3.50 and 5 1/2 miles",
        ["three dogs and many cats", "2 dogs play with 3 cats"],
    ),
    "contractions": (
        "the dog's ball isn't there and they'll say I'm sure it can't , won't it ?",
        ["a dog's ball is missing", "the dog can't find its ball"],
    ),
    "hyphens": (
        "a well-known x-ray of a 3-year-old in a t-shirt -- wow - ok",
        ["a three-year-old child in a t-shirt", "a young child wearing a shirt"],
    ),
    "quotes": ("he said \"hello\" and 'goodbye' to `them` '' ``", ["a man says hello", "a man is talking to people"]),
    "brackets": (
        "a man (in red) [left] {right} <b>bold</b> < 3 >",
        ["a man in red stands on the left", "a man wearing red"],
    ),
    "multiple spaces": ("  a   dog    runs   on the  beach  ", ["a dog runs on the beach", "a dog running on sand"]),
    "tabs": ("a\tdog\t\truns\ton  the\tsnow", ["a dog runs in the snow", "a dog in snow"]),
    "newlines": ("a dog\nruns in the\n\npark", ["a dog runs in the park", "a dog in a park"]),
    "abbreviations": (
        "Mr. Smith and Dr. Who in the U.S. at 5 p.m. etc. vs. Mt. Everest",
        ["two men in the US", "men talking at night"],
    ),
    "capitals": ("A DOG RUNS ON THE GRASS .", ["A dog runs on the grass.", "A Dog Runs On Grass!"]),
    "meteor separator": ("a dog ||| a cat", ["a dog and a cat", "a cat and a dog play"]),
    "punctuation-only reference": ("a dog runs .", ["...", "a dog runs .", "A dog, running!"]),
}


# ----------------------------------------------------------------------------- coco-caption


def _require_coco() -> None:
    if importlib.util.find_spec("pycocoevalcap") is None:
        pytest.skip("pycocoevalcap is not installed (pip install pycocoevalcap==1.2): no reference to compare with")
    if shutil.which("java") is None:
        pytest.skip("no `java` on PATH: pycocoevalcap's tokenizer and METEOR are Java programs")


def coco_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTBTokenizer (Java) on ``{id: [caption, ...]}``."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({i: [{"caption": c} for c in caps] for i, caps in captions.items()})


def coco_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> tuple[dict[str, float], np.ndarray]:
    """All metrics as pycocoevalcap's COCOEvalCap computes them, and its per-image CIDEr."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    gts = coco_tokenize(references)
    res = coco_tokenize({i: [p] for i, p in predictions.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"Bleu_{k + 1}": value for k, value in enumerate(bleu)}
    scores["METEOR"] = Meteor().compute_score(gts, res)[0]
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"], per_image = Cider().compute_score(gts, res)
    return scores, per_image


def assert_same_scores(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(ours) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert abs(ours[key] - theirs[key]) <= TOLERANCE[key], (key, ours[key], theirs[key])


def read_flickr8k_dev() -> dict[str, list[str]]:
    """Dev image id -> its five captions, in caption-number order."""
    if not FLICKR8K_TEXT.is_dir():
        pytest.skip(f"Flickr8k captions not found at {FLICKR8K_TEXT}")
    captions: dict[str, dict[int, str]] = defaultdict(dict)
    for line in (FLICKR8K_TEXT / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, caption = line.split("\t", 1)
        image, number = key.split("#")
        captions[image][int(number)] = caption
    dev = (FLICKR8K_TEXT / "Flickr_8k.devImages.txt").read_text(encoding="utf-8").split()
    return {image: [captions[image][k] for k in sorted(captions[image])] for image in dev}


@pytest.fixture(scope="module")
def flickr8k_dev() -> dict[str, list[str]]:
    return read_flickr8k_dev()


@pytest.fixture(scope="module")
def flickr8k_leave_one_out(flickr8k_dev):
    """Fold 0 of the human leave-one-out: (predictions, references, ours, coco-caption's, coco per-image CIDEr)."""
    _require_coco()
    predictions = {image: caps[0] for image, caps in flickr8k_dev.items()}
    references = {image: caps[1:] for image, caps in flickr8k_dev.items()}
    theirs, per_image = coco_scores(predictions, references)
    return predictions, references, compute_caption_metrics(predictions, references), theirs, per_image


@pytest.fixture(scope="module")
def awkward_results():
    """(ours, coco-caption's) scores of the awkward predictions."""
    _require_coco()
    predictions = {key: prediction for key, (prediction, _) in AWKWARD.items()}
    references = {key: refs for key, (_, refs) in AWKWARD.items()}
    return compute_caption_metrics(predictions, references), coco_scores(predictions, references)[0]


@pytest.mark.slow
def test_flickr8k_dev_leave_one_out_matches_coco(flickr8k_leave_one_out):
    _, _, ours, theirs, _ = flickr8k_leave_one_out
    assert_same_scores(ours, theirs)


@pytest.mark.slow
def test_cider_d_reward_matches_coco_per_image(flickr8k_leave_one_out):
    """The batch reward, with the corpus' own document frequencies, is coco-caption's per-image CIDEr."""
    predictions, references, _, _, coco_per_image = flickr8k_leave_one_out
    ids = list(references)
    scorer = CiderD(references)
    rewards = scorer.score_batch([predictions[i] for i in ids], [references[i] for i in ids])
    np.testing.assert_allclose(rewards, coco_per_image, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_awkward_predictions_match_coco(awkward_results):
    ours, theirs = awkward_results
    assert_same_scores(ours, theirs)


def test_tokenizer_matches_coco_on_flickr8k_dev(flickr8k_dev):
    _require_coco()
    theirs = coco_tokenize(flickr8k_dev)
    ours = tokenize_captions(flickr8k_dev)
    mismatches = [(i, ours[i], theirs[i]) for i in theirs if ours[i] != theirs[i]]
    assert sum(len(caps) for caps in theirs.values()) == 5 * len(flickr8k_dev)
    assert not mismatches, mismatches[:10]


def test_tokenizer_matches_coco_on_awkward_captions():
    _require_coco()
    captions = {key: [prediction, *refs] for key, (prediction, refs) in AWKWARD.items()}
    theirs = coco_tokenize(captions)
    assert tokenize_captions(captions) == theirs


# ----------------------------------------------------------------------------- tokenizer (no Java)


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A dog runs on the grass .", "a dog runs on the grass"),
        ("Don't you think it's the dogs' ball?", "do n't you think it 's the dogs ball"),
        ('A man (in red) says "hello".', "a man -lrb- in red -rrb- says hello"),
        ("It is in the U.S. The end.", "it is in the u.s. the end"),
        ("5 1/2 miles, 1,000 people -- 3:15pm", "5\u00a01/2 miles 1,000 people 3:15 pm"),
        ("I cannot wanna gonna", "i can not wan na gon na"),
        ("\u201cQuoted\u201d \u2018text\u2019 \u2026 caf\u00e9", "quoted text caf\u00e9"),
        ("", ""),
    ],
)
def test_tokenizer_examples(caption, expected):
    assert tokenize([caption]) == [expected]


# ----------------------------------------------------------------------------- CIDEr-D reward


def cider_d_by_hand(
    candidate: str, references: list[str], corpus: list[list[str]], n: int = 4, sigma: float = 6.0
) -> float:
    """The CIDEr-D formula written out directly (document frequencies from ``corpus``)."""

    def grams(words: list[str]) -> Counter:
        return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    df = Counter(g for document in corpus for g in set().union(*(grams(r.split()) for r in document)))
    log_docs = math.log(len(corpus))

    def vector(words: list[str]) -> tuple[list[dict], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for g, count in grams(words).items():
            vec[len(g) - 1][g] = count * (log_docs - math.log(max(1.0, df[g])))
        return vec, max(0, len(words) - 1)

    cand, cand_length = vector(candidate.split())
    total = 0.0
    for reference in references:
        ref, ref_length = vector(reference.split())
        for k in range(n):
            dot = sum(min(value, ref[k].get(g, 0.0)) * ref[k].get(g, 0.0) for g, value in cand[k].items())
            norm = math.sqrt(sum(v * v for v in cand[k].values())) * math.sqrt(sum(v * v for v in ref[k].values()))
            similarity = dot / norm if norm else 0.0
            total += similarity * math.exp(-((cand_length - ref_length) ** 2) / (2 * sigma**2))
    return total / n / len(references) * 10.0


TRAIN_REFS = {
    "a": ["a dog runs on the grass", "a brown dog is running on grass", "the dog runs"],
    "b": ["a cat sleeps on a red sofa", "a cat is sleeping", "a sleepy cat on a sofa"],
    "c": ["two children play in the snow", "kids playing in snow", "two kids are playing outside"],
    "d": ["a man rides a bike down a hill", "a cyclist rides down the road", "a man on a bike"],
}


def test_cider_d_identical_and_empty_candidates():
    scorer = CiderD({"a": ["a dog runs on the grass"], "b": ["the cat sleeps"]})
    # Identical 6-word caption: cosine 1 at every order, no length penalty -> 10.
    # Identical 3-word caption: no 4-grams, so orders 1-3 give 1 and order 4 gives 0 -> 7.5.
    # Empty caption: 0.
    scores = scorer.score_batch(
        ["a dog runs on the grass", "the cat sleeps", ""],
        [["a dog runs on the grass"], ["the cat sleeps"], ["the cat sleeps"]],
    )
    np.testing.assert_allclose(scores, [10.0, 7.5, 0.0], rtol=0, atol=1e-12)


def test_cider_d_reward_matches_formula_with_cached_corpus():
    """Cached training df, candidates and references with n-grams never seen in that corpus."""
    scorer = CiderD(TRAIN_REFS)
    candidates = ["a dog runs on grass", "a purple cat sleeps on a sofa", "zebras", "", "the dog runs the dog runs"]
    references = [
        TRAIN_REFS["a"],
        TRAIN_REFS["b"],
        ["two zebras graze", "zebras in a field"],  # not in the corpus: df 0
        TRAIN_REFS["c"],
        TRAIN_REFS["a"][:1],
    ]
    expected = [cider_d_by_hand(c, r, list(TRAIN_REFS.values())) for c, r in zip(candidates, references, strict=True)]
    np.testing.assert_allclose(scorer.score_batch(candidates, references), expected, rtol=1e-12, atol=1e-12)


def test_cider_d_corpus_metric_is_the_batch_reward():
    """compute_caption_metrics' CIDEr equals the mean reward when the corpus is the evaluated references."""
    predictions = {"a": "a dog runs", "b": "a cat on a sofa", "c": "kids in snow", "d": "a bike"}
    scores = CiderD(TRAIN_REFS).score_batch(list(predictions.values()), list(TRAIN_REFS.values()))
    expected = [cider_d_by_hand(predictions[i], TRAIN_REFS[i], list(TRAIN_REFS.values())) for i in TRAIN_REFS]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    metrics = compute_caption_metrics(predictions, TRAIN_REFS, meteor=False)
    assert metrics["CIDEr"] == pytest.approx(float(np.mean(expected)), abs=1e-12)


def test_cider_d_token_ids_match_text():
    vocabulary: dict[str, int] = {}
    eos, pad = 1, 0

    def ids(caption: str) -> list[int]:
        return [vocabulary.setdefault(w, len(vocabulary) + 2) for w in caption.split()]

    id_refs = [[ids(r) for r in refs] for refs in TRAIN_REFS.values()]
    candidates = ["a dog runs on grass", "a cat", "kids play in the snow", ""]
    id_candidates = np.array([ids(c) + [eos] + [pad] * (8 - len(c.split())) for c in candidates])
    text_scores = CiderD(TRAIN_REFS, tokenize=False).score_batch(candidates, list(TRAIN_REFS.values()))
    id_scores = CiderD(id_refs, eos_id=eos).score_batch(id_candidates, id_refs)
    np.testing.assert_allclose(id_scores, text_scores, rtol=1e-12)
    assert text_scores[0] > 0


def test_cider_d_save_and_load(tmp_path):
    scorer = CiderD(TRAIN_REFS)
    scorer.save(tmp_path / "df.json")
    loaded = CiderD.load(tmp_path / "df.json")
    assert loaded.document_frequency == scorer.document_frequency
    assert loaded.document_frequency[("a",)] == 3
    candidates, references = ["A dog runs on the grass.", "two cats"], [TRAIN_REFS["a"], TRAIN_REFS["b"]]
    expected = scorer.score_batch(candidates, references)
    np.testing.assert_array_equal(loaded.score_batch(candidates, references), expected)


def test_cider_d_rejects_bad_batches():
    scorer = CiderD(TRAIN_REFS)
    with pytest.raises(ValueError, match="reference lists"):
        scorer.score_batch(["a dog"], [])
    with pytest.raises(ValueError, match="at least one reference"):
        scorer.score_batch(["a dog"], [[]])
    with pytest.raises(ValueError, match="mix"):
        scorer.score_batch(["a dog", [3, 4]], [["a dog"], ["a cat"]])


# ----------------------------------------------------------------------------- other metrics and API


def test_lcs_length_matches_dynamic_programming():
    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        assert lcs_length(a, b) == table[-1][-1]


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ({"img1": "a dog", "img9": "a cat"}, {"img1": ["a dog"]}, "'img9'"),
        ({"img1": "a dog"}, {"img1": ["a dog"], "img7": ["a cat"]}, "'img7'"),
        ({"img1": "a dog", "img2": "a cat"}, {"img1": ["a dog"], "img2": []}, "'img2'.*empty"),
        ({"img1": "a dog", "img3": None}, {"img1": ["a dog"], "img3": ["a cat"]}, "'img3'.*str"),
        ({"img1": "a dog", "img4": "a cat"}, {"img1": ["a dog"], "img4": ["a cat", 42]}, "'img4'.*str"),
        ({"img5": "a cat"}, {"img5": "a cat"}, "'img5'.*list"),
        ({}, {}, "empty"),
    ],
)
def test_bad_input_raises_value_error_naming_the_id(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        compute_caption_metrics(predictions, references, meteor=False)


def test_leave_one_out_averages_the_folds():
    references = {
        "x": ["a dog runs", "a dog is running", "the dog runs fast"],
        "y": ["a red car", "a car", "red car parked"],
    }
    folds = [
        compute_caption_metrics(
            {i: refs[j] for i, refs in references.items()},
            {i: refs[:j] + refs[j + 1 :] for i, refs in references.items()},
            meteor=False,
        )
        for j in range(3)
    ]
    human = leave_one_out_human_scores(references, meteor=False)
    assert set(human) == set(METRIC_KEYS) - {"METEOR"}
    for key in human:
        assert human[key] == pytest.approx(np.mean([fold[key] for fold in folds]), abs=1e-12)
    with pytest.raises(ValueError, match="'z'"):
        leave_one_out_human_scores({"z": ["only one"]}, meteor=False)


def test_meteor_left_out_with_a_warning_without_java(monkeypatch):
    monkeypatch.setattr(meteor_module.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="java"):
        scores = compute_caption_metrics({"a": "a dog"}, {"a": ["a dog runs"]})
    assert "METEOR" not in scores and set(scores) == set(METRIC_KEYS) - {"METEOR"}


def test_evaluate_module_loads_offline_and_matches(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise OSError("network access during an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    predictions = [prediction for prediction, _ in AWKWARD.values()]
    references = [refs for _, refs in AWKWARD.values()]
    expected = compute_caption_metrics(dict(enumerate(predictions)), dict(enumerate(references)), meteor=False)
    for path in (EVALUATE_MODULE, EVALUATE_MODULE / "caption_metrics.py"):
        metric = evaluate.load(str(path))
        assert metric.compute(predictions=predictions, references=references, meteor=False) == expected


def test_caption_diversity_counts_sentences_after_ptb_tokenisation():
    predictions = {"a": "A dog runs.", "b": "a dog runs", "c": "a cat sleeps", "d": "A dog runs !"}
    # "A dog runs." == "a dog runs" == "A dog runs !" once tokenised: 2 distinct sentences of 4, words {a, dog,
    # runs, cat, sleeps}
    assert caption_diversity(predictions) == {"distinct_captions": 0.5, "vocabulary_size": 5.0}
    assert caption_diversity({"x": "a dog"})["distinct_captions"] == 1.0
    with pytest.raises(ValueError, match="at least one caption"):
        caption_diversity({})
