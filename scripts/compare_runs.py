"""Compare finished training runs: `python scripts/compare_runs.py RUN_DIR... --out DIR [--at-epoch N]`.

Writes DIR/comparison.json, DIR/comparison.md (a table of best-epoch dev metrics, or with --at-epoch N every run's
after epoch N, throughput, peak memory) and DIR/comparison.png (dev CIDEr-D per epoch, one line per run).
"""

import argparse
from pathlib import Path

from soli_hf.training.reporting import write_run_comparison

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output_dir of scripts/train.py runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--at-epoch", type=int, help="compare every run after this epoch (runs of one schedule)")
    arguments = parser.parse_args()
    missing = [str(run) for run in arguments.runs if not (run / "model" / "metrics.json").is_file()]
    if missing:
        parser.error(f"no finished run (model/metrics.json) in: {', '.join(missing)}")
    try:
        write_run_comparison(arguments.runs, arguments.out, arguments.at_epoch)
    except ValueError as error:
        parser.error(str(error))
    print((arguments.out / "comparison.md").read_text(encoding="utf-8"))
