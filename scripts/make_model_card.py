"""Write a model folder's card (README.md) from model_cards/template.md, the recipe and `soli evaluate` reports:

    python scripts/make_model_card.py --model models/soli-flickr8k-lr64 --evaluation runs/eval/dev_paper \
        [runs/eval/dev_lr] --recipe configs/flickr8k_cpu.yaml --repo-id USER/soli-flickr8k-lr64 \
        [--latency benchmarks/latency_cpu.json] [--ablation benchmarks/quality_ablation.json]
        [--ablation-findings model_cards/soli-flickr8k-lr64-findings.md]
        [--copy-to model_cards/soli-flickr8k-lr64.md]
"""

import argparse
import shutil
from pathlib import Path

from soli_hf.bench.model_card import render_model_card

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the saved SOLI folder (the card goes inside)")
    parser.add_argument("--evaluation", type=Path, nargs="+", required=True, help="soli evaluate --out folders")
    parser.add_argument("--recipe", type=Path, default=None, help="the YAML recipe that trained the model")
    parser.add_argument("--training-command", default=None, help="the command that trained the model")
    parser.add_argument("--evaluation-command", default=None, help="the soli evaluate command(s) of the reports")
    parser.add_argument("--repo-id", default="soli-hf/soli-flickr8k-lr64", help="the Hub id shown in the usage")
    parser.add_argument("--hardware", default="on a 2-core CPU", help="where it was trained, for the card")
    parser.add_argument("--latency", type=Path, default=None, help="the JSON of scripts/benchmark.py latency")
    parser.add_argument("--ablation", type=Path, default=None, help="the JSON of scripts/benchmark.py ablation")
    parser.add_argument(
        "--ablation-findings", type=Path, default=None, help="Markdown of what the ablation rows say, after the table"
    )
    parser.add_argument("--template", type=Path, default=ROOT / "model_cards" / "template.md")
    parser.add_argument("--copy-to", type=Path, default=None, help="also write the card here")
    args = parser.parse_args()
    card = render_model_card(
        args.template.read_text(encoding="utf-8"),
        args.model,
        args.evaluation,
        repo_id=args.repo_id,
        recipe=args.recipe,
        training_command=args.training_command,
        evaluation_command=args.evaluation_command,
        hardware=args.hardware,
        latency_benchmark=args.latency,
        ablation=args.ablation,
        ablation_findings=args.ablation_findings,
    )
    (args.model / "README.md").write_text(card, encoding="utf-8")
    if args.copy_to is not None:
        shutil.copyfile(args.model / "README.md", args.copy_to)
    print(f"wrote {args.model / 'README.md'}")
