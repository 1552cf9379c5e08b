"""Evaluation reports: LR conditions agree with the processor, the report files, leave-one-out scores, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_caption_folder
from PIL import Image

from soli_hf import SoliForConditionalGeneration, SoliProcessor
from soli_hf.captioner import PytorchCaptioner
from soli_hf.cli import main as soli_main
from soli_hf.data import load_caption_dataset_with_report
from soli_hf.evaluation import (
    ConditionResult,
    LowResCondition,
    caption_agreement,
    fixed_sizes,
    paper_protocol,
    run_evaluation,
    runner,
)
from soli_hf.image_transforms_soli import make_low_resolution
from soli_hf.metrics import compute_caption_metrics, leave_one_out_human_scores, leave_one_out_model_scores


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (224, 200, 3), dtype=np.uint8))


def test_paper_protocol_is_four_scales_times_three_degradations() -> None:
    names = [condition.name for condition in paper_protocol()]
    assert len(names) == len(set(names)) == 12
    assert "bilinear@0.5" in names and "step_gaussian@0.05" in names
    assert [c.name for c in fixed_sizes([16, 64])] == ["bicubic@16px", "bicubic@64px"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"degradation": "nearest"}, "degradation"),
        ({"scale_factor": 0.5, "size": 32}, "not both"),
        ({"size": 0}, "size"),
    ],
)
def test_bad_conditions_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        LowResCondition(**kwargs)


@pytest.fixture
def preprocessing(tiny_model, processor) -> dict:
    """A captioner's preprocessing settings (what `LowResCondition.lr_image` reads)."""
    return PytorchCaptioner(tiny_model, processor).preprocessing


def test_paper_condition_gives_the_processors_pixels(photo, processor, preprocessing) -> None:
    """The sweep's LR input is exactly what SoliImageProcessor makes with the same scale factor and degradation."""
    image_processor = processor.image_processor
    for condition in (LowResCondition("step_gaussian", 0.1), LowResCondition("bilinear", 0.5), LowResCondition()):
        ours = image_processor(condition.lr_image(photo, preprocessing), return_tensors="np")["pixel_values"]
        kwargs = {"scale_factor": condition.scale_factor, "degradation": condition.degradation}
        theirs = image_processor(photo, return_tensors="np", **kwargs)["pixel_values"]
        np.testing.assert_array_equal(ours, theirs)


def test_fixed_size_keeps_only_that_many_pixels(photo, processor, preprocessing) -> None:
    image_processor = processor.image_processor
    lr = LowResCondition(size=16).lr_image(photo, preprocessing)
    assert lr.size == (image_processor.image_size,) * 2
    small = make_low_resolution(photo.convert("RGB"), 16, "bicubic", None, image_processor.blur_sigma)
    expected = small.resize(lr.size, Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(lr), np.asarray(expected))
    assert not np.array_equal(np.asarray(lr), np.asarray(LowResCondition(size=32).lr_image(photo, preprocessing)))


def test_leave_one_out_model_scores_average_the_folds() -> None:
    references = {"a": ["a dog runs", "a brown dog runs fast", "dog running"], "b": ["a cat", "the cat sleeps", "cat"]}
    predictions = {"a": "a dog runs fast", "b": "a cat sleeps"}
    without = [{i: [r for k, r in enumerate(refs) if k != j] for i, refs in references.items()} for j in range(3)]
    folds = [compute_caption_metrics(predictions, fold, meteor=False) for fold in without]
    scores = leave_one_out_model_scores(predictions, references, meteor=False)
    assert scores["CIDEr"] == pytest.approx(np.mean([fold["CIDEr"] for fold in folds]), abs=1e-12)
    human = leave_one_out_human_scores(references, meteor=False)
    assert set(scores) == set(human)
    with pytest.raises(ValueError, match="'c'"):
        leave_one_out_model_scores({"a": "x", "c": "y"}, references, meteor=False)


def test_report_of_two_models_over_sizes(tmp_path: Path, saved_tiny_model: Path) -> None:
    data = write_caption_folder(tmp_path / "data", {"dev": 5})
    second = tmp_path / "other" / "model"
    SoliForConditionalGeneration.from_pretrained(saved_tiny_model).save_pretrained(second)
    SoliProcessor.from_pretrained(saved_tiny_model).save_pretrained(second)
    conditions = [LowResCondition(), *fixed_sizes([16, 32])]
    out = tmp_path / "report"
    results = run_evaluation(
        [saved_tiny_model, second],
        data,
        "dev",
        out,
        conditions=conditions,
        num_beams=2,
        batch_size=2,
        max_new_tokens=6,
        meteor=False,
    )
    assert len(results) == 6 and {len(r.predictions) for r in results} == {5}

    summary = json.loads((out / "metrics.json").read_text())
    assert {"Bleu_4", "ROUGE_L", "CIDEr"} <= set(summary["human_leave_one_out"])
    for result in results:  # the share of distinct captions is that of the captions the result holds
        distinct = len(set(result.predictions.values())) / len(result.predictions)
        assert result.metrics["distinct_captions"] == pytest.approx(distinct)
    assert [r["condition"]["name"] for r in summary["results"][:3]] == ["bicubic@input", "bicubic@16px", "bicubic@32px"]
    assert len({r["model"] for r in summary["results"]}) == 2
    captions = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 30

    # the captions are generate()'s on the LR input of the condition (beam 2 here)
    model = SoliForConditionalGeneration.from_pretrained(saved_tiny_model).eval()
    processor = SoliProcessor.from_pretrained(saved_tiny_model)
    photo = Image.open(data / "dev" / "dev3.png")
    lr = LowResCondition(size=16).lr_image(photo, PytorchCaptioner(model, processor).preprocessing)
    generated = model.generate(**processor.image_processor(lr, return_tensors="pt"), num_beams=2, max_new_tokens=6)
    expected = processor.batch_decode(generated, skip_special_tokens=True)[0]
    got = [c["caption"] for c in captions if c["image_id"] == "dev3" and c["condition"] == "bicubic@16px"]
    assert got[0] == expected

    page = (out / "samples.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 5 and "dev3" in page and "one red square" in page
    # the settings each model ran with, and how many captions the second shares with the first (same weights: all)
    records = summary["settings"]["models"]
    assert [(r["backend"], r["num_beams"], r["max_new_tokens"], r["quantization"]) for r in records] == [
        ("pytorch", 2, 6, None)
    ] * 2
    assert summary["settings"]["num_beams"] == 2 and summary["settings"]["inference_branches"] == "both"
    agreement = summary["caption_agreement"]
    assert [(a["model"], a["first_model"], a["identical"], a["compared"]) for a in agreement] == [
        (records[1]["model"], records[0]["model"], 5, 5)
    ] * 3
    report = (out / "report.md").read_text()
    assert f"## Caption agreement with the first model ({records[0]['model']})" in report and "5/5 (100.0%)" in report
    assert "people (each reference vs the others)" in report and "sweep_sizes.png" in report
    assert "| distinct captions | words used |" in report
    assert (out / "sweep_sizes.png").stat().st_size > 0 and not (out / "sweep_paper.png").exists()


def test_cli_names_the_bad_model_folder(tmp_path: Path, capsys) -> None:
    data = write_caption_folder(tmp_path / "data", {"dev": 2})
    out = str(tmp_path / "report")
    code = soli_main(["evaluate", "--model", str(tmp_path / "nowhere"), "--data", str(data), "--out", out])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        soli_main(["evaluate", "--model", "m", "--data", str(data), "--out", "r", "--sizes", "16,big"])
    assert "--sizes" in capsys.readouterr().err


def test_report_counts_the_samples_skipped_while_loading_and_captioning(
    tmp_path: Path, saved_tiny_model: Path, monkeypatch
) -> None:
    data = write_caption_folder(tmp_path / "data", {"dev": 4})
    (data / "dev" / "dev1.png").unlink()  # skipped while loading: missing_image
    with (data / "dev" / "metadata.jsonl").open("a", encoding="utf-8") as metadata:
        metadata.write("{not json\n")  # skipped while loading: malformed_entry

    def load_then_lose_dev2(*args, **kwargs):
        """The loader's result, after which dev2.png disappears: skipped while captioning."""
        loaded = load_caption_dataset_with_report(*args, **kwargs)
        (data / "dev" / "dev2.png").unlink()
        return loaded

    monkeypatch.setattr(runner, "load_caption_dataset_with_report", load_then_lose_dev2)
    out = tmp_path / "report"
    (result,) = run_evaluation([saved_tiny_model], data, "dev", out, max_new_tokens=4, meteor=False)
    assert sorted(result.predictions) == ["dev0", "dev3"] and result.skipped_images == 1

    summary = json.loads((out / "metrics.json").read_text())
    skipped = summary["skipped_while_loading"]
    assert skipped["bad_samples"] == 2 and skipped["by_kind"] == {"malformed_entry": 1, "missing_image": 1}
    assert any("dev1.png" in message for message in skipped["first"])
    assert any("metadata.jsonl line 5" in message for message in skipped["first"])
    assert summary["results"][0]["skipped_images"] == 1
    report = (out / "report.md").read_text()
    assert "- while loading: 2 bad sample(s) (malformed_entry=1, missing_image=1); the first 2:" in report
    assert "dev1.png" in report and f"{result.model} bicubic@input: 1 unreadable image(s)" in report


def test_caption_agreement_counts_identical_captions_on_the_images_both_captioned() -> None:
    def result(model: str, condition: LowResCondition, predictions: dict[str, str], cider: float) -> ConditionResult:
        return ConditionResult(model, condition, predictions, {"CIDEr": cider}, {})

    small = LowResCondition(size=16)
    results = [
        result("fp32", LowResCondition(), {"a": "a dog", "b": "a cat", "c": "a bird"}, 0.5),
        result("fp32", small, {"a": "a dog", "b": "a cat"}, 0.4),
        result("int8", LowResCondition(), {"a": "a dog", "b": "the cat"}, 0.45),  # c unreadable for int8
        result("int8", small, {"a": "a dog", "b": "a cat"}, 0.4),
    ]
    agreement = caption_agreement(results)
    assert [(a["condition"], a["identical"], a["compared"], a["share"]) for a in agreement] == [
        ("bicubic@input", 1, 2, 0.5),
        ("bicubic@16px", 2, 2, 1.0),
    ]
    assert agreement[0]["first_model"] == "fp32" and agreement[0]["cider_d_drop"] == pytest.approx(0.05)
    assert caption_agreement(results[:2]) == []  # one model: nothing to compare


def test_evaluate_needs_a_model_or_an_onnx_folder(tmp_path: Path, capsys) -> None:
    assert soli_main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "give --model DIR [DIR ...] and/or --onnx DIR [DIR ...]" in capsys.readouterr().err


def test_an_interrupted_evaluation_resumes_with_the_captions_it_saved(
    tmp_path: Path, saved_tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while captioning its second condition, the evaluation is run again with `resume=True`: only that
    condition is captioned, the report equals an unbroken run's, and the saved captions are gone afterwards; a
    changed setting (beams) or no `resume` captions everything again."""
    import soli_hf.evaluation.runner as runner

    data = write_caption_folder(tmp_path / "data", {"dev": 4})
    conditions = [LowResCondition(), *fixed_sizes([16])]
    settings = {"conditions": conditions, "max_new_tokens": 5, "batch_size": 2, "meteor": False}
    unbroken = run_evaluation([saved_tiny_model], data, "dev", tmp_path / "unbroken", **settings)

    caption = runner.caption_dataset
    calls: list[str] = []

    def killed_at_second(captioner, rows, condition, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(condition.name)
        return caption(captioner, rows, condition, **kwargs)

    out = tmp_path / "report"
    monkeypatch.setattr(runner, "caption_dataset", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation([saved_tiny_model], data, "dev", out, **settings)
    assert len(list((out / ".partial").iterdir())) == 1

    def counted(captioner, rows, condition, **kwargs):
        calls.append(condition.name)
        return caption(captioner, rows, condition, **kwargs)

    monkeypatch.setattr(runner, "caption_dataset", counted)
    resumed = run_evaluation([saved_tiny_model], data, "dev", out, resume=True, **settings)
    assert calls == ["bicubic@input", "bicubic@16px"]  # the first condition came from the saved run
    assert [(r.predictions, r.metrics) for r in resumed] == [(r.predictions, r.metrics) for r in unbroken]
    assert resumed[0].lr_images.keys() == unbroken[0].lr_images.keys()  # the samples page keeps its inputs
    calls.clear()  # finished: a second --resume (e.g. to add a model or time latency) captions nothing again
    again = run_evaluation([saved_tiny_model], data, "dev", out, resume=True, **settings)
    assert calls == [] and [r.predictions for r in again] == [r.predictions for r in unbroken]

    calls.clear()
    monkeypatch.setattr(runner, "caption_dataset", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation([saved_tiny_model], data, "dev", out, **settings)
    monkeypatch.setattr(runner, "caption_dataset", counted)
    run_evaluation([saved_tiny_model], data, "dev", out, resume=True, **{**settings, "max_new_tokens": 4})
    assert calls == ["bicubic@input", "bicubic@input", "bicubic@16px"]  # another setting: the saved run not reused


def test_report_labels_name_a_training_runs_folder_and_stay_distinct() -> None:
    from soli_hf.evaluation.runner import model_labels

    dirs = ["runs/stage2/model", "runs/stage2_no_stage1/model", "models/soli-flickr8k-lr64"]
    dirs += ["a/run/model", "b/run/model"]
    assert model_labels(dirs, None) == [
        "stage2/model",
        "stage2_no_stage1/model",
        "soli-flickr8k-lr64",
        "a/run/model",
        "b/run/model",
    ]
    assert model_labels(["models/soli-flickr8k-lr64"], "lr") == ["soli-flickr8k-lr64 [lr]"]
