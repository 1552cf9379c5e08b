"""Training: recipe parsing, data batches, curriculum, SCST reward, checkpoints, bad samples, and real runs
(`accelerate launch` end to end; SIGKILL mid-epoch then --resume gives the same losses step for step, each step
logged once)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FLICKR8K, recipe_flags, subprocess_env, tiny_config, tiny_recipe, write_caption_folder
from PIL import Image
from transformers import AutoModel, pipeline

from soli_hf import SoliConfig, SoliForConditionalGeneration, SoliProcessor
from soli_hf.data import load_caption_dataset
from soli_hf.metrics import CiderD
from soli_hf.storage import write_folder_atomically
from soli_hf.training import TrainingConfig, parse_training_config, train
from soli_hf.training.curriculum import linear_ramp, soli_schedule
from soli_hf.training.data import CaptionBatchCollator, CaptionImageDataset, DegradationPolicy, sample_rng
from soli_hf.training.epoch_scores import evaluate_captioner
from soli_hf.training.reporting import write_run_comparison
from soli_hf.training.scst import caption_words, decode, scst_loss, self_critical_advantages

ROOT = Path(__file__).resolve().parents[1]


def step_losses(output_dir: Path) -> dict[int, dict[str, float]]:
    """The logged record of each step, checking that each step is logged once, in order (resumed runs included)."""
    records = [json.loads(line) for line in (output_dir / "losses.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {record["step"]: record for record in records}


# ---------------------------------------------------------------------------------------------- recipe


def test_yaml_recipe_with_flag_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_epochs: 3\nbatch_size: 16\ndegradations: [bicubic, step]\n")
    config = parse_training_config(["--config", str(recipe), "--batch_size", "8", "--model_variant", "baseline"])
    assert (config.num_epochs, config.batch_size, config.model_variant) == (3, 8, "baseline")
    assert config.degradations == ["bicubic", "step"]


def test_recipe_errors_name_the_problem(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_epoch: 3\n")
    with pytest.raises(ValueError, match=r"recipe.yaml: unknown recipe keys \['num_epoch'\]"):
        parse_training_config(["--config", str(recipe)])
    with pytest.raises(ValueError, match="phase must be one of"):
        TrainingConfig(phase="rl")
    with pytest.raises(ValueError, match="--init_from"):
        TrainingConfig(phase="scst")


def test_checked_in_recipes_parse() -> None:
    recipes = sorted((ROOT / "configs").rglob("*.yaml"))  # the ablation and other-family folders included
    assert len(recipes) > 20
    for recipe in recipes:
        parse_training_config(["--config", str(recipe)])


# ------------------------------------------------------------------------------------ data, curriculum


def test_curriculum_alpha_ramp() -> None:
    config = TrainingConfig(curriculum_start_epoch=1.0, curriculum_epochs=2.0)
    alphas = [soli_schedule(e, config)["curriculum_alpha"] for e in (0.0, 1.0, 2.0, 3.0, 5.0)]
    assert alphas == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert linear_ramp(0.5, 0.0, 0.0) == 1.0


def test_scheduled_sampling_ramps_to_its_probability_and_is_absent_when_off() -> None:
    assert "sampling_probability" not in soli_schedule(5.0, TrainingConfig())
    config = TrainingConfig(
        scheduled_sampling_probability=0.2, scheduled_sampling_start_epoch=2, scheduled_sampling_epochs=4
    )
    probabilities = [soli_schedule(e, config)["sampling_probability"] for e in (0.0, 2.0, 4.0, 6.0, 11.0)]
    assert probabilities == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.2])
    with pytest.raises(ValueError, match="scheduled_sampling_probability must be in"):
        parse_training_config(["--scheduled_sampling_probability", "1.5"])


def test_random_degradation_is_a_function_of_seed_epoch_and_row() -> None:
    policy = DegradationPolicy(["bicubic", "step_gaussian"], [0.5, 1.5], [40, 90], 0.1, ramp_epochs=4)
    first = policy.sample(sample_rng(0, 1, 7), 1, 224, 64)
    assert first == policy.sample(sample_rng(0, 1, 7), 1, 224, 64)
    assert first != policy.sample(sample_rng(0, 2, 7), 2, 224, 64)
    # the scale factor ramps from mild (straight to 64 px) to severe (min_scale_factor)
    mild = [policy.sample(sample_rng(0, 0, i), 0, 224, 64)["scale_factor"] for i in range(50)]
    severe = [policy.sample(sample_rng(0, 4, i), 4, 224, 64)["scale_factor"] for i in range(50)]
    assert min(mild) == pytest.approx(64 / 224) and min(severe) < 0.15


def test_batches_hold_lr_hr_pairs_and_k_captions_per_image(tmp_path: Path, processor) -> None:
    rows = load_caption_dataset(write_caption_folder(tmp_path, {"train": 4}))
    policy = DegradationPolicy(["bicubic", "step"], [1.0, 1.0], [50, 90], None, 0.0)
    dataset = CaptionImageDataset(rows, processor, policy, True, 2, seed=0, on_bad_sample="skip")
    batch = CaptionBatchCollator(processor, max_caption_tokens=8)([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["hr_pixel_values"].shape == (4, 3, 128, 128)
    assert batch["labels"].shape[0] == 8 and len(batch["references"][0]) == 3


def test_captions_per_image_share_one_encoding(tiny_model, processor, images) -> None:
    inputs = processor(images=images[:2], return_tensors="pt")
    captions = ["a dog runs", "a man rides", "two dogs play", "a girl jumps"]
    text = processor(text=captions, return_tensors="pt")
    shared = tiny_model(pixel_values=inputs["pixel_values"], labels=text["labels"])
    repeated = tiny_model(pixel_values=inputs["pixel_values"].repeat_interleave(2, dim=0), labels=text["labels"])
    torch.testing.assert_close(shared.logits, repeated.logits)
    with pytest.raises(ValueError, match="multiple of the number of images"):
        tiny_model(pixel_values=inputs["pixel_values"], labels=text["labels"][:3])


def test_baseline_variant_has_no_sr_branch(tokenizer) -> None:
    model = SoliForConditionalGeneration(tiny_config(len(tokenizer), use_sr_branch=False)).train()
    assert model.encoder.super_resolution is None and model.contrastive_head is None
    assert model.config.inference_branches == "lr"
    output = model(pixel_values=torch.randn(3, 3, 64, 64), labels=torch.tensor([[1, 4, 5, 2]] * 3))
    assert output.contrastive_loss is None and output.sr_loss is None and output.sr_image_embeds is None
    with pytest.raises(ValueError, match="use_sr_branch=False"):
        SoliConfig(use_sr_branch=False, inference_branches="both")


# ------------------------------------------------------------------------------------------------ SCST


def test_scst_reward_on_a_known_case() -> None:
    # Two images whose captions share no word: every n-gram of image 0 has df 1 of 2 documents, so a candidate
    # equal to image 0's only reference has cosine 1 at every order and no length penalty: CIDEr-D = 10.
    scorer = CiderD([[(5, 6, 7, 2)], [(8, 9, 10, 2)]])
    samples = torch.tensor([[5, 6, 7, 2, 0], [8, 9, 10, 2, 0], [5, 6, 7, 6, 7]])
    words = caption_words(samples, eos_token_id=2, pad_token_id=0)
    assert words == [(5, 6, 7, 2), (8, 9, 10, 2), (5, 6, 7, 6, 7)]  # <eos> kept, padding dropped
    rewards = scorer.score_batch(words, [[(5, 6, 7, 2)]] * 3)
    assert rewards[0] == pytest.approx(10.0) and rewards[1] == 0.0 and 0.0 < rewards[2] < rewards[0]
    # baselines: the mean of the other samples of the same image, or the greedy caption's reward
    np.testing.assert_allclose(self_critical_advantages(np.array([1.0, 3.0, 2.0, 6.0]), 2, None), [-2, 2, -4, 4])
    np.testing.assert_allclose(
        self_critical_advantages(np.array([1.0, 3.0, 2.0, 6.0]), 2, np.array([2.0, 1.0])), [-1, 1, 1, 5]
    )


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_scst_loss_trains_the_decoder(tiny_model, processor, images, baseline) -> None:
    tiny_model.train()
    pixel_values = processor(images=images[:2], return_tensors="pt")["pixel_values"]
    references = [["a dog runs on the grass"], ["a man rides a red bike"]]
    scorer = CiderD([[tuple(ids[1:]) for ids in processor.tokenizer(refs)["input_ids"]] for refs in references])
    torch.manual_seed(0)
    loss, mean_reward = scst_loss(
        tiny_model,
        tiny_model.get_encoder()(pixel_values),
        references,
        processor.tokenizer,
        scorer,
        num_samples=3,
        baseline=baseline,
        max_new_tokens=6,
    )
    loss.backward()
    assert torch.isfinite(loss) and mean_reward >= 0.0
    assert tiny_model.decoder.lm_head.weight.grad.abs().sum() > 0


def test_greedy_decode_matches_generate(tiny_model, processor, images) -> None:
    pixel_values = processor(images=images[:3], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        encoded = tiny_model.get_encoder()(pixel_values)
        ours = decode(tiny_model, encoded, 1, 6, sample=False).token_ids
        generated = tiny_model.generate(pixel_values=pixel_values, max_new_tokens=6, do_sample=False)[:, 1:]
    ours = ours.masked_fill(ours == tiny_model.config.eos_token_id, tiny_model.config.pad_token_id)
    generated = generated.masked_fill(generated == tiny_model.config.eos_token_id, tiny_model.config.pad_token_id)
    assert torch.equal(ours[:, : generated.shape[1]], generated)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_epoch_evaluation_captions_as_generate_does_in_eval_mode(tmp_path: Path, tiny_model, processor, num_beams):
    """The dev captions come from the Captioner; they equal what the evaluation produced before it (one encoding for
    the loss and `generate(encoder_outputs=...)`), and the model's training mode is restored."""
    rows = load_caption_dataset(write_caption_folder(tmp_path, {"dev": 4}), split="dev")
    dataset = CaptionImageDataset(rows, processor, None, False, 3, seed=0, on_bad_sample="skip")
    batch = CaptionBatchCollator(processor, max_caption_tokens=8)([dataset[i] for i in range(4)])
    tiny_model.train()  # batch norm on batch statistics: captions made in training mode would differ
    metrics, predictions = evaluate_captioner(
        tiny_model, [batch, None], processor, num_beams=num_beams, max_new_tokens=6, show_progress=False
    )
    assert tiny_model.training
    tiny_model.eval()
    with torch.no_grad():
        encoded = tiny_model.get_encoder()(batch["pixel_values"])
        ids = tiny_model.generate(encoder_outputs=encoded, max_new_tokens=6, num_beams=num_beams, do_sample=False)
        output = tiny_model(encoder_outputs=encoded, labels=batch["labels"], attention_mask=batch["attention_mask"])
    assert list(predictions) == batch["image_ids"]
    assert list(predictions.values()) == processor.batch_decode(ids, skip_special_tokens=True)
    assert metrics["val_loss"] == pytest.approx(float(output.caption_loss))
    assert {"CIDEr", "Bleu_4"} <= set(metrics)


# ------------------------------------------------------------------------------------ checkpoints, runs


def test_atomic_folder_write_keeps_the_old_folder_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model"
    write_folder_atomically(target, lambda tmp: (tmp / "weights").write_text("old"))

    def fail(tmp: Path) -> None:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_folder_atomically(target, fail)
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_bad_samples_are_skipped_counted_or_stop_the_run(tmp_path: Path, tiny_model_config: Path) -> None:
    data = write_caption_folder(tmp_path / "data", {"train": 8, "dev": 4})
    (data / "train" / "train1.png").unlink()  # missing image
    (data / "train" / "train2.png").write_bytes(b"not a png")  # unreadable image
    metadata = data / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[3] = json.dumps({"file_name": "train3.png", "captions": ["", "  "]})  # no usable caption
    metadata.write_text("\n".join(lines) + "\n")
    model_dir = train(tiny_recipe(data, tiny_model_config, tmp_path / "skip", num_epochs=1))
    skipped = json.loads((model_dir / "metrics.json").read_text())["skipped_train_samples"]
    assert skipped["missing_image"] == 1 and skipped["unreadable_image"] == 1 and skipped["empty_caption"] == 2
    with pytest.raises(ValueError, match=r"train1\.png.*metadata\.jsonl line 2"):
        train(tiny_recipe(data, tiny_model_config, tmp_path / "error", num_epochs=1, on_bad_sample="error"))


def test_image_unreadable_at_training_time_is_skipped(tmp_path: Path, processor) -> None:
    rows = load_caption_dataset(write_caption_folder(tmp_path, {"train": 3}))
    Path(rows[1]["image_path"]).write_bytes(b"broken after loading")
    dataset = CaptionImageDataset(rows, processor, None, True, 1, seed=0, on_bad_sample="skip")
    collator = CaptionBatchCollator(processor, max_caption_tokens=8)
    batch = collator([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape[0] == 2 and collator.skipped_images == 1
    strict = CaptionImageDataset(rows, processor, None, True, 1, seed=0, on_bad_sample="error")
    with pytest.raises(ValueError, match="train1.png"):
        strict[1]


@pytest.mark.slow
def test_accelerate_launch_end_to_end(tmp_path: Path, tiny_model_config: Path) -> None:
    """`accelerate launch scripts/train.py` on a handful of real Flickr8k images (generated ones without the
    data), then the folder loads with AutoModel and the pipeline."""
    if FLICKR8K.is_dir():
        data, limits = FLICKR8K, {"max_train_images": 8, "max_eval_images": 4, "vocab_min_frequency": 1}
    else:
        data, limits = write_caption_folder(tmp_path / "data", {"train": 8, "dev": 4}), {}
    config = tiny_recipe(data, tiny_model_config, tmp_path / "run", num_epochs=1, **limits)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = subprocess.run(
        [*command, str(ROOT / "scripts" / "train.py"), *recipe_flags(config)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = tmp_path / "run" / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert {"CIDEr", "Bleu_4", "val_loss", "train_images_per_second", "peak_memory_mb"} <= set(metrics["best"])
    assert (model_dir / "training_curves.png").stat().st_size > 0
    assert {"train_seconds", "eval_seconds"} <= set(metrics["best"])
    comparison = write_run_comparison([tmp_path / "run"], tmp_path / "comparison")["runs"][0]
    assert comparison["dev_greedy"]["CIDEr"] == metrics["best"]["CIDEr"]
    assert str(tmp_path / "run") in (tmp_path / "comparison" / "comparison.md").read_text()
    assert (tmp_path / "comparison" / "comparison.png").stat().st_size > 0
    model = AutoModel.from_pretrained(model_dir)
    assert isinstance(model, SoliForConditionalGeneration)
    unknown = SoliProcessor.from_pretrained(model_dir).tokenizer.unk_token_id
    assert model.generation_config.suppress_tokens == [unknown]  # captions never contain <unk>
    captioner = pipeline("image-to-text", model=str(model_dir))
    image = Image.new("RGB", (80, 60), (200, 40, 40))
    assert isinstance(captioner(image, generate_kwargs={"max_new_tokens": 5})[0]["generated_text"], str)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_losses(tmp_path: Path, tiny_model_config: Path) -> None:
    data = write_caption_folder(tmp_path / "data", {"train": 16, "dev": 4})
    script = [sys.executable, str(ROOT / "scripts" / "train.py")]
    uninterrupted = tiny_recipe(data, tiny_model_config, tmp_path / "whole", num_epochs=3)
    subprocess.run([*script, *recipe_flags(uninterrupted)], check=True, capture_output=True, env=subprocess_env())
    expected = step_losses(tmp_path / "whole")
    assert len(expected) == 12  # 3 epochs x 4 batches

    killed = tiny_recipe(data, tiny_model_config, tmp_path / "killed", num_epochs=3)
    process = subprocess.Popen(
        [*script, *recipe_flags(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env()
    )
    log = tmp_path / "killed" / "losses.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 7) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-epoch 2, with no chance to clean up
    process.wait()
    logged_before_kill = len(log.read_text().splitlines())
    assert 7 <= logged_before_kill < 12, "the run was not killed mid-training"

    resumed = subprocess.run(
        [*script, *recipe_flags(killed), "--resume", "true"], capture_output=True, text=True, env=subprocess_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    got = step_losses(tmp_path / "killed")  # each step once: the steps logged after the checkpoint were dropped
    assert list(got) == list(expected) == list(range(12))
    for step, record in expected.items():
        for key in ("loss", "caption_loss", "contrastive_loss", "sr_loss", "curriculum_alpha"):
            assert got[step][key] == pytest.approx(record[key], abs=1e-6), (step, key)
    whole = json.loads((tmp_path / "whole" / "model" / "metrics.json").read_text())["history"]
    again = json.loads((tmp_path / "killed" / "model" / "metrics.json").read_text())["history"]
    assert [e["val_loss"] for e in again] == pytest.approx([e["val_loss"] for e in whole], abs=1e-6)


def test_stop_after_epochs_is_a_budget_of_the_same_schedule(tmp_path: Path, tiny_model_config: Path) -> None:
    """A run stopped after 1 of 2 epochs follows the 2-epoch schedule (not a 1-epoch one), says how far it got, and
    resumed without the budget ends as the unbroken run does."""
    data = write_caption_folder(tmp_path / "data", {"train": 8, "dev": 4})
    train(tiny_recipe(data, tiny_model_config, tmp_path / "whole"))
    budget = tiny_recipe(data, tiny_model_config, tmp_path / "budget", stop_after_epochs=1)
    train(budget)
    stopped = json.loads((tmp_path / "budget" / "model" / "metrics.json").read_text())
    assert (stopped["epochs_trained"], stopped["num_epochs"], len(stopped["history"])) == (1, 2, 1)
    expected = step_losses(tmp_path / "whole")
    got = step_losses(tmp_path / "budget")
    assert list(got) == [0, 1]  # 8 photos in batches of 4: the first epoch only
    assert [got[s]["lr"] for s in got] == pytest.approx([expected[s]["lr"] for s in got])
    runs = [tmp_path / "whole", tmp_path / "budget"]  # compared at the epoch both reached
    compared = write_run_comparison(runs, tmp_path / "comparison", at_epoch=1)["runs"]
    first_epochs = [json.loads((run / "model" / "metrics.json").read_text())["history"][0] for run in runs]
    assert [run["dev_greedy"]["val_loss"] for run in compared] == [epoch["val_loss"] for epoch in first_epochs]
    assert "| 1/2 |" in (tmp_path / "comparison" / "comparison.md").read_text()
    with pytest.raises(ValueError, match=r"did not reach epoch 2: .*budget"):
        write_run_comparison(runs, tmp_path / "comparison", at_epoch=2)

    train(dataclasses.replace(budget, stop_after_epochs=None, resume=True))
    got = step_losses(tmp_path / "budget")
    assert list(got) == list(expected) == [0, 1, 2, 3]
    for step, record in expected.items():
        assert got[step]["loss"] == pytest.approx(record["loss"], abs=1e-5), step
    resumed = json.loads((tmp_path / "budget" / "model" / "metrics.json").read_text())
    assert resumed["epochs_trained"] == 2
