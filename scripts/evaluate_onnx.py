"""How much int8 quantization changes SOLI's captions: float32 vs int8 ONNX folders on a caption split.

    soli export --model models/soli-flickr8k-lr64 --out onnx/fp32
    soli export --model models/soli-flickr8k-lr64 --out onnx/int8 --quantize arm64
    python scripts/evaluate_onnx.py --fp32 onnx/fp32 --int8 onnx/int8 \
        --data ../shared/data/flickr8k --split dev [--agreement-images 200] [--out benchmarks/onnx_int8_dev]

For greedy search and the model's default beam size: the share of the first `--agreement-images` images whose
int8 caption is identical to the float32 one (the float32 graphs give PyTorch's captions token for token, see
tests/test_onnx.py), and coco-caption metrics (BLEU-4, ROUGE-L, CIDEr-D) of both on the whole split.
Writes `<out>.json` and `<out>.md`; no reference caption is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from soli_hf.data import load_caption_dataset
from soli_hf.bench.markdown import markdown_table
from soli_hf.metrics import compute_caption_metrics
from soli_hf.onnx import SoliOnnxCaptioner

#: coco-caption's metric keys and their names in the report ("CIDEr" is coco-caption's CIDEr-D).
REPORTED_METRICS = {"Bleu_4": "BLEU-4", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr-D"}


def caption_all(
    captioner: SoliOnnxCaptioner, paths: list[str], num_beams: int, batch_size: int, name: str
) -> list[str]:
    """Captions of every image, in order, in batches."""
    captions: list[str] = []
    for start in tqdm(range(0, len(paths), batch_size), desc=f"{name} beams={num_beams}", unit="batch"):
        captions += captioner.caption(paths[start : start + batch_size], num_beams=num_beams)
    return captions


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Caption the split with both folders and score them."""
    rows = load_caption_dataset(args.data, args.split)
    image_ids, paths = list(rows["image_id"]), list(rows["image_path"])
    references = dict(zip(image_ids, rows["captions"]))
    captioners = {
        "fp32": SoliOnnxCaptioner(args.fp32, num_threads=args.num_threads),
        "int8": SoliOnnxCaptioner(args.int8, num_threads=args.num_threads),
    }
    quantization = captioners["int8"].manifest.get("quantization")
    if quantization is None or "quantization" in captioners["fp32"].manifest:
        raise ValueError("--int8 must be a quantized folder (soli export --quantize) and --fp32 a float32 one")
    results = []
    for num_beams in sorted({1, captioners["fp32"].generation.num_beams}):
        captions = {
            name: caption_all(captioner, paths, num_beams, args.batch_size, name)
            for name, captioner in captioners.items()
        }
        head = slice(0, min(args.agreement_images, len(paths)))
        pairs = list(zip(captions["fp32"][head], captions["int8"][head]))
        metrics = {
            name: compute_caption_metrics(dict(zip(image_ids, texts)), references, meteor=False)
            for name, texts in captions.items()
        }
        results.append({
            "num_beams": num_beams,
            "identical": sum(a == b for a, b in pairs),
            "compared": len(pairs),
            "metrics": {name: {key: values[key] for key in REPORTED_METRICS} for name, values in metrics.items()},
            "cider_d_drop": metrics["fp32"]["CIDEr"] - metrics["int8"]["CIDEr"],
        })  # fmt: skip
    return {
        "data": str(args.data), "split": args.split, "images": len(paths), "fp32": str(args.fp32),
        "int8": str(args.int8), "quantization": quantization, "results": results,
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    rows = [
        [
            str(result["num_beams"]),
            f"{result['identical']}/{result['compared']} ({100 * result['identical'] / result['compared']:.1f}%)",
            *(f"{result['metrics']['fp32'][k]:.3f} / {result['metrics']['int8'][k]:.3f}" for k in REPORTED_METRICS),
            f"{result['cider_d_drop']:+.4f}",
        ]
        for result in report["results"]
    ]
    names = (f"{name} fp32 / int8" for name in REPORTED_METRICS.values())
    header = ["beams", "int8 caption identical", *names, "CIDEr-D drop (fp32 - int8)"]
    quantization = report["quantization"]
    return (
        f"# int8 vs float32 ONNX on {report['split']} ({report['images']} images)\n\n"
        f"int8: {quantization['name']} dynamic quantization of {', '.join(quantization['operators'])} "
        f"({quantization['backend']}); identical captions counted on the first images, metrics on all.\n\n"
        + markdown_table(header, rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True, help="a float32 folder of soli export")
    parser.add_argument("--int8", type=Path, required=True, help="a folder of soli export --quantize")
    parser.add_argument("--data", required=True, help="a caption dataset (any soli_hf.data format)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--agreement-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/onnx_int8_dev"), help="output path stem")
    args = parser.parse_args()
    report = compare(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
