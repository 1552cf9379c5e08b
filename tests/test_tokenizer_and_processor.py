"""The word-level tokenizer builder and SoliProcessor."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_CAPTIONS
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from soli_hf import SoliProcessor, build_tokenizer


def test_specials_have_fixed_ids_and_captions_are_normalised(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [
        0,
        1,
        2,
        3,
    ]
    ids = tokenizer("A Dog, runs!  on the GRASS.")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a dog runs on the grass"


def test_min_frequency_sends_rare_words_to_unk():
    tokenizer = build_tokenizer(["a dog", "a dog", "a cat"], min_frequency=2)
    assert "cat" not in tokenizer.get_vocab() and "dog" in tokenizer.get_vocab()
    assert tokenizer("a cat")["input_ids"] == [1, tokenizer.convert_tokens_to_ids("a"), 3, 2]


def test_builder_rejects_bad_captions():
    with pytest.raises(ValueError, match="caption 1"):
        build_tokenizer(["a dog", None])
    with pytest.raises(ValueError, match="vocabulary is empty"):
        build_tokenizer(["a dog"], min_frequency=5)


def test_tokenizer_round_trip_names_a_class_every_transformers_knows(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    config = (tmp_path / "tokenizer_config.json").read_text()
    assert '"tokenizer_class": "PreTrainedTokenizerFast"' in config
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(TINY_CAPTIONS)["input_ids"] == processor.tokenizer(TINY_CAPTIONS)["input_ids"]


def test_processor_makes_model_inputs(processor, images):
    batch = processor(images=images[:2], text=TINY_CAPTIONS[2:4], return_hr=True, return_tensors="pt")
    assert set(batch) == {"pixel_values", "hr_pixel_values", "input_ids", "attention_mask", "labels"}
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["hr_pixel_values"].shape == (2, 3, 128, 128)
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["labels"][padded] == -100).all()
    assert torch.equal(batch["labels"][~padded], batch["input_ids"][~padded])


def test_processor_round_trip_and_errors(processor, images, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = SoliProcessor.from_pretrained(tmp_path)
    assert torch.equal(
        reloaded(images=images[0], return_tensors="pt")["pixel_values"],
        processor(images=images[0], return_tensors="pt")["pixel_values"],
    )
    with pytest.raises(ValueError, match="needs `images`, `text`"):
        processor()
    with pytest.raises(ValueError, match="2 images but 3 captions"):
        processor(images=images[:2], text=TINY_CAPTIONS[:3])
