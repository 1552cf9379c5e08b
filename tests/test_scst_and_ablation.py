"""Issue 15, caption quality: SCST never decodes `<unk>`, the ablation recipes are valid training recipes, and the
ablation table is written from finished run folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_caption_folder

from soli_hf.bench.quality_ablation import run_recipe, write_quality_ablation
from soli_hf.data import load_caption_dataset
from soli_hf.training.config import parse_training_config
from soli_hf.training.ema import EMA, RAW
from soli_hf.training.scst import build_reward_scorer, decode, reference_token_ids, training_rewards

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("sample", [True, False], ids=["sampled", "greedy"])
def test_scst_decode_never_picks_a_suppressed_token(tiny_model, tokenizer, processor, images, sample) -> None:
    unk = tokenizer.unk_token_id
    tiny_model.generation_config.suppress_tokens = [unk]
    with torch.no_grad():
        tiny_model.decoder.lm_head.bias[unk] = 1e4  # without the suppression every token would be <unk>
        encoded = tiny_model.get_encoder()(processor(images=images[:2], return_tensors="pt")["pixel_values"])
        torch.manual_seed(0)
        captions = decode(tiny_model, encoded, 4, 6, sample=sample)
    assert not (captions.token_ids == unk).any()
    assert torch.isfinite(captions.log_probs).all()


def test_scst_decode_without_suppressed_tokens_can_pick_unk(tiny_model, tokenizer, processor, images) -> None:
    """The check above is not vacuous: with nothing suppressed, the huge bias makes every token `<unk>`."""
    unk = tokenizer.unk_token_id
    tiny_model.generation_config.suppress_tokens = None
    with torch.no_grad():
        tiny_model.decoder.lm_head.bias[unk] = 1e4
        encoded = tiny_model.get_encoder()(processor(images=images[:1], return_tensors="pt")["pixel_values"])
        captions = decode(tiny_model, encoded, 1, 3, sample=False)
    assert (captions.token_ids == unk).all()


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda path: str(path.relative_to(CONFIGS)))
def test_every_recipe_parses_into_a_valid_training_config(recipe: Path) -> None:
    config = parse_training_config(["--config", str(recipe)])
    if recipe.parent.name == "ablation":
        assert config.output_dir == f"runs/ablation/{recipe.stem}"
        schedule = 20 if recipe.stem == "soli_20ep" else 12  # lever 3 stretches the schedule
        assert (config.mixed_precision, config.channels_last, config.num_epochs) == ("bf16", True, schedule)
        assert config.early_stopping_patience == 4
    if recipe.parent.name == "scst":  # self-critical fine-tuning of an ablation row's best model
        assert config.phase == "scst" and config.init_from == f"runs/ablation/{recipe.stem}/model"
        assert config.output_dir.startswith(f"runs/ablation/{recipe.stem}_scst")


def test_ablation_rows_differ_from_the_shared_recipe_only_in_their_lever() -> None:
    cpu_recipe = parse_training_config(["--config", str(CONFIGS / "flickr8k_cpu.yaml")]).to_dict()
    base = parse_training_config(["--config", str(CONFIGS / "ablation" / "soli.yaml")]).to_dict()
    shared = {
        "mixed_precision": "bf16",
        "channels_last": True,
        "ema_decay": 0.998,
        "num_epochs": 12,
        "early_stopping_patience": 4,
    }
    assert {key: value for key, value in base.items() if value != cpu_recipe[key] and key != "output_dir"} == shared
    levers = {
        "baseline": {"model_variant": "baseline"},
        "baseline_bicubic2x": {"model_variant": "baseline", "lr_branch_upsample": 2},
        "soli_bicubic_b": {"branch_b_input": "bicubic"},
        "soli_no_contrastive": {"contrastive_weight": 0.0},
        "soli": {},
        "soli_distill": {"distillation_weight": 1.0},
        "soli_tags": {"num_tags": 300},
        "soli_label_smoothing": {"label_smoothing": 0.1},
        "soli_augment": {"flip_probability": 0.5, "min_crop_area": 0.7},
        "soli_lr_only": {"lr_only_probability": 0.25},  # the "lr" inference mode trained too
        "soli_frozen_backbone": {"freeze_backbone_epochs": 12},
        "soli_xe5000": {"train_split": "train[:5000]"},  # 1,000 training photos held out for SCST
        "soli_20ep": {"num_epochs": 20},  # the schedule stretched
        "soli_hidden256": {"hidden_size": 256},  # a decoder half as wide (issue 16: bytes read per token)
        "soli_dropout": {"decoder_dropout": 0.5},  # against the overfitting soli_20ep shows
        "soli_embedding512": {"embedding_size": 512},  # word embeddings twice as wide
        "soli_scheduled_sampling": {  # the decoder goes on from its own words (exposure bias)
            "scheduled_sampling_probability": 0.25,
            "scheduled_sampling_start_epoch": 1.0,
            "scheduled_sampling_epochs": 4.0,
        },
    }
    assert {path.stem for path in (CONFIGS / "ablation").glob("*.yaml")} == set(levers)
    for name, lever in levers.items():
        config = parse_training_config(["--config", str(CONFIGS / "ablation" / f"{name}.yaml")]).to_dict()
        # where a run goes and how far a launch goes (a budget of the same schedule) are not levers
        differences = {
            key: value
            for key, value in config.items()
            if value != base[key] and key not in ("output_dir", "stop_after_epochs")
        }
        assert differences == lever, name
        assert config["stop_after_epochs"] in (None, 6), name  # the part rows compare at epoch 6 of 12


def write_fake_run(
    root: Path, name: str, ciders: list[float], seconds: float = 60.0, ema_ciders: list[float] | None = None
) -> Path:
    """A run folder as scripts/train.py leaves it: the recipe and `model/metrics.json`, best epoch = best CIDEr
    (of the trained weights, or of their EMA when `ema_ciders` are given and beat them)."""
    run = root / name
    (run / "model").mkdir(parents=True)
    history = [
        {
            "epoch": epoch,
            "CIDEr": cider,
            "Bleu_4": cider / 4,
            "val_loss": 3.0 - cider,
            "train_images_per_second": 20.0,
            "peak_memory_mb": 900.0,
            "train_seconds": seconds,
            "eval_seconds": seconds / 6,
            "distinct_captions": 0.5 + cider,
        }
        for epoch, cider in enumerate(ciders, start=1)
    ]
    scores = [(cider, RAW) for cider in ciders]
    if ema_ciders is not None:
        for entry, cider in zip(history, ema_ciders, strict=True):
            entry |= {"ema/CIDEr": cider, "ema/Bleu_4": cider / 4, "ema/distinct_captions": 0.5 + cider}
        scores = [max((raw, RAW), (ema, EMA)) for raw, ema in zip(ciders, ema_ciders, strict=True)]
    best_epoch = max(range(len(scores)), key=lambda index: scores[index][0]) + 1
    metrics = {
        "history": history,
        "best": history[best_epoch - 1],
        "best_epoch": best_epoch,
        "best_weights": scores[best_epoch - 1][1],
    }
    (run / "model" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    config = {"model_variant": "baseline" if name == "baseline" else "soli", "phase": "xe"}
    (run / "training_config.json").write_text(json.dumps(config), encoding="utf-8")
    return run


def write_fake_evaluation(folder: Path, cider: float) -> Path:
    """A `soli evaluate` output folder: `metrics.json` with the metrics of one model."""
    folder.mkdir(parents=True)
    results = {"results": [{"model": "m", "metrics": {"CIDEr": cider, "Bleu_4": 0.2, "distinct_captions": 0.8}}]}
    (folder / "metrics.json").write_text(json.dumps(results), encoding="utf-8")
    return folder


def test_quality_ablation_table_and_plot(tmp_path: Path) -> None:
    baseline = write_fake_run(tmp_path / "runs", "baseline", [0.2, 0.3, 0.25])
    soli = write_fake_run(tmp_path / "runs", "soli", [0.3, 0.4], seconds=120.0, ema_ciders=[0.2, 0.42])
    beam = write_fake_evaluation(tmp_path / "eval" / "soli", 0.45)
    out = tmp_path / "benchmarks" / "quality_ablation.json"

    results = write_quality_ablation([baseline, soli], {soli: beam}, out)

    rows = {row["name"]: row for row in results["runs"]}
    assert rows["baseline"]["best_epoch"] == 2 and rows["baseline"]["cider_beam3"] is None
    assert rows["baseline"]["recipe"] == "configs/ablation/baseline.yaml"
    assert rows["baseline"]["cider_greedy_ema"] is None and rows["baseline"]["ema_cider_per_epoch"] == []
    # soli: the trained weights peak at 0.40, their EMA at 0.42, which earns epoch 2 (the saved model: beam 0.45)
    soli_row = rows["soli"]
    assert soli_row["cider_greedy"] == pytest.approx(0.4) and soli_row["cider_greedy_ema"] == pytest.approx(0.42)
    assert rows["soli"]["best_weights"] == "ema" and rows["soli"]["cider_beam3"] == pytest.approx(0.45)
    assert rows["soli"]["bleu4"] == pytest.approx(0.42 / 4)  # the selected (EMA) weights' BLEU-4
    assert rows["soli"]["distinct_greedy"] == pytest.approx(0.92) and rows["soli"]["distinct_beam3"] == 0.8
    assert rows["soli"]["wall_minutes"] == pytest.approx(2 * 140 / 60)
    assert json.loads(out.read_text(encoding="utf-8")) == results
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    baseline_cells = "| 2/3 | 0.3000 | - | - | - | 0.0750 / - | 80.0% / - | 3.5 |"
    assert f"| baseline | configs/ablation/baseline.yaml {baseline_cells}" in table
    assert (
        "| soli | configs/ablation/soli.yaml | 2/2 (EMA) | 0.4000 | 0.4200 | 0.4500 | - "
        "| 0.1050 / 0.2000 | 92.0% / 80.0% |" in table
    )
    assert out.with_suffix(".png").stat().st_size > 0


def test_quality_ablation_keeps_the_rows_of_runs_recorded_elsewhere(tmp_path: Path) -> None:
    """Run folders from another machine are gone: their recorded rows stay, a run given again replaces its own row in
    place, and a new run comes last; the per-epoch table compares rows that stopped early at a common epoch."""
    out = tmp_path / "quality_ablation.json"
    baseline = write_fake_run(tmp_path / "elsewhere", "baseline", [0.2, 0.3, 0.25])
    soli = write_fake_run(tmp_path / "elsewhere", "soli", [0.3, 0.4, 0.45])
    write_quality_ablation([baseline, soli], {}, out)
    shutil.rmtree(tmp_path / "elsewhere")

    soli_again = write_fake_run(tmp_path / "here", "soli", [0.31, 0.41, 0.46])
    early = write_fake_run(tmp_path / "here", "soli_no_contrastive", [0.29])
    rows = write_quality_ablation([early, soli_again], {}, out)["runs"]

    assert [row["name"] for row in rows] == ["baseline", "soli", "soli_no_contrastive"]
    assert rows[0]["cider_greedy"] == pytest.approx(0.3) and rows[1]["cider_greedy"] == pytest.approx(0.46)
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| run | 1 | 2 | 3 |" in table
    assert "| soli_no_contrastive | 0.290 | - | - |" in table and "| baseline | 0.200 | 0.300 | 0.250 |" in table


def test_a_fine_tuning_run_counts_its_epochs_after_its_starting_models(tmp_path: Path) -> None:
    soli = write_fake_run(tmp_path / "runs", "soli", [0.3, 0.4, 0.35])  # best epoch 2: the model SCST starts from
    scst = write_fake_run(tmp_path / "runs", "soli_scst_probe", [0.38, 0.41])
    config = json.loads((scst / "training_config.json").read_text(encoding="utf-8"))
    config |= {"phase": "scst", "init_from": str(soli / "model")}
    (scst / "training_config.json").write_text(json.dumps(config), encoding="utf-8")

    rows = {row["name"]: row for row in write_quality_ablation([soli, scst], {}, tmp_path / "out.json")["runs"]}

    assert rows["soli"]["first_epoch"] == 1 and rows["soli"]["cider_per_epoch"][0] == [1, 0.3]
    assert rows["soli_scst_probe"]["first_epoch"] == 3
    assert rows["soli_scst_probe"]["cider_per_epoch"] == [[3, 0.38], [4, 0.41]]


def test_quality_ablation_finds_each_runs_model_in_an_evaluation_of_several(tmp_path: Path) -> None:
    """One `soli evaluate --inference-branches lr` of two runs' models gives each run its own row's "lr" figure."""
    soli = write_fake_run(tmp_path / "runs", "soli", [0.3, 0.4])
    distill = write_fake_run(tmp_path / "runs", "soli_distill", [0.3, 0.39])
    folder = tmp_path / "eval" / "lr"
    folder.mkdir(parents=True)
    models = [{"model": f"{run.name}/model [lr]", "source": str(run / "model")} for run in (soli, distill)]
    results = [
        {"model": model["model"], "metrics": {"CIDEr": cider, "Bleu_4": 0.15}}
        for model, cider in zip(models, (0.34, 0.37), strict=True)
    ]
    (folder / "metrics.json").write_text(json.dumps({"settings": {"models": models}, "results": results}), "utf-8")

    rows = write_quality_ablation([soli, distill], {}, tmp_path / "out.json", {soli: folder, distill: folder})["runs"]

    assert [row["cider_beam3_lr"] for row in rows] == [0.34, 0.37]
    assert [row["cider_beam3"] for row in rows] == [None, None]
    assert "| 0.3700 |" in (tmp_path / "out.md").read_text(encoding="utf-8")
    other = write_fake_run(tmp_path / "runs", "soli_tags", [0.3])
    with pytest.raises(ValueError, match="not .*soli_tags/model"):
        write_quality_ablation([other], {}, tmp_path / "out.json", {other: folder})


def test_quality_ablation_refuses_a_beam_evaluation_of_an_unknown_run(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path, "soli", [0.3])
    beam = write_fake_evaluation(tmp_path / "eval", 0.4)
    with pytest.raises(ValueError, match="not among the runs"):
        write_quality_ablation([run], {tmp_path / "other": beam}, tmp_path / "out.json")


def test_benchmark_ablation_subcommand(tmp_path: Path) -> None:
    baseline = write_fake_run(tmp_path, "baseline", [0.2, 0.3])
    soli = write_fake_run(tmp_path, "soli", [0.3, 0.4])
    beam = write_fake_evaluation(tmp_path / "eval", 0.45)
    out = tmp_path / "ablation.json"
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "ablation", str(baseline), str(soli)]
    command += ["--beam-evaluations", f"{soli}={beam}", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| soli | configs/ablation/soli.yaml | 2/2 | 0.4000 | - | 0.4500 |" in result.stdout
    assert [row["cider_beam3"] for row in json.loads(out.read_text(encoding="utf-8"))["runs"]] == [None, 0.45]


def test_a_probe_run_names_the_recipe_it_was_launched_from_and_its_flags(tmp_path: Path) -> None:
    recipe = CONFIGS / "ablation" / "scst" / "soli.yaml"
    argv = ["--config", str(recipe), "--learning_rate", "0.0005", "--output_dir", str(tmp_path / "soli_scst_probe")]
    run = tmp_path / "soli_scst_probe"
    run.mkdir()
    (run / "training_config.json").write_text(json.dumps(parse_training_config(argv).to_dict()), encoding="utf-8")
    assert run_recipe(run, CONFIGS / "ablation") == "configs/ablation/scst/soli.yaml --learning_rate 0.0005"
    assert run_recipe(tmp_path / "soli", CONFIGS / "ablation") == "configs/ablation/soli.yaml"  # a row's own run


def test_training_rewards_of_a_model_that_always_ends_at_once(tiny_model, tokenizer, processor, tmp_path) -> None:
    """Greedy and sampled captions are both the bare `<eos>` when its logit dwarfs the others: the two rewards are
    the same, and they are the CIDEr-D of that one-word caption (not 0: `<eos>` ends every reference too)."""
    rows = load_caption_dataset(str(write_caption_folder(tmp_path, {"train": 4})), "train")
    scorer = build_reward_scorer(rows["captions"], tokenizer)
    with torch.no_grad():
        tiny_model.decoder.lm_head.bias[tokenizer.eos_token_id] = 1e4
    torch.manual_seed(0)

    rewards = training_rewards(tiny_model, processor, rows, scorer, num_samples=3, max_new_tokens=5, batch_size=3)

    eos_only = [(tokenizer.eos_token_id,)] * len(rows)
    expected = scorer.score_batch(eos_only, [reference_token_ids(refs, tokenizer) for refs in rows["captions"]])
    assert rewards["images"] == 4 and rewards["greedy_length"] == 1.0
    assert rewards["greedy_reward"] == pytest.approx(rewards["sample_reward"])
    assert rewards["greedy_reward"] == pytest.approx(float(np.mean(expected)))
