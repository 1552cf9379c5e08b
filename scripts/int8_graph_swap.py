"""Which graph of an int8 SOLI folder changes the captions: the encoder, the decoder step, or both (issue 16).

    python scripts/int8_graph_swap.py FLOAT32_DIR INT8_DIR [INT8_DIR ...] [--data ../shared/data/flickr8k]
        [--split dev] [--max-images 1000] [--out benchmarks/int8_graph_swap/both.json]

Every pairing of one folder's encoder graph with another folder's decoder step captions the split's photos one per
call, greedy and beam 3; the JSON and a Markdown table beside it give the share identical to the float32 folder's
own captions. The code is `soli_hf.bench.graph_swap`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from soli_hf.bench.graph_swap import graph_swap_markdown, graph_swap_report, write_graph_swap_report
from soli_hf.data.loading import load_caption_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("float32_dir", type=Path, help="the float32 export (the reference)")
    parser.add_argument("int8_dirs", type=Path, nargs="+", help="int8 exports of the same model and mode")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/flickr8k"), help="caption dataset")
    parser.add_argument("--split", default="dev", help="its split to caption")
    parser.add_argument("--max-images", type=int, default=1000, help="the first N photos of the split")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/int8_graph_swap/both.json"), help="JSON path")
    args = parser.parse_args()
    rows = load_caption_dataset(args.data, f"{args.split}[:{args.max_images}]")
    images = [row["image"].convert("RGB") for row in rows]
    report = graph_swap_report(args.float32_dir, args.int8_dirs, images, data=str(args.data), split=args.split)
    write_graph_swap_report(report, args.out)
    print(graph_swap_markdown(report))


if __name__ == "__main__":
    main()
