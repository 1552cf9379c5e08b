"""Weight averaging (`ema_decay`) and the faster CPU training settings (`channels_last`, bf16 autocast,
`torch_compile`, `num_workers`) on the tiny SOLI, and the pieces of the training-throughput benchmark."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import step_records, stop_after_step, tiny_recipe, write_caption_folder

import soli_hf.training.loop as loop
from soli_hf.bench import training_speed
from soli_hf.data import load_caption_dataset
from soli_hf.training import parse_training_config, train
from soli_hf.training.data import CaptionBatchCollator, CaptionImageDataset, DegradationPolicy
from soli_hf.training.ema import EMA, RAW, exponential_moving_average, metrics_of, selected_weights


def final_checkpoint(output_dir: Path) -> Path:
    """The newest checkpoint folder of a run."""
    return sorted((output_dir / "checkpoints").iterdir())[-1]


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change: start and leave it empty, so
    that a bf16 run and the full-precision runs of other tests share a session."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """16 training images (4 batches of 4) and 4 dev images."""
    return write_caption_folder(tmp_path / "data", {"train": 16, "dev": 4})


# ------------------------------------------------------------------------------------------------ EMA


def test_ema_update_math_on_a_hand_made_case() -> None:
    model = torch.nn.BatchNorm1d(2)  # a weight, a bias and buffers (running statistics, a batch counter)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0]))
    ema = exponential_moving_average(model, decay=0.75)
    ema.update_parameters(model)  # the first update copies
    assert torch.equal(ema.module.weight, torch.tensor([1.0, 2.0]))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([5.0, -2.0]))
        model.running_mean.copy_(torch.tensor([3.0, 4.0]))
        model.num_batches_tracked.fill_(7)
    ema.update_parameters(model)
    # 0.75 * old + 0.25 * new
    assert torch.allclose(ema.module.weight, torch.tensor([2.0, 1.0]))
    assert torch.allclose(ema.module.bias, torch.zeros(2))
    assert torch.equal(ema.module.running_mean, torch.tensor([3.0, 4.0]))  # buffers copied, not averaged
    assert int(ema.module.num_batches_tracked) == 7


def test_selected_weights_prefers_the_better_and_keeps_the_trained_on_a_tie() -> None:
    assert selected_weights({"CIDEr": 0.3}, "CIDEr") == (RAW, 0.3)
    assert selected_weights({"CIDEr": 0.3, "ema/CIDEr": 0.3}, "CIDEr") == (RAW, 0.3)
    assert selected_weights({"CIDEr": 0.3, "ema/CIDEr": 0.4}, "CIDEr") == (EMA, 0.4)
    entry = {"CIDEr": 0.3, "val_loss": 2.0, "ema/CIDEr": 0.4, "ema/val_loss": 1.9, "epoch": 2}
    assert metrics_of(entry, EMA) == {"CIDEr": 0.4, "val_loss": 1.9, "epoch": 2}
    assert metrics_of(entry, RAW) == {"CIDEr": 0.3, "val_loss": 2.0, "epoch": 2}


def test_ema_never_changes_training_and_off_leaves_the_run_as_it_was(tmp_path, tiny_data, tiny_model_config):
    """The EMA only watches: the same step losses and trained-weight metrics with and without it; without it the
    checkpoints, the run folder and the selection are those of a run before EMA existed."""
    plain = train(tiny_recipe(tiny_data, tiny_model_config, tmp_path / "plain")).parent
    averaged = train(tiny_recipe(tiny_data, tiny_model_config, tmp_path / "ema", ema_decay=0.5)).parent
    losses = ("loss", "caption_loss", "contrastive_loss", "sr_loss", "lr")
    for with_ema, without in zip(step_records(averaged), step_records(plain), strict=True):
        assert {key: with_ema[key] for key in losses} == {key: without[key] for key in losses}
    plain_metrics = json.loads((plain / "model" / "metrics.json").read_text())
    ema_metrics = json.loads((averaged / "model" / "metrics.json").read_text())
    for with_ema, without in zip(ema_metrics["history"], plain_metrics["history"], strict=True):
        assert with_ema["val_loss"] == without["val_loss"] and with_ema["CIDEr"] == without["CIDEr"]
        assert "ema/val_loss" in with_ema and not any(key.startswith("ema/") for key in without)
    assert plain_metrics["best_weights"] == RAW
    assert not (plain / "model_ema").exists() and (averaged / "model_ema" / "model.safetensors").is_file()
    assert not (final_checkpoint(plain) / "custom_checkpoint_1.pkl").exists()  # the scheduler's is _0
    assert (final_checkpoint(averaged) / "custom_checkpoint_1.pkl").is_file()


def test_model_folder_holds_the_better_weights(tmp_path, tiny_data, tiny_model_config, monkeypatch) -> None:
    """When the EMA scores higher, `model/` holds the EMA's weights and says so."""
    real_evaluate = loop.evaluate_epoch

    def ema_wins(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        return metrics | {"CIDEr": 0.1, "ema/CIDEr": 0.2}

    monkeypatch.setattr(loop, "evaluate_epoch", ema_wins)
    model_dir = train(tiny_recipe(tiny_data, tiny_model_config, tmp_path / "run", num_epochs=1, ema_decay=0.5))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["best_weights"] == EMA
    assert (model_dir / "model.safetensors").read_bytes() == (
        model_dir.parent / "model_ema" / "model.safetensors"
    ).read_bytes()


def test_resume_continues_the_ema_exactly(tmp_path, tiny_data, tiny_model_config, monkeypatch) -> None:
    """A run stopped mid-epoch 2 and resumed ends with the EMA weights of an unbroken run."""
    whole = tmp_path / "whole"
    train(tiny_recipe(tiny_data, tiny_model_config, whole, ema_decay=0.8))

    stopped = tmp_path / "stopped"
    # stopped after the checkpoint of step 4 (epoch end) and before the one of step 6
    stop_after_step(monkeypatch, 6, lambda: train(tiny_recipe(tiny_data, tiny_model_config, stopped, ema_decay=0.8)))
    assert final_checkpoint(stopped).name == "step-00000006"
    train(tiny_recipe(tiny_data, tiny_model_config, stopped, ema_decay=0.8, resume=True))

    expected = torch.load(final_checkpoint(whole) / "custom_checkpoint_1.pkl")
    got = torch.load(final_checkpoint(stopped) / "custom_checkpoint_1.pkl")
    assert final_checkpoint(stopped).name == final_checkpoint(whole).name == "step-00000008"
    assert int(got["n_averaged"]) == int(expected["n_averaged"]) == 8
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.allclose(got[name].float(), tensor.float(), atol=1e-6), name


# ------------------------------------------------------------------------------------------- speed


def test_channels_last_run_finishes_with_finite_losses(tmp_path, tiny_data, tiny_model_config) -> None:
    output_dir = tmp_path / "run"
    train(tiny_recipe(tiny_data, tiny_model_config, output_dir, num_epochs=1, channels_last=True))
    records = step_records(output_dir)
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(record["loss"])) for record in records)
    assert all(record["images_per_second"] > 0 for record in records)


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_autocasts_on_cpu_and_keeps_the_losses_in_float32(tmp_path, tiny_data, tiny_model, processor) -> None:
    """accelerate's CPU path autocasts the forward in bf16; the losses come out in float32."""
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = accelerator.prepare(tiny_model.train())
    dataset = CaptionImageDataset(load_caption_dataset(tiny_data), processor, None, True, 2, 0, "skip")
    batch = CaptionBatchCollator(processor, 8)([dataset[index] for index in range(4)])
    output_dtypes = []
    model.decoder.register_forward_hook(lambda module, args, output: output_dtypes.append(output[0].dtype))
    config = tiny_recipe(tiny_data, Path("unused.json"), tmp_path / "unused", mixed_precision="bf16")
    with accelerator.autocast():
        loss, parts = loop.training_loss(model, batch, {"curriculum_alpha": 1.0}, config, processor, None)
    assert output_dtypes == [torch.bfloat16]
    assert loss.dtype == torch.float32 and all(map(torch.isfinite, map(torch.tensor, parts.values())))


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_channels_last_ema_run_finishes(tmp_path, tiny_data, tiny_model_config) -> None:
    output_dir = tmp_path / "run"
    config = tiny_recipe(
        tiny_data, tiny_model_config, output_dir, mixed_precision="bf16", channels_last=True, ema_decay=0.5
    )
    metrics = json.loads((train(config) / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in step_records(output_dir))
    assert all(torch.isfinite(torch.tensor([e["val_loss"], e["ema/val_loss"]])).all() for e in metrics["history"])


def test_two_workers_give_the_batches_of_none(tmp_path, tiny_data, processor) -> None:
    """Every epoch's batches (order, degradations, caption picks) are the same with 2 loading processes."""
    rows = load_caption_dataset(tiny_data)
    dataset = CaptionImageDataset(
        rows, processor, DegradationPolicy(["bicubic", "step"], [0.5, 1.5], [40, 95], 0.5, 1.0), True, 2, 0, "skip"
    )
    collator = CaptionBatchCollator(processor, 8)

    def epoch_batches(num_workers: int, epoch: int) -> list[dict]:
        loader = loop.training_loader(
            dataset, collator, tiny_recipe(tiny_data, Path("x"), Path("y"), num_workers=num_workers)
        )
        dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        return list(loader)

    for epoch in (0, 1):
        for in_workers, in_process in zip(epoch_batches(2, epoch), epoch_batches(0, epoch), strict=True):
            assert in_workers["image_ids"] == in_process["image_ids"]
            for name in ("pixel_values", "hr_pixel_values", "input_ids"):
                assert torch.equal(in_workers[name], in_process[name]), (epoch, name)
    assert not torch.equal(epoch_batches(0, 0)[0]["pixel_values"], epoch_batches(0, 1)[0]["pixel_values"])


def test_compile_unavailable_falls_back_with_a_message(tiny_model, monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert not loop.compile_encoder(tiny_model)
    assert "does not support torch.compile" in caplog.text and "without compiling" in caplog.text
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "no-such-compiler++")
    assert "'no-such-compiler++' is not installed" in loop.compile_unavailable_reason(torch.device("cpu"))
    assert loop.compile_unavailable_reason(torch.device("cuda")) is None  # GPU kernels need no C++ compiler


@pytest.mark.slow
def test_compiled_encoder_run_finishes(tmp_path, tiny_data, tiny_model_config) -> None:
    """torch.compile of the tiny encoder (minutes on a 2-core CPU: the compile itself)."""
    output_dir = tmp_path / "run"
    train(tiny_recipe(tiny_data, tiny_model_config, output_dir, num_epochs=1, torch_compile=True, ema_decay=0.5))
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in step_records(output_dir))


# ------------------------------------------------------------------------------ the throughput benchmark


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t\t: fpu sse avx512f avx512_bf16\nflags\t\t: ignored amx_tile\n")
    assert training_speed.cpu_flags(cpuinfo) == {
        "avx512f": True,
        "avx512_bf16": True,
        "amx_tile": False,
        "amx_bf16": False,
    }
    assert not any(training_speed.cpu_flags(tmp_path / "absent").values())


def test_run_flags_parse_as_the_recipe_with_the_setting(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[1] / "configs" / "flickr8k_cpu.yaml"
    overrides = training_speed.SETTINGS["bf16+channels_last"]
    config = parse_training_config(training_speed.run_flags(recipe, overrides, tmp_path / "run", 320, 50))
    assert (config.mixed_precision, config.channels_last, config.num_epochs) == ("bf16", True, 1)
    assert (config.max_train_images, config.max_eval_images, config.report_to) == (320, 50, "none")
    assert config.batch_size == 32 and config.backbone == "../shared/weights/mobilenet_v2_1.0_224"  # the recipe's


def test_step_throughput_is_the_median_after_the_warm_up() -> None:
    records = [{"images_per_second": speed} for speed in (1.0, 2.0, 30.0, 10.0, 20.0)]
    assert training_speed.step_throughput(records, 2) == (20.0, 3)
    with pytest.raises(ValueError, match="none after 5 warm-up steps"):
        training_speed.step_throughput(records, 5)


def test_report_table_and_bf16_quality_check() -> None:
    settings = {
        "fp32": {"images_per_second": 10.0, "steps_measured": 7, "peak_rss_mib": 3000.0, "dev_loss": 4.0},
        "bf16": {"images_per_second": 15.0, "steps_measured": 7, "peak_rss_mib": 2500.0, "dev_loss": 4.04},
        "compile": {"error": "RuntimeError: no compiler"},
    }
    quality = training_speed.bf16_quality(settings)
    assert quality["relative_difference"] == pytest.approx(0.01) and quality["within_tolerance"]
    assert not training_speed.bf16_quality(settings | {"bf16": settings["bf16"] | {"dev_loss": 5.0}})[
        "within_tolerance"
    ]
    assert training_speed.bf16_quality({"fp32": settings["fp32"]}) is None
    report = {
        "machine": {"cpu_model": "Some CPU", "cpus": 2},
        "cpu_flags": {"avx512_bf16": True},
        "libraries": {"torch": "2.x"},
        "recipe": "configs/flickr8k_cpu.yaml",
        "max_train_images": 320,
        "max_eval_images": 50,
        "warmup_steps": 3,
        "settings": settings,
        "bf16_quality": quality,
    }
    text = training_speed.training_speed_markdown(report)
    assert "| bf16 | 15.0 | 1.50x | 2500 | 4.0400 | median of 7 steps |" in text
    assert "| compile | failed |" in text and "RuntimeError: no compiler" in text
    assert "relative difference of 1.00%, within the 2% tolerance" in text
