"""The AlignCap region captioner at tiny size (random encoders, segmenter, LSTM or Llama decoder; no GGUF): the config,
the processor's boxes, the frozen region features, every loss (hand-computed where feasible, absent at weight 0),
the masks, what stays frozen, generation with both decoders, saving, Auto classes and the region-to-text pipeline;
and once with the real encoders of ../shared/weights where they are present."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ALIGNCAP_TAGS as TAGS
from conftest import SHARED, aligncap_processor, run_without_soli_hf, tiny_aligncap, tiny_aligncap_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    pipeline,
)

from soli_hf import (
    AlignCapConfig,
    AlignCapForConditionalGeneration,
    AlignCapProcessor,
    smollm2_gguf_file,
)
from soli_hf.modeling_aligncap import box_geometry, masked_mean, region_text_contrastive, same_region_mask

#: Two photos (72x96, from conftest's `images`), three boxes: two in photo 0, one in photo 1.
BOXES = [[[0, 0, 48, 36], [20, 10, 96, 72]], [[8, 4, 60, 70]]]
PHRASES = ["a dog", "the grass", "a man"]
TAG_LABELS = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
LOSSES = ("tag", "caption", "cond", "multi")


def region_batch(tokenizer, images, decoder_type: str = "lstm") -> dict[str, torch.Tensor]:
    inputs = aligncap_processor(tokenizer, decoder_type)(
        images=images[:2], boxes=BOXES, text=PHRASES, return_tensors="pt"
    )
    return {**inputs, "tag_labels": TAG_LABELS}


def frozen_and_trainable(model: AlignCapForConditionalGeneration) -> tuple[dict, dict]:
    frozen_ids = {id(p) for module in model.frozen_modules() for p in module.parameters()}
    frozen = {name: p for name, p in model.named_parameters() if id(p) in frozen_ids}
    trainable = {name: p for name, p in model.named_parameters() if id(p) not in frozen_ids}
    return frozen, trainable


@pytest.fixture(params=["lstm", "language_model"])
def decoder_type(request) -> str:
    return request.param


# ------------------------------------------------------------------------------------------------------- config


def test_config_round_trips_and_sets_the_decoders_token_ids():
    config = tiny_aligncap_config(10, "language_model", multi_loss_weight=0.5)
    again = AlignCapConfig.from_dict(config.to_dict())
    assert again.tag_words == TAGS and again.num_tags == 5 and again.num_object_classes == 21
    assert again.multi_loss_weight == 0.5 and again.text_config.hidden_size == 16
    assert again.dense_encoder_config.output_stride == 8 and not again.is_encoder_decoder
    lstm = tiny_aligncap_config(10)
    assert (lstm.pad_token_id, lstm.bos_token_id, lstm.eos_token_id, lstm.decoder_start_token_id) == (0, 1, 2, 1)
    assert lstm.is_encoder_decoder
    assert config.to_dict()["custom_pipelines"]["region-to-text"]["impl"] == (
        "pipeline_aligncap.AlignCapRegionToTextPipeline"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"decoder_type": "gru"}, "decoder_type must be one of"),
        ({"tag_words": ["dog", "dog"]}, "a word twice"),
        ({"use_refinement": False}, "set tag_loss_weight and cond_loss_weight to 0"),
        ({"use_alignment": False}, "set multi_loss_weight to 0"),
        ({"cond_loss_weight": -1.0}, "cond_loss_weight must be >= 0"),
        ({"region_hidden_size": 15}, "multiple of region_num_heads"),
    ],
)
def test_config_rejects_inconsistent_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_aligncap_config(10, **overrides)


def test_the_default_config_builds_and_the_refinement_needs_tags():
    default = AlignCapConfig()
    assert default.decoder_type == "lstm" and default.use_refinement and default.num_tags == 0
    assert default.global_encoder_config.output_stride == 16 and default.text_config.hidden_size == 576
    with pytest.raises(ValueError, match="needs a tag vocabulary"):
        AlignCapForConditionalGeneration(tiny_aligncap_config(10, tag_words=[]))


# ---------------------------------------------------------------------------------------------------- processor


def test_processor_scales_boxes_to_the_models_photo_and_formats_phrases(tokenizer, images):
    # conftest's photos are 96 wide, 72 high: x scales by side / 96, y by side / 72.
    for side in (64, 224):
        inputs = aligncap_processor(tokenizer, image_size=side)(images=images[:2], boxes=BOXES, return_tensors="pt")
        assert inputs["pixel_values"].shape == (2, 3, side, side)
        expected = [[0, 0, 0, 48 * side / 96, 36 * side / 72], [0, 20 * side / 96, 10 * side / 72, side, side]]
        expected.append([1, 8 * side / 96, 4 * side / 72, 60 * side / 96, 70 * side / 72])
        assert torch.allclose(inputs["boxes"], torch.tensor(expected))
    words = tokenizer("a dog", add_special_tokens=False)["input_ids"]
    # LSTM: <bos> words <eos>; language model: words <eos>; shorter phrases padded, with -100 labels
    for decoder_type, expected in (("lstm", [1, *words, 2]), ("language_model", [*words, 2])):
        phrases = aligncap_processor(tokenizer, decoder_type)(text=["a dog", "a dog runs on the grass"])
        assert phrases["input_ids"][0][: len(expected)] == expected
        assert phrases["labels"][0][len(expected) :] == [-100] * 4 and phrases["attention_mask"][0][-4:] == [0] * 4
    # one photo's boxes alone, without the per-photo list; a box touching the border (1 px past it) is clipped
    single = aligncap_processor(tokenizer)(images=images[0], boxes=[[0, 0, 97, 73]], return_tensors="pt")
    assert single["boxes"].tolist() == [[0.0, 0.0, 0.0, 64.0, 64.0]]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[[0, 0, 10, 10]], []], r"image 1: no boxes \(an empty list\)"),
        ([[[30, 0, 10, 10]], [[0, 0, 5, 5]]], r"image 0, box 0: \[30.0, 0.0, 10.0, 10.0\] is inverted"),
        ([[[0, 0, 10, 10], [5, 5, 5, 9]], [[0, 0, 5, 5]]], r"image 0, box 1: \[5.0, 5.0, 5.0, 9.0\] has zero area"),
        (
            [[[0, 0, 10, 10]], [[0, 0, 99, 10]]],
            r"image 1, box 0: \[0.0, 0.0, 99.0, 10.0\] is outside the image \(96x72",
        ),
        ([[[-5, 0, 10, 10]], [[0, 0, 5, 5]]], r"image 0, box 0: \[-5.0, 0.0, 10.0, 10.0\] is outside"),
        ([[[0, 0, 10, 10]], [[0, 0, 5]]], r"image 1, box 0: expected \[x0, y0, x1, y1\]"),
        ([[[0, 0, 10, float("nan")]], [[0, 0, 5, 5]]], "image 0, box 0: .* is not finite"),
        ([[[0, 0, 10, 10]]], "got 2 images but boxes for 1"),
    ],
)
def test_processor_names_the_bad_box(tokenizer, images, boxes, message):
    with pytest.raises(ValueError, match=message):
        aligncap_processor(tokenizer)(images=images[:2], boxes=boxes)


def test_processor_wants_one_phrase_per_box(tokenizer, images):
    with pytest.raises(ValueError, match="3 boxes and 2 phrases"):
        aligncap_processor(tokenizer)(images=images[:2], boxes=BOXES, text=PHRASES[:2])


# --------------------------------------------------------------------------------------------- region features


def test_box_geometry_is_normalised_corners_size_and_area():
    geometry = box_geometry(torch.tensor([[0.0, 16, 0, 48, 32]]), 64)
    assert torch.allclose(geometry, torch.tensor([[0.25, 0, 0.75, 0.5, 0.5, 0.5, 0.25]]))


def test_region_features_shapes_context_and_object_evidence(tokenizer, images):
    model = tiny_aligncap(len(tokenizer))
    batch = region_batch(tokenizer, images)
    features = model.region_features(batch["pixel_values"], batch["boxes"])
    width = 1280 + 80  # the global encoder's last 1x1 convolution keeps 1,280 channels; the dense one has 320 x 0.25
    assert features.roi_features.shape == (3, 4, width) and features.context_features.shape == (3, width)
    assert torch.equal(features.context_features[0], features.context_features[1])  # one photo, one context
    assert not torch.equal(features.context_features[0], features.context_features[2])
    assert not torch.allclose(features.roi_features[0], features.roi_features[1])  # two boxes, two RoIs
    evidence = features.object_evidence
    assert evidence.shape == (3, 22) and torch.allclose(evidence[:, :21].sum(dim=1), torch.ones(3))
    assert torch.allclose(evidence[:, 21], 1 - evidence[:, 0])
    assert not any(t.requires_grad for t in features.values())
    assert same_region_mask(features).tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    with pytest.raises(ValueError, match=r"boxes row 0: .* not \(image index in \[0, 2\)"):
        model.region_features(batch["pixel_values"], torch.tensor([[2.0, 0, 0, 10, 10]]))


def test_the_plain_region_captioner_has_no_extra_modules(tokenizer, images):
    plain = dict(use_object_evidence=False, use_refinement=False, use_alignment=False)
    model = tiny_aligncap(len(tokenizer), tag_loss_weight=0, cond_loss_weight=0, multi_loss_weight=0, **plain)
    names = set(model.state_dict())
    assert not any(name.startswith(("refinement", "segmentation_head", "cond_", "multi_")) for name in names)
    assert not any(name.startswith("region_embeddings.evidence") for name in names)
    outputs = model(**region_batch(tokenizer, images))
    assert outputs.encoder_last_hidden_state.shape == (3, 4 + 2, 32)  # 2x2 RoI cells, context, geometry
    assert [getattr(outputs, f"{name}_loss") is None for name in LOSSES] == [True, False, True, True]
    assert torch.equal(outputs.loss, outputs.caption_loss)


# ----------------------------------------------------------------------------------------------- losses, masks


def test_region_text_contrastive_on_a_hand_computed_case():
    region, text = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    distinct = torch.eye(2, dtype=torch.bool)
    # each row: softmax over similarities (1, 0) / T with T = 1 -> -log(e / (e + 1)) = log(1 + e^-1)
    assert math.isclose(
        region_text_contrastive(region, text, distinct, 1.0).item(), math.log(1 + math.exp(-1)), rel_tol=1e-6
    )
    # two rows of one region (two of its phrases): both columns are positives, targets 1/2 each
    region, text = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    same = torch.ones(2, 2, dtype=torch.bool)
    logits = region @ text.t() / 0.5  # [[2, 1.2], [2, 1.2]]
    expected_rows = -(0.5 * logits.log_softmax(1)).sum(1).mean()
    expected_columns = -(0.5 * logits.t().log_softmax(1)).sum(1).mean()
    loss = region_text_contrastive(region, text, same, 0.5)
    assert torch.isclose(loss, 0.5 * (expected_rows + expected_columns))


def test_each_loss_has_its_value_and_the_total_is_the_weighted_sum(tokenizer, images, decoder_type):
    weights = {"tag_loss_weight": 0.5, "caption_loss_weight": 2.0, "cond_loss_weight": 0.25, "multi_loss_weight": 3.0}
    model = tiny_aligncap(len(tokenizer), decoder_type, **weights)
    batch = region_batch(tokenizer, images, decoder_type)
    outputs = model(**batch)
    # L_tag: binary cross-entropy of the tag logits, by its formula
    probabilities = outputs.tag_logits.sigmoid()
    tag = -(TAG_LABELS * probabilities.log() + (1 - TAG_LABELS) * (1 - probabilities).log()).mean()
    assert torch.isclose(outputs.tag_loss, tag, atol=1e-5)
    # L_cap: cross-entropy of the phrase tokens, padding left out
    labels, logits = batch["labels"], outputs.logits
    if decoder_type == "lstm":  # logits[:, t] predicts token t + 1
        labels, logits = labels[:, 1:], logits[:, :-1]
    scored = labels != -100
    caption = -logits.log_softmax(-1)[scored].gather(1, labels[scored].unsqueeze(1)).mean()
    assert torch.isclose(outputs.caption_loss, caption, atol=1e-5)
    # L_cond: the contrastive loss of the two embeddings the output carries (unit vectors, distinct regions)
    assert torch.allclose(outputs.region_embeds.norm(dim=-1), torch.ones(3))
    similarity = outputs.region_embeds @ outputs.phrase_embeds.t() / model.config.cond_temperature
    targets = torch.arange(3)
    cond = 0.5 * (F.cross_entropy(similarity, targets) + F.cross_entropy(similarity.t(), targets))
    assert torch.isclose(outputs.cond_loss, cond, atol=1e-5)
    assert torch.isfinite(outputs.multi_loss) and outputs.multi_loss > 0
    total = 0.5 * outputs.tag_loss + 2.0 * outputs.caption_loss + 0.25 * outputs.cond_loss + 3.0 * outputs.multi_loss
    assert torch.isclose(outputs.loss, total)


@pytest.mark.parametrize("off", LOSSES)
def test_a_loss_of_weight_zero_is_absent(tokenizer, images, off):
    model = tiny_aligncap(len(tokenizer), **{f"{off}_loss_weight": 0.0})
    outputs = model(**region_batch(tokenizer, images))
    for name in LOSSES:
        assert (getattr(outputs, f"{name}_loss") is None) == (name == off), name
    present = sum(getattr(outputs, f"{name}_loss") for name in LOSSES if name != off)
    assert torch.isclose(outputs.loss, present)
    assert (outputs.logits is None) == (off == "caption")  # the decoder does not run for a loss that is off
    assert (outputs.region_embeds is None) == (off == "cond")


def test_tag_labels_are_required_only_for_the_tag_loss(tokenizer, images):
    batch = region_batch(tokenizer, images)
    del batch["tag_labels"]
    with pytest.raises(ValueError, match="tag_loss_weight > 0 needs tag_labels"):
        tiny_aligncap(len(tokenizer))(**batch)
    assert tiny_aligncap(len(tokenizer), tag_loss_weight=0.0)(**batch).tag_loss is None


def test_padding_changes_no_loss(tokenizer, images, decoder_type):
    """The phrase masks: more padding on every phrase leaves every loss as it was."""
    model = tiny_aligncap(len(tokenizer), decoder_type)
    batch = region_batch(tokenizer, images, decoder_type)
    padded = dict(batch)
    padded["input_ids"] = F.pad(batch["input_ids"], (0, 3), value=0)
    padded["attention_mask"] = F.pad(batch["attention_mask"], (0, 3), value=0)
    padded["labels"] = F.pad(batch["labels"], (0, 3), value=-100)
    with torch.no_grad():
        outputs, padded_outputs = model(**batch), model(**padded)
    for name in LOSSES:
        assert torch.isclose(getattr(outputs, f"{name}_loss"), getattr(padded_outputs, f"{name}_loss"), atol=1e-5), name


def test_the_phrase_mask_leaves_out_start_end_and_padding(tokenizer):
    model = tiny_aligncap(len(tokenizer))
    ids = torch.tensor([[1, 7, 8, 2, 0]])
    assert model._phrase_mask(ids, torch.tensor([[1, 1, 1, 1, 0]])).tolist() == [[False, True, True, False, False]]
    assert masked_mean(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]])).item() == 2.0


def test_an_improbable_tag_does_not_refine_the_region(tokenizer):
    """The refinement's attention weighs each tag embedding by its predicted probability."""
    model = tiny_aligncap(len(tokenizer))
    refinement = model.refinement
    tokens = torch.randn(2, 6, 16)
    with torch.no_grad():
        refinement.tag_head[-1].bias[0] = -1e4  # tag 0 ("dog") is never predicted
        before, _ = refinement(tokens)
        refinement.tag_embeddings.weight[0] += 5.0
        unchanged, _ = refinement(tokens)
        refinement.tag_embeddings.weight[1] += 5.0
        changed, _ = refinement(tokens)
    assert torch.allclose(before, unchanged, atol=1e-5) and not torch.allclose(before, changed, atol=1e-3)


def test_cached_region_features_give_the_same_losses(tokenizer, images):
    model = tiny_aligncap(len(tokenizer))
    batch = region_batch(tokenizer, images)
    features = model.region_features(batch["pixel_values"], batch["boxes"])
    cached = {key: value for key, value in batch.items() if key not in ("pixel_values", "boxes")}
    with torch.no_grad():
        assert torch.equal(model(**batch).loss, model(**cached, region_features=features).loss)


def test_bfloat16_and_autocast_train_and_generate(tokenizer, images, decoder_type):
    """Mixed precision: RoIAlign (no bfloat16 CPU kernel) and the object evidence run in float32 inside."""
    model = tiny_aligncap(len(tokenizer), decoder_type)
    batch = region_batch(tokenizer, images, decoder_type)
    with torch.no_grad():
        expected = model(**batch).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isclose(model(**batch).loss, expected, rtol=0.05)
        model.to(torch.bfloat16)
        low = {**batch, "pixel_values": batch["pixel_values"].bfloat16()}
        assert torch.isclose(model(**low).loss, expected, rtol=0.05)
        assert model.generate(low["pixel_values"], low["boxes"], max_new_tokens=3, num_beams=2).shape[0] == 3


# ------------------------------------------------------------------------------------------------ frozen parts


def test_frozen_parts_do_not_change_after_an_optimizer_step(tokenizer, images, decoder_type):
    model = tiny_aligncap(len(tokenizer), decoder_type)
    frozen, trainable = frozen_and_trainable(model)
    expected_frozen = {"global_encoder", "dense_encoder", "segmentation_head"}
    if decoder_type == "language_model":
        expected_frozen.add("language_model")
    assert {name.split(".")[0] for name in frozen} == expected_frozen
    assert all(not p.requires_grad for p in frozen.values()) and all(p.requires_grad for p in trainable.values())
    before_frozen = {name: p.detach().clone() for name, p in frozen.items()}
    before_buffers = {name: b.clone() for name, b in model.named_buffers()}
    before_trainable = {name: p.detach().clone() for name, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    assert all(not module.training for module in model.frozen_modules()) and model.region_embeddings.training
    model(**region_batch(tokenizer, images, decoder_type)).loss.backward()
    assert all(p.grad is None for p in frozen.values())
    optimizer.step()
    assert all(torch.equal(p, before_frozen[name]) for name, p in frozen.items())
    assert all(torch.equal(b, before_buffers[name]) for name, b in model.named_buffers())  # batch-norm statistics
    changed = {name for name, p in trainable.items() if not torch.equal(p, before_trainable[name])}
    for name in ("region_embeddings.roi.weight", "refinement.tag_head.0.weight", "alignment.0.weight"):
        assert name in changed, name
    assert ("decoder.lstm.weight_ih" in changed) == (decoder_type == "lstm")


def test_training_steps_teach_each_box_its_phrase(tokenizer, images):
    """All four losses, optimised together: the LSTM recipe fits three boxes (two in one photo) in a few steps."""
    model = tiny_aligncap(len(tokenizer))
    batch = region_batch(tokenizer, images)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = None
    for _ in range(40):
        outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        first = outputs.caption_loss.item() if first is None else first
    assert outputs.caption_loss.item() < 0.1 * first
    model.eval()
    generated = model.generate(batch["pixel_values"], batch["boxes"], max_new_tokens=5)
    assert aligncap_processor(tokenizer).batch_decode(generated, skip_special_tokens=True) == PHRASES


# --------------------------------------------------------------------------------------------------- generation


def test_greedy_generation_follows_the_decoders_scores(tokenizer, images, decoder_type):
    model = tiny_aligncap(len(tokenizer), decoder_type)
    batch = region_batch(tokenizer, images, decoder_type)
    generated = model.generate(batch["pixel_values"], batch["boxes"], max_new_tokens=5, do_sample=False)
    assert generated.shape[0] == 3
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"], boxes=batch["boxes"], input_ids=generated).logits
    predicted = logits.argmax(-1)
    if decoder_type == "lstm":  # the sequences start with <bos>; logits[:, t] predicts token t + 1
        assert (generated[:, 0] == tokenizer.bos_token_id).all()
        generated, predicted = generated[:, 1:], predicted[:, :-1]
    for row, scores in zip(generated.tolist(), predicted.tolist(), strict=True):
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        assert row[:end] == scores[:end]


def test_beam_search_returns_sequences_per_region(tokenizer, images, decoder_type):
    model = tiny_aligncap(len(tokenizer), decoder_type)
    batch = region_batch(tokenizer, images, decoder_type)
    pixels, boxes = batch["pixel_values"], batch["boxes"]
    greedy = model.generate(pixels, boxes, max_new_tokens=5)
    assert torch.equal(model.generate(pixels, boxes, max_new_tokens=5, num_beams=1), greedy)
    beams = model.generate(pixels, boxes, max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 6
    one_region = model.generate(pixels, boxes[2:], max_new_tokens=5, num_beams=3)
    assert torch.equal(
        one_region, model.generate(pixels, boxes, max_new_tokens=5, num_beams=3)[2:, : one_region.shape[1]]
    )


# --------------------------------------------------------------------------------- saving, Auto classes, pipeline


@pytest.fixture(scope="module")
def saved_aligncap(tmp_path_factory, tokenizer) -> dict[str, Path]:
    folders = {}
    for decoder_type in ("lstm", "language_model"):
        folder = tmp_path_factory.mktemp(f"aligncap_{decoder_type}")
        tiny_aligncap(len(tokenizer), decoder_type).save_pretrained(folder)
        aligncap_processor(tokenizer, decoder_type).save_pretrained(folder)
        folders[decoder_type] = folder
    return folders


def test_save_and_load_give_equal_outputs(saved_aligncap, tokenizer, images, decoder_type):
    folder = saved_aligncap[decoder_type]
    model = tiny_aligncap(len(tokenizer), decoder_type)
    loaded = AlignCapForConditionalGeneration.from_pretrained(folder).eval()
    assert sorted(path.name for path in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(folder.glob("*.bin"))
    assert all(not p.requires_grad for module in loaded.frozen_modules() for p in module.parameters())
    batch = region_batch(tokenizer, images, decoder_type)
    with torch.no_grad():
        expected, got = model(**batch), loaded(**batch)
    for name in ("loss", *(f"{part}_loss" for part in LOSSES)):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    pixels, boxes = batch["pixel_values"], batch["boxes"]
    assert torch.equal(loaded.generate(pixels, boxes, num_beams=2), model.generate(pixels, boxes, num_beams=2))
    processor = AlignCapProcessor.from_pretrained(folder)
    assert processor.decoder_type == decoder_type and processor.image_processor.image_size == 64


def test_auto_classes_and_saved_code(saved_aligncap):
    folder = saved_aligncap["language_model"]
    assert isinstance(AutoConfig.from_pretrained(folder), AlignCapConfig)
    assert isinstance(AutoModel.from_pretrained(folder), AlignCapForConditionalGeneration)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(folder), AlignCapForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(folder), AlignCapProcessor)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert config["custom_pipelines"]["region-to-text"]["impl"] == "pipeline_aligncap.AlignCapRegionToTextPipeline"
    for name in (
        "configuration_aligncap.py",
        "modeling_aligncap.py",
        "object_evidence_aligncap.py",
        "processing_aligncap.py",
        "pipeline_aligncap.py",
        "modeling_dual_qformer.py",
        "modeling_soli.py",
    ):
        assert (folder / name).exists(), name


def test_pipeline_describes_each_box_like_generate(saved_aligncap, images, decoder_type):
    folder = saved_aligncap[decoder_type]
    model = AlignCapForConditionalGeneration.from_pretrained(folder).eval()
    processor = AlignCapProcessor.from_pretrained(folder)
    inputs = processor(images=images[0], boxes=BOXES[0], return_tensors="pt")
    expected = processor.batch_decode(model.generate(inputs["pixel_values"], inputs["boxes"]), skip_special_tokens=True)
    describer = pipeline("region-to-text", model=str(folder))
    described = describer(images[0], boxes=BOXES[0])
    assert described == [
        {"box": [float(v) for v in box], "generated_text": text} for box, text in zip(BOXES[0], expected, strict=True)
    ]
    both = describer(list(images[:2]), boxes=BOXES)
    assert [len(photo) for photo in both] == [2, 1] and both[0] == described
    assert (
        len(describer(images[0], boxes=BOXES[0][0], generate_kwargs={"num_beams": 3, "num_return_sequences": 2})) == 2
    )
    with pytest.raises(ValueError, match="pass boxes="):
        describer(images[0])
    with pytest.raises(ValueError, match="image 0, box 0: .* is inverted"):
        describer(images[0], boxes=[[50, 0, 10, 10]])


REMOTE_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
folder, boxes = sys.argv[1], json.loads(sys.argv[3])
image = np.load(sys.argv[2])
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=image, boxes=boxes, return_tensors="pt")
ids = model.generate(inputs["pixel_values"], inputs["boxes"], num_beams=2).tolist()
described = pipeline("region-to-text", model=folder, trust_remote_code=True)(image, boxes=boxes)
print(json.dumps({"ids": ids, "described": described}))
"""


@pytest.mark.slow
def test_trust_remote_code_without_soli_hf(saved_aligncap, images, tmp_path):
    import numpy as np

    folder = saved_aligncap["lstm"]
    np.save(tmp_path / "image.npy", images[0])
    outputs = run_without_soli_hf(
        REMOTE_SCRIPT, str(folder), str(tmp_path / "image.npy"), json.dumps(BOXES[0]), cwd=tmp_path
    )
    model = AlignCapForConditionalGeneration.from_pretrained(folder).eval()
    processor = AlignCapProcessor.from_pretrained(folder)
    inputs = processor(images=images[0], boxes=BOXES[0], return_tensors="pt")
    assert outputs["ids"] == model.generate(inputs["pixel_values"], inputs["boxes"], num_beams=2).tolist()
    assert [entry["box"] for entry in outputs["described"]] == [[float(v) for v in box] for box in BOXES[0]]


# -------------------------------------------------------------------------------------------------- the real parts


ENCODERS = (SHARED / "weights" / "mobilenet_v2_1.0_224", SHARED / "weights" / "deeplabv3_mobilenet_v2_1.0_513")


@pytest.mark.slow
@pytest.mark.skipif(not all((path / "model.safetensors").is_file() for path in ENCODERS), reason="no shared weights")
def test_real_encoders_build_a_region_captioner(tokenizer, images):
    model, processor = AlignCapForConditionalGeneration.from_pretrained_parts(
        *ENCODERS, tokenizer=tokenizer, tag_words=TAGS, image_size=224
    )
    assert model.config.global_encoder_config.output_stride == 16 and model.config.num_object_classes == 21
    assert model.config.dense_encoder_config.output_stride == 8
    inputs = processor(images=images[:1], boxes=[[[0, 0, 96, 72], [10, 10, 40, 40]]], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    features = model.region_features(inputs["pixel_values"], inputs["boxes"])
    assert features.roi_features.shape == (2, 16, 1280 + 320)
    assert torch.allclose(features.object_evidence[:, :21].sum(dim=1), torch.ones(2), atol=1e-5)
    assert model.generate(**{k: inputs[k] for k in ("pixel_values", "boxes")}, max_new_tokens=3).shape[0] == 2


def _smollm2_missing() -> str | None:
    try:
        smollm2_gguf_file()
    except FileNotFoundError as error:
        return str(error)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not all((path / "model.safetensors").is_file() for path in ENCODERS), reason="no shared weights")
@pytest.mark.skipif(_smollm2_missing() is not None, reason=str(_smollm2_missing()))
def test_real_language_model_decoder_trains_and_describes(images):
    model, processor = AlignCapForConditionalGeneration.from_pretrained_parts(
        *ENCODERS, decoder_type="language_model", tag_words=TAGS
    )
    assert model.config.text_config.hidden_size == 576 and model.config.eos_token_id == processor.tokenizer.eos_token_id
    batch = processor(images=images[:2], boxes=BOXES, text=PHRASES, return_tensors="pt")
    model.train()
    outputs = model(**batch, tag_labels=TAG_LABELS)
    assert all(torch.isfinite(getattr(outputs, f"{name}_loss")) for name in LOSSES)
    outputs.loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    assert model.alignment[-1].weight.grad.abs().sum() > 0
    model.eval()
    generated = model.generate(batch["pixel_values"], batch["boxes"], max_new_tokens=4, num_beams=2)
    assert generated.shape[0] == 3 and len(processor.batch_decode(generated, skip_special_tokens=True)) == 3
