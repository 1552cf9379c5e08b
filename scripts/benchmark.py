"""SOLI benchmarks. `python scripts/benchmark.py metrics`: our CIDEr-D against pycocoevalcap's, the corpus
metric and the per-batch SCST reward. `python scripts/benchmark.py latency`: caption latency of a model against
its peers (details below).

Metrics (``soli_hf.bench.metric_speed``): corpus CIDEr-D of 5,000 Flickr8k predictions against 25,000 references,
and the SCST reward of batches of 32 images x 5 samples, ours vs pycocoevalcap, best of ``--repeats`` runs. Prints
a table and writes JSON (``--out``, default benchmarks/metrics.json).
Run: ``python scripts/benchmark.py metrics [--out PATH] [--batches 50] [--repeats 3]``.

Latency (``soli_hf.bench.latency_suite``): batch 1, greedy, every caption exactly ``--tokens`` new tokens (default
12, about a mean Flickr8k caption), preprocessing from the decoded photo included, on scikit-image's 5 sample
photos. SOLI in PyTorch eager, onnxruntime fp32, onnxruntime int8 (the "arm64" settings, exported and quantized
into a temporary folder) and static int8 (its encoder calibrated on ``--calibration-images`` training photos of
``--calibration-data``; left out when that folder is missing), each with ``inference_branches`` both and lr, with
1 thread and all threads; then the peers of ``soli_hf.bench.peers`` (ViT+GPT-2, BLIP base, GIT base; random
weights, 3 photos x 1 pass) with SOLI/peer latency ratios; then the throughput (images/s) at ``--batch-size``
(default 32; 1 leaves it out) with all threads of PyTorch, both int8 and the peers. Every configuration runs in its
own subprocess (its peak RSS is its own; onnxruntime ones without torch). Writes the JSON (``--out``, default
benchmarks/latency_cpu.json) and, next to it, a Markdown report (.md) and a bar chart (.png); ``--render-only``
rewrites those two from the JSON.
Run on an idle machine: ``python scripts/benchmark.py latency [--model DIR] [--out PATH] [--repeats 20]
[--tokens 12] [--no-peers] [--batch-size 32] [--calibration-data ../shared/data/flickr8k]``.

Profile: where an onnxruntime caption's time goes (``soli_hf.bench.onnx_profile``): the stages (preprocessing, encoder,
one decoder step, the numpy search loop) and onnxruntime's kernel time per operator type of each graph, for the
given exported folders or, by default, the shipped model's int8 exports (both and lr). Writes the JSON (default
benchmarks/onnx_profile.json) and a Markdown report next to it (``--render-only``: the report from the JSON).
Run: ``python scripts/benchmark.py profile [--onnx DIR ...] [--threads 1] [--repeats 30] [--tokens 12]``.

Training (``soli_hf.bench.training_speed``): the training throughput of the CPU recipe (real backbone and data) under
each speed setting (fp32, channels_last, bf16, bf16+channels_last, compile, workers_1, workers_2), each one short
epoch in its own process: median images/s after the warm-up steps, peak RSS, dev loss (the bf16 quality check), the
CPU's bf16 / AMX flags. Writes the JSON (default benchmarks/training_speed_cpu.json) and a Markdown report next to it.
Run on an idle machine: ``python scripts/benchmark.py training [--settings fp32 bf16 ...] [--max-train-images 320]
[--warmup-steps 3] [--max-eval-images 50]``.

Ablation (``soli_hf.bench.quality_ablation``): the caption-quality ablation table of finished runs of
configs/ablation/ (best epoch, dev CIDEr-D greedy of the trained weights and of their EMA and, given its
``soli evaluate --num_beams 3`` output folder, beam 3, BLEU-4, distinct captions, wall time) and their dev CIDEr-D
per epoch. Writes the JSON (default benchmarks/quality_ablation.json) and the table (.md) and plot (.png) next to it.
Run: ``python scripts/benchmark.py ablation runs/ablation/baseline runs/ablation/soli ...
[--beam-evaluations runs/ablation/soli=runs/eval/soli_beam3 ...] [--lr-evaluations RUN=EVAL_DIR ...]``.

Photos (``soli_hf.bench.outside_photos``): each model captions every photo outside Flickr8k of
benchmarks/photos_outside_flickr (its SOURCES.md lists them), with its own generation config. Writes the JSON
(default benchmarks/photos_outside_flickr/report.json) and, next to it, a Markdown table (.md) and a page of each
photo, its LR input and the captions (.html). ``--name`` labels the models in order (default: the folder names).
Run: ``python scripts/benchmark.py photos --model OLD_DIR --model NEW_DIR [--onnx ONNX_DIR] [--name old --name new]``.

Scale (``soli_hf.bench.scale``): photos/s of captioning in one process against Ray Data with 1 and 2 workers
(``soli caption --ray``), the same photos, model and batch size, from the start of each run to its last caption.
Writes the JSON (default benchmarks/scale_cpu.json) and a Markdown table next to it. Needs the ``scale`` extra.
Run on an idle machine: ``python scripts/benchmark.py scale [--onnx DIR | --model DIR] [--photos PATH ...]
[--limit 500] [--workers 1 2] [--batch-size 16] [--threads 1]``.

int8 (``soli_hf.bench.int8_parity``): int8 against float32 ONNX (issue 16). For each inference mode (``--modes``,
default both and lr) the float32 export and its int8 variants (dynamic and static; fast for "both", compact for
"lr"; static, fast and compact calibrated on ``--calibration-images`` training photos of ``--calibration-data``) are
written under ``--work-dir`` (an export whose stamp there says it was made from the same model files and settings is
reused), then each mode's folders caption ``--split`` of ``--data`` (the first ``--max-images``) greedy and with beam
3, float32 first, in one ``soli evaluate``-like run each (batch 25, one thread, no METEOR; an interrupted run
resumes). Writes the JSON (default benchmarks/onnx_int8_dev.json: per mode, beam width and int8 folder the captions
identical to float32's, BLEU-4 / ROUGE-L / CIDEr-D of both, the CIDEr-D drop, the graphs' bytes, the manifest's
quantization) and a Markdown report next to it with a summary table per mode and which folders meet issue 16's
bar (at least 90% identical and a CIDEr-D drop of at most 0.005, greedy and beam 3; "lr" graphs at most 10 MB);
``--render-only`` rewrites the report from the JSON.
Run: ``python scripts/benchmark.py int8 --model models/soli-flickr8k-lr64 --data ../shared/data/flickr8k
--calibration-data ../shared/data/flickr8k [--split dev] [--max-images N] [--work-dir runs/int8_parity]
[--modes both lr]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from soli_hf.bench.sample_photos import OUTSIDE_FLICKR_PHOTOS
from soli_hf.bench.training_speed import SETTINGS
from soli_hf.captioner import CHECKOUT_MODEL_DIR
from soli_hf.onnx.spec import DEFAULT_CALIBRATION_IMAGES

DEFAULT_TOKENS = 12  # = soli_hf.bench.latency_suite.DEFAULT_TOKENS, which imports what `profile --onnx` must not
FLICKR8K = Path("../shared/data/flickr8k")
FLICKR8K_PHOTOS = FLICKR8K / "Flicker8k_Dataset"
RENDER_ONLY = "write the report(s) next to --out from the JSON already there, without measuring"


def parse_arguments() -> argparse.Namespace:
    """The subcommand and its options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)
    metrics = benchmarks.add_parser("metrics", help="CIDEr-D corpus metric and SCST reward vs pycocoevalcap")
    metrics.add_argument("--out", type=Path, default=Path("benchmarks/metrics.json"), help="JSON output path")
    metrics.add_argument("--batches", type=int, default=50, help="SCST batches to time")
    metrics.add_argument("--repeats", type=int, default=3, help="timed runs per benchmark (best is kept)")
    latency = benchmarks.add_parser(
        "latency", help="caption latency, size and peak RSS: PyTorch eager, ORT fp32 and int8, and peers"
    )
    latency.add_argument("--model", type=Path, default=CHECKOUT_MODEL_DIR, help="a saved SOLI folder")
    latency.add_argument("--out", type=Path, default=Path("benchmarks/latency_cpu.json"), help="JSON output path")
    latency.add_argument("--repeats", type=int, default=20, help="timed passes of SOLI over the 5 sample photos")
    latency.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="new tokens of every caption")
    latency.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True, help="time the peers too")
    latency.add_argument("--batch-size", type=int, default=32, help="batch of the throughput rows (1: none)")
    latency.add_argument(
        "--calibration-data", type=Path, default=FLICKR8K, help="caption dataset whose training photos calibrate int8"
    )
    latency.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, help="training photos to calibrate on"
    )
    latency.add_argument("--render-only", action="store_true", help=RENDER_ONLY)
    profile = benchmarks.add_parser(
        "profile", help="where an onnxruntime caption's time goes: stages and per-operator kernel times"
    )
    profile.add_argument("--model", type=Path, default=CHECKOUT_MODEL_DIR, help="exported (int8) when no --onnx")
    profile.add_argument("--onnx", type=Path, action="append", default=[], help="an exported folder (repeatable)")
    profile.add_argument("--out", type=Path, default=Path("benchmarks/onnx_profile.json"), help="JSON output path")
    profile.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    profile.add_argument("--repeats", type=int, default=30, help="timed runs of each stage per photo")
    profile.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="new tokens of every caption")
    profile.add_argument("--render-only", action="store_true", help=RENDER_ONLY)
    training = benchmarks.add_parser("training", help="training throughput of the CPU recipe per speed setting")
    training.add_argument("--config", type=Path, default=Path("configs/flickr8k_cpu.yaml"), help="the recipe")
    training.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="to measure")
    training.add_argument("--max-train-images", type=int, default=320, help="the epoch's images (batch size steps)")
    training.add_argument("--warmup-steps", type=int, default=3, help="first steps left out of the median")
    training.add_argument("--max-eval-images", type=int, default=50, help="dev images of the quality check")
    training.add_argument("--out", type=Path, default=Path("benchmarks/training_speed_cpu.json"), help="JSON path")
    training.add_argument("--render-only", action="store_true", help=RENDER_ONLY)
    ablation = benchmarks.add_parser("ablation", help="caption-quality ablation table of finished training runs")
    ablation.add_argument("runs", type=Path, nargs="+", help="run folders (scripts/train.py's OUTPUT)")
    ablation.add_argument(
        "--beam-evaluations",
        type=run_and_evaluation,
        nargs="+",
        default=[],
        metavar="RUN=EVAL_DIR",
        help="a run's beam-3 `soli evaluate` output folder",
    )
    ablation.add_argument(
        "--lr-evaluations",
        type=run_and_evaluation,
        nargs="+",
        default=[],
        metavar="RUN=EVAL_DIR",
        help="a run's beam-3 `soli evaluate --inference-branches lr` output folder",
    )
    ablation.add_argument("--out", type=Path, default=Path("benchmarks/quality_ablation.json"), help="JSON path")
    photos = benchmarks.add_parser("photos", help="captions of photos outside Flickr8k, model beside model")
    photos.add_argument(
        "--model",
        dest="models",
        action="append",
        type=lambda value: ("model", value),
        default=[],
        help="a saved SOLI folder or Hub id (repeatable; the order of --model and --onnx is the column order)",
    )
    photos.add_argument(
        "--onnx", dest="models", action="append", type=lambda value: ("onnx", value), help="an exported ONNX folder"
    )
    photos.add_argument("--name", action="append", default=[], help="each model's column name, in order")
    photos.add_argument("--photos", type=Path, default=OUTSIDE_FLICKR_PHOTOS, help="a photo set (photos.json)")
    photos.add_argument("--batch-size", type=int, default=8, help="photos per batch")
    photos.add_argument(
        "--out", type=Path, default=OUTSIDE_FLICKR_PHOTOS / "report.json", help="JSON path (.md, .html beside)"
    )
    scale = benchmarks.add_parser("scale", help="photos/s in one process and on Ray Data with 1 and 2 workers")
    scale.add_argument("--model", default=None, help="a saved SOLI folder or Hub id (default: the shipped model)")
    scale.add_argument("--onnx", default=None, help="an exported ONNX folder instead")
    scale.add_argument("--photos", nargs="+", default=[str(FLICKR8K_PHOTOS)], help="folders, globs, lists of paths")
    scale.add_argument("--limit", type=int, default=500, help="the first photos only")
    scale.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray pool sizes to time")
    scale.add_argument("--batch-size", type=int, default=16, help="photos per generate call")
    scale.add_argument("--threads", type=int, default=1, help="threads of the single process and of each worker")
    scale.add_argument("--out", type=Path, default=Path("benchmarks/scale_cpu.json"), help="JSON path (.md beside)")
    int8 = benchmarks.add_parser(
        "int8", help="int8 vs float32 ONNX folders: identical captions, scores, sizes and issue 16's bar"
    )
    int8.add_argument("--model", type=Path, default=CHECKOUT_MODEL_DIR, help="a saved SOLI folder")
    int8.add_argument("--data", type=Path, default=FLICKR8K, help="the caption dataset to evaluate on")
    int8.add_argument("--split", default="dev", help="its split to caption")
    int8.add_argument("--max-images", type=int, default=None, help="only the first N images of the split")
    int8.add_argument(
        "--calibration-data", type=Path, default=FLICKR8K, help="caption dataset whose training photos calibrate int8"
    )
    int8.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, help="training photos to calibrate on"
    )
    int8.add_argument("--modes", nargs="+", choices=("both", "lr"), default=["both", "lr"], help="inference modes")
    int8.add_argument(
        "--work-dir", type=Path, default=Path("runs/int8_parity"), help="exports and evaluation reports (kept)"
    )
    int8.add_argument("--out", type=Path, default=Path("benchmarks/onnx_int8_dev.json"), help="JSON path (.md beside)")
    int8.add_argument("--render-only", action="store_true", help=RENDER_ONLY)
    return parser.parse_args()


def run_and_evaluation(value: str) -> tuple[Path, Path]:
    """`RUN=EVAL_DIR` as two paths."""
    run, separator, evaluation = value.partition("=")
    if not (run and separator and evaluation):
        raise argparse.ArgumentTypeError(f"expected RUN=EVAL_DIR, got {value!r}")
    return Path(run), Path(evaluation)


def write_json(results: dict, out: Path) -> None:
    """The results as indented JSON at `out` (its folder made)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """Run one benchmark, print its table or report, write its JSON and the reports next to it."""
    args = parse_arguments()
    if args.benchmark == "metrics":
        from soli_hf.bench.metric_speed import benchmark_metrics, metrics_table

        results = benchmark_metrics(args.batches, args.repeats)
        print(metrics_table(results))
        write_json(results, args.out)
        print(f"wrote {args.out}")
        return
    if args.benchmark == "ablation":
        from soli_hf.bench.quality_ablation import quality_ablation_markdown, write_quality_ablation

        print(
            quality_ablation_markdown(
                write_quality_ablation(args.runs, dict(args.beam_evaluations), args.out, dict(args.lr_evaluations))
            )
        )
        print(f"wrote {args.out} and its .md and .png")
        return
    if args.benchmark == "photos":
        from soli_hf.bench import outside_photos
        from soli_hf.bench.sample_photos import read_photo_set

        try:
            models = outside_photos.report_models(args.models, args.name)
            result = outside_photos.caption_photo_set(models, read_photo_set(args.photos), batch_size=args.batch_size)
        except ValueError as error:  # a bad flag, manifest, photo or model, each named
            raise SystemExit(f"benchmark.py photos: {error}") from error
        print(outside_photos.outside_photos_markdown(outside_photos.write_outside_photos_report(result, args.out)))
        print(f"wrote {args.out} and its .md and .html")
        return
    if args.benchmark == "scale":
        from soli_hf.bench.scale import benchmark_scale, scale_markdown

        settings = {"limit": args.limit, "workers": args.workers, "batch_size": args.batch_size}
        results = benchmark_scale(args.photos, model=args.model, onnx=args.onnx, threads=args.threads, **settings)
        write_json(results, args.out)
        args.out.with_suffix(".md").write_text(scale_markdown(results) + "\n", encoding="utf-8")
        print(scale_markdown(results))
        print(f"wrote {args.out} and its .md")
        return
    if args.benchmark == "latency":
        from soli_hf.bench import latency_report, latency_suite

        def measure() -> dict:
            calibration = []
            if args.calibration_data.exists():
                from soli_hf.cli.export import calibration_photos

                calibration = calibration_photos(args.calibration_data, "train", args.calibration_images)
            else:
                print(f"{args.calibration_data} is missing: no static int8 rows")
            return latency_suite.benchmark_latency(
                args.model, args.tokens, args.repeats, args.peers, args.batch_size, calibration
            )

        report_text, write_report = latency_report.latency_markdown, latency_report.write_latency_report
    elif args.benchmark == "training":
        from soli_hf.bench import training_speed

        def measure() -> dict:
            return training_speed.benchmark_training_speed(
                args.config, args.settings, args.max_train_images, args.max_eval_images, args.warmup_steps
            )

        report_text = training_speed.training_speed_markdown
        write_report = training_speed.write_training_speed_report
    elif args.benchmark == "int8":
        from soli_hf.bench import int8_parity

        def measure() -> dict:
            from soli_hf.cli.export import calibration_photos

            try:
                calibration = calibration_photos(args.calibration_data, "train", args.calibration_images)
                return int8_parity.benchmark_int8_parity(
                    args.model,
                    args.data,
                    calibration,
                    calibration_data=args.calibration_data,
                    split=args.split,
                    max_images=args.max_images,
                    work_dir=args.work_dir,
                    modes=args.modes,
                    command=shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]]),
                )
            except ValueError as error:  # a model without the mode, a bad dataset or split, each named
                raise SystemExit(f"benchmark.py int8: {error}") from error

        report_text, write_report = int8_parity.int8_parity_markdown, int8_parity.write_int8_parity_report
    else:  # with --onnx this imports onnxruntime and not torch: it runs on a device
        from soli_hf.bench import onnx_profile

        def measure() -> dict:
            return onnx_profile.benchmark_profile(args.model, args.onnx, args.tokens, args.threads, args.repeats)

        report_text, write_report = onnx_profile.profiles_markdown, onnx_profile.write_profile_report
    if args.render_only:
        write_report(json.loads(args.out.read_text(encoding="utf-8")), args.out)
        print(f"wrote the report(s) of {args.out}")
        return
    results = measure()
    print(report_text(results))
    write_json(results, args.out)
    write_report(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
