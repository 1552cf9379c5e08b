"""Training the dual-encoder Q-Former through the one training loop, on tiny random parts saved as the recipe's
folders (two MobileNetV2 encoders, a two-layer Llama with a word-level tokenizer; no GGUF): the recipe's family
checks, stage 1 (ITC + ITM + ITG, best epoch by dev ITG loss) then stage 2 from its model (caption loss, CIDEr-D),
the global-only ablation, frozen parts unchanged and kept out of the checkpoints, and an exact resume (one process,
and two under torchrun: slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import (
    COLOURS,
    SHAPES,
    assert_exact_resume,
    he_initialised,
    step_records,
    tiny_recipe,
    tiny_text_config,
    write_caption_folder,
)
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, MobileNetV2Config, MobileNetV2Model

from soli_hf import DualQFormerForConditionalGeneration, DualQFormerProcessor, build_tokenizer
from soli_hf.captioner import load_captioner
from soli_hf.training import TrainingConfig, train
from soli_hf.training.checkpointing import frozen_prefixes
from soli_hf.training.model_setup import build_model_and_processor, check_model_sources, trainable_parameter_groups

#: The tiny Q-Formers (a `model_config` of DualQFormerConfig settings), read at 64x64 by both encoders.
TINY_QFORMER = {
    "global_image_size": 64,
    "finegrained_image_size": 64,
    "num_query_tokens": 4,
    "qformer_hidden_size": 16,
    "qformer_num_hidden_layers": 2,
    "qformer_num_attention_heads": 2,
    "qformer_intermediate_size": 32,
    "cross_attention_frequency": 1,
    "qformer_dropout": 0.1,
    "projection_dim": 8,
    "max_text_length": 16,
}


def random_encoder(config: MobileNetV2Config) -> MobileNetV2Model:
    """A random MobileNetV2 whose activations do not fade to nothing (so that images differ)."""
    return he_initialised(MobileNetV2Model(config, add_pooling_layer=False))


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, str]:
    """The recipe's parts as folders: global and fine-grained encoders, a language model with its tokenizer (words
    of the generated captions), and the Q-Former settings."""
    root = tmp_path_factory.mktemp("dual_parts")
    torch.manual_seed(0)
    random_encoder(MobileNetV2Config(depth_multiplier=0.25, output_stride=16)).save_pretrained(root / "global")
    random_encoder(MobileNetV2Config(depth_multiplier=0.25, output_stride=8)).save_pretrained(root / "finegrained")
    words = [f"a {colour} {shape} on white one that is" for colour in COLOURS for shape in SHAPES]
    tokenizer = build_tokenizer(words, min_frequency=1)
    language_model = LlamaForCausalLM(
        tiny_text_config(
            len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    language_model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    (root / "qformer.json").write_text(json.dumps(TINY_QFORMER))
    names = ("global", "finegrained", "lm", "qformer.json")
    return {name: str(root / name) for name in names}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 training images (2 batches of 4) and 4 dev images."""
    return write_caption_folder(tmp_path_factory.mktemp("dual_data"), {"train": 8, "dev": 4})


def dual_recipe(data: Path, parts: dict[str, str], output_dir: Path, **overrides: object) -> TrainingConfig:
    """The tiny SOLI's recipe (`tiny_recipe`) for the tiny dual-encoder Q-Former at stage 1, on the saved parts, with
    a checkpoint after every step."""
    values = dict(
        model_type="dual_qformer",
        training_stage=1,
        backbone=parts["global"],
        finegrained_encoder=parts["finegrained"],
        language_model=parts["lm"],
        vocab_min_frequency=TrainingConfig.vocab_min_frequency,  # SOLI's word tokenizer: this family uses the LM's
        warmup_steps=1,
        save_every_steps=1,
    )
    model_config = overrides.pop("model_config", parts["qformer.json"])
    return tiny_recipe(data, Path(model_config), output_dir, **(values | overrides))


def frozen_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefixes = frozen_prefixes(model)
    return {name: value for name, value in model.state_dict().items() if name.startswith(prefixes)}


# ------------------------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model_type": "dual_qformer"}, "needs training_stage 1 or 2"),
        ({"model_type": "dual_qformer", "training_stage": 1, "channels_last": True}, "channels_last=True does not"),
        ({"model_type": "dual_qformer", "training_stage": 2, "phase": "scst"}, "phase='scst' does not apply"),
        ({"model_type": "dual_qformer", "training_stage": 1, "num_tags": 300}, "num_tags=300 does not apply"),
        ({"model_type": "dual_qformer", "training_stage": 1, "curriculum_epochs": 1.0}, "curriculum_epochs"),
        ({"model_type": "dual_qformer", "training_stage": 1, "distillation_weight": 0.5}, "distillation_weight"),
        ({"training_stage": 2}, "training_stage=2 does not apply to model_type 'soli'"),
        ({"language_model": "lm.gguf"}, "language_model='lm.gguf' does not apply"),
    ],
)
def test_settings_of_the_other_family_are_refused(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**values)


def test_checked_in_dual_qformer_recipes_parse() -> None:
    from soli_hf.training import parse_training_config

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs" / "dual_qformer").glob("*.yaml"))
    assert {recipe.stem for recipe in recipes} >= {"stage1", "stage2", "stage2_global_only", "stage2_no_stage1"}
    for recipe in recipes:
        config = parse_training_config(["--config", str(recipe)])
        assert config.model_type == "dual_qformer" and config.training_stage in (1, 2)


def test_missing_parts_are_named_before_any_data_is_read(data, parts, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"language_model .*missing\.gguf: no such file \(a GGUF language"):
        check_model_sources(dual_recipe(data, parts, tmp_path / "run", language_model=str(tmp_path / "missing.gguf")))
    with pytest.raises(FileNotFoundError, match="finegrained_encoder .*nowhere: the folder does not exist"):
        check_model_sources(dual_recipe(data, parts, tmp_path / "run", finegrained_encoder=str(tmp_path / "nowhere")))
    bad_settings = tmp_path / "bad.json"
    bad_settings.write_text(json.dumps({"num_query_tokens": 4, "text_config": {}, "num_quary_tokens": 2}))
    with pytest.raises(ValueError, match=r"bad\.json: \['num_quary_tokens'\] are not DualQFormerConfig settings"):
        build_model_and_processor(dual_recipe(data, parts, tmp_path / "run", model_config=str(bad_settings)), None)


def test_only_the_trainable_weights_go_to_the_optimizer(data, parts, tmp_path) -> None:
    config = dual_recipe(data, parts, tmp_path / "run")
    model, processor = build_model_and_processor(config, None)
    assert isinstance(processor, DualQFormerProcessor) and model.config.training_stage == 1
    assert model.config.num_query_tokens == TINY_QFORMER["num_query_tokens"]
    (group,) = trainable_parameter_groups(model, config)
    optimised = {id(p) for p in group["params"]}
    frozen = {id(p) for module in model.frozen_modules() for p in module.parameters()}
    assert frozen and not optimised & frozen
    assert optimised == {id(p) for p in model.parameters()} - frozen and group["lr"] == config.learning_rate
    model.train()
    assert not any(module.training for part in model.frozen_modules() for module in part.modules())


# --------------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, data, parts) -> Path:
    output_dir = tmp_path_factory.mktemp("stage1") / "run"
    train(dual_recipe(data, parts, output_dir, ema_decay=0.5))
    return output_dir


def test_stage1_logs_its_losses_selects_on_dev_itg_and_keeps_frozen_parts_out_of_checkpoints(stage1_run, parts):
    records = step_records(stage1_run)
    assert [record["step"] for record in records] == [0, 1, 2, 3]  # 2 epochs x 2 batches
    for record in records:
        assert {"loss", "itc_loss", "itm_loss", "itg_loss"} <= set(record) and "curriculum_alpha" not in record
        assert record["loss"] == pytest.approx(record["itc_loss"] + record["itm_loss"] + record["itg_loss"])
    metrics = json.loads((stage1_run / "model" / "metrics.json").read_text())
    history = metrics["history"]
    assert {"val_loss", "val_itc_loss", "val_itm_loss", "val_itg_loss", "ema/val_itg_loss"} <= set(history[0])
    assert "CIDEr" not in history[0]
    best = min(
        (entry[key], entry["epoch"]) for entry in history for key in ("val_itg_loss", "ema/val_itg_loss")
    )  # the lowest dev ITG loss of either set of weights, the earlier epoch on a tie
    assert metrics["best_epoch"] == best[1]

    model = DualQFormerForConditionalGeneration.from_pretrained(stage1_run / "model")
    assert model.config.training_stage == 1 and not any(p.requires_grad for p in model.language_model.parameters())
    # the frozen parts are the recipe's, unchanged by training
    language_model = LlamaForCausalLM.from_pretrained(parts["lm"])
    for name, value in language_model.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], value), name
    for name, folder in (("global", parts["global"]), ("finegrained", parts["finegrained"])):
        source = MobileNetV2Model.from_pretrained(folder, add_pooling_layer=False).state_dict()
        saved = model.encoders[name].backbone.state_dict()
        assert all(torch.equal(saved[key], value) for key, value in source.items() if key in saved), name

    # checkpoints hold the trained weights (and their EMA), not the frozen encoders and language model
    checkpoint = sorted((stage1_run / "checkpoints").iterdir())[-1]
    weights = load_file(checkpoint / "model.safetensors")
    assert weights and not any(name.startswith(("encoders.", "language_model.")) for name in weights)
    assert "qformers.global.query_tokens" in weights and "temperature" in weights
    ema = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=True)  # 0: the schedule
    assert "module.qformers.finegrained.query_tokens" in ema
    assert not any(name.startswith(("module.encoders.", "module.language_model.")) for name in ema)
    saved_model = stage1_run / "model" / "model.safetensors"
    assert (checkpoint / "model.safetensors").stat().st_size < saved_model.stat().st_size


def test_stage2_from_stage1_trains_the_projections_through_the_frozen_language_model(stage1_run, data, parts, tmp_path):
    output_dir = tmp_path / "stage2"
    model_dir = train(
        dual_recipe(data, parts, output_dir, training_stage=2, init_from=str(stage1_run / "model"), num_epochs=1)
    )
    records = step_records(output_dir)
    assert all(set(record) >= {"loss", "caption_loss"} and "itc_loss" not in record for record in records)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert {"CIDEr", "Bleu_4", "val_loss", "distinct_captions"} <= set(metrics["best"])
    stage1 = DualQFormerForConditionalGeneration.from_pretrained(stage1_run / "model")
    stage2 = DualQFormerForConditionalGeneration.from_pretrained(model_dir)
    assert stage2.config.training_stage == 2
    frozen, frozen_before, before = frozen_state(stage2), frozen_state(stage1), stage1.state_dict()
    assert frozen.keys() == frozen_before.keys()
    assert all(torch.equal(value, frozen_before[name]) for name, value in frozen.items())
    changed = [
        name
        for name, value in stage2.state_dict().items()
        if name not in frozen and not torch.equal(value, before[name])
    ]
    assert "language_projections.global.weight" in changed and "qformers.finegrained.query_tokens" in changed
    assert not any("itm_head" in name for name in changed)  # stage 1's heads get no gradient in stage 2
    captioner = load_captioner(model_dir)
    assert len(captioner.caption([str(next((data / "dev").glob("*.png")))], max_new_tokens=3)) == 1


def test_stage2_global_only_drops_the_finegrained_encoder_of_a_stage1_model(stage1_run, data, parts, tmp_path):
    model_dir = train(
        dual_recipe(
            data,
            parts,
            tmp_path / "global_only",
            training_stage=2,
            init_from=str(stage1_run / "model"),
            finegrained_encoder=None,
            num_epochs=1,
        )
    )
    model = DualQFormerForConditionalGeneration.from_pretrained(model_dir)
    assert list(model.encoders) == list(model.qformers) == ["global"]
    assert not model.config.use_finegrained_encoder
    stage1 = DualQFormerForConditionalGeneration.from_pretrained(stage1_run / "model")
    # the global Q-Former starts from stage 1's: its ITM head, which stage 2 does not train, is stage 1's
    assert torch.equal(model.qformers["global"].itm_head.weight, stage1.qformers["global"].itm_head.weight)
    assert not torch.equal(model.qformers["global"].query_tokens, stage1.qformers["global"].query_tokens)


def test_init_from_refuses_a_model_of_another_family(data, parts, saved_tiny_model, tmp_path):
    recipe = dual_recipe(data, parts, tmp_path / "run", training_stage=2, init_from=str(saved_tiny_model))
    with pytest.raises(ValueError, match="is a 'soli' model; the recipe trains dual_qformer"):
        train(recipe)


@pytest.mark.parametrize(
    ("stage", "losses", "scores"),
    [
        (1, ("loss", "itc_loss", "itm_loss", "itg_loss"), ("val_itg_loss", "val_itm_loss", "ema/val_itg_loss")),
        (2, ("loss", "caption_loss"), ("val_loss", "ema/val_loss", "CIDEr")),
    ],
)
def test_a_run_stopped_mid_epoch_resumes_exactly(data, parts, tmp_path, monkeypatch, stage, losses, scores):
    """An uninterrupted run (with an EMA) and one stopped mid-epoch 2 (after step 3 was logged, before its
    checkpoint), resumed from its checkpoint of step 3 (one batch into epoch 2): the same losses step for step (stage
    1's ITM negatives are drawn at random), each step logged once, and the same dev scores."""
    recipe = {"training_stage": stage, "num_epochs": 2, "ema_decay": 0.5}
    assert_exact_resume(
        monkeypatch,
        tmp_path,
        lambda output_dir, **resume: dual_recipe(data, parts, output_dir, **recipe, **resume),
        stop_step=3,
        steps=4,
        losses=losses,
        scores=scores,
    )


@pytest.mark.slow
def test_two_processes_keep_frozen_parts_out_of_checkpoints_and_resume_exactly(data, parts, tmp_path):
    """`torchrun` with 2 CPU processes (DDP-wrapped model, its state under `module.`): the checkpoints hold the
    trained weights alone, and a run stopped after the checkpoint of step 3 (mid-epoch 2) resumes with the losses and
    final weights of the unbroken run."""
    import shutil
    import subprocess
    import sys

    from conftest import recipe_flags, subprocess_env

    def torchrun(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        config = dual_recipe(data, parts, output_dir, training_stage=2, batch_size=2, ema_decay=0.5, keep_checkpoints=4)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += [str(Path(__file__).resolve().parents[1] / "scripts" / "train.py"), *recipe_flags(config), *extra]
        result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
        return result

    whole = tmp_path / "whole"
    torchrun(whole)
    checkpoints = sorted((whole / "checkpoints").iterdir())
    assert [path.name for path in checkpoints] == [f"step-{step:08d}" for step in (1, 2, 3, 4)]
    for checkpoint in checkpoints:
        assert "random_states_1.pkl" in {path.name for path in checkpoint.iterdir()}
        weights = load_file(checkpoint / "model.safetensors")
        assert "qformers.global.query_tokens" in weights
        assert not any(name.startswith(("encoders.", "language_model.", "module.")) for name in weights)
    stopped = tmp_path / "stopped"
    shutil.copytree(whole, stopped)
    shutil.rmtree(stopped / "checkpoints" / "step-00000004")
    assert "step-00000003" in torchrun(stopped, "--resume", "true").stderr
    expected, got = step_records(whole), step_records(stopped)
    assert [record["step"] for record in got] == [record["step"] for record in expected] == [0, 1, 2, 3]
    for before, after in zip(expected, got, strict=True):
        assert after["caption_loss"] == pytest.approx(before["caption_loss"], abs=1e-6), before["step"]
    final = Path("checkpoints") / "step-00000004"
    weights = load_file(stopped / final / "model.safetensors")
    for name, tensor in load_file(whole / final / "model.safetensors").items():
        assert torch.allclose(weights[name], tensor, atol=1e-6), name
