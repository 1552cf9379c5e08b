"""The model card is filled from the run's own files: every figure on it is one a report wrote."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import sample_report, write_caption_folder
from test_scst_and_ablation import write_fake_run

from soli_hf.bench.model_card import render_model_card
from soli_hf.bench.quality_ablation import write_quality_ablation
from soli_hf.evaluation import LowResCondition, run_evaluation

ROOT = Path(__file__).resolve().parents[1]


def test_card_from_template_recipe_and_reports(tmp_path: Path, saved_tiny_model: Path) -> None:
    data = write_caption_folder(tmp_path / "data", {"dev": 4})
    conditions = [LowResCondition(), LowResCondition("bilinear", 0.5), LowResCondition("step", 0.2)]
    run_evaluation([saved_tiny_model], data, "dev", tmp_path / "eval", conditions=conditions, meteor=False)
    recipe = ROOT / "configs" / "flickr8k_cpu.yaml"
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps(sample_report()))
    ablation = write_quality_ablation(
        [write_fake_run(tmp_path / "runs", "soli", [0.3, 0.4])], {}, tmp_path / "quality_ablation.json"
    )
    findings = tmp_path / "findings.md"
    findings.write_text("- **The contrastive loss pays.**\n")
    card = render_model_card(
        (ROOT / "model_cards" / "template.md").read_text(),
        saved_tiny_model,
        [tmp_path / "eval"],
        repo_id="someone/soli-tiny",
        recipe=recipe,
        training_command="accelerate launch scripts/train.py",
        evaluation_command="soli evaluate --model X",
        latency_benchmark=latency,
        ablation=tmp_path / "quality_ablation.json",
        ablation_findings=findings,
    )
    assert card.startswith("---\nlicense: apache-2.0") and "pipeline_tag: image-to-text" in card
    assert "${" not in card  # every placeholder filled
    assert 'AutoModel.from_pretrained("someone/soli-tiny", trust_remote_code=True)' in card
    assert recipe.read_text().strip() in card and "soli evaluate --model X" in card
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    main, bilinear = report["results"][0], report["results"][1]
    assert f"| {main['metrics']['CIDEr']:.3f} |" in card
    assert f"{bilinear['metrics']['CIDEr']:.3f} / {bilinear['metrics']['Bleu_4']:.3f}" in card
    assert f"CIDEr {report['human_leave_one_out']['CIDEr']:.3f}" in card
    assert "arXiv:2512.08873" in card and "Flickr8k" in card
    assert "| ort-int8 | lr | 1 | 4.5 | 5.4 | 100 | 12 | 20.0 | 150 |" in card
    assert "`distillation_weight=0.0`, `num_tags=0`" in card and "`lr_only_probability=0.0`" in card
    assert ablation["runs"][0]["recipe"] == "configs/ablation/soli.yaml"
    assert "| soli | configs/ablation/soli.yaml | 2/2 | 0.4000 |" in card  # the ablation table
    assert card.index("| soli | configs/ablation/soli.yaml") < card.index("- **The contrastive loss pays.**")
