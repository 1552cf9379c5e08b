"""Which graph of an int8 SOLI folder changes the captions: the encoder, the decoder step, or both (issue 16).

Every pairing of one export folder's encoder graph with another's decoder step (the float32 folder's included)
captions the photos one per call (batch 1, one thread), greedy and beam 3, and the captions are compared with the
float32 folder's own. The folders must be exports of one model in one inference mode (`soli export`, with and
without `--quantize`). Every decoder step runs `SoliOnnxCaptioner`'s numpy search (the fast mode's greedy graph
gives the same token ids), so the pairings differ only in their graphs. `scripts/int8_graph_swap.py` runs it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..onnx.runtime import SoliOnnxCaptioner
from ..onnx.spec import GREEDY_KEY
from .markdown import markdown_table

BEAMS = (1, 3)


def captions_by_pairing(
    folders: Sequence[Path], images: Sequence[Any], beams: Sequence[int] = BEAMS
) -> dict[tuple[Path, Path], dict[int, list[tuple[int, ...]]]]:
    """{(encoder folder, decoder folder): {num_beams: token ids of each image}} for every pairing of `folders`."""
    captioners = {folder: SoliOnnxCaptioner(folder, num_threads=1) for folder in folders}
    for captioner in captioners.values():
        captioner.sessions.pop(GREEDY_KEY, None)  # one search code for every decoder step
    pixel_values = captioners[folders[0]].preprocess(list(images))
    encoded = {
        folder: [captioner.encode(pixel_values[i : i + 1]) for i in range(len(images))]
        for folder, captioner in tqdm(captioners.items(), desc="encoding")
    }
    results = {}
    for encoder, decoder in tqdm(list(itertools.product(folders, folders)), desc="pairings"):
        search = captioners[decoder].search
        results[encoder, decoder] = {
            num_beams: [tuple(search(outputs, num_beams=num_beams)[0]) for outputs in encoded[encoder]]
            for num_beams in beams
        }
    return results


def graph_swap_report(float32_dir: Path, int8_dirs: Sequence[Path], images: Sequence[Any], **source: Any) -> dict:
    """The share of captions identical to `float32_dir`'s for every other pairing of encoder and decoder step
    among the folders; `source` (e.g. data, split) is recorded as given."""
    folders = [Path(float32_dir), *map(Path, int8_dirs)]
    results = captions_by_pairing(folders, images)
    reference = results[folders[0], folders[0]]
    pairings = [
        {
            "encoder": str(encoder),
            "decoder": str(decoder),
            "identical": {
                str(num_beams): float(np.mean([a == b for a, b in zip(reference[num_beams], ids, strict=True)]))
                for num_beams, ids in captions.items()
            },
        }
        for (encoder, decoder), captions in results.items()
        if (encoder, decoder) != (folders[0], folders[0])
    ]
    return {**source, "images": len(images), "batch": 1, "float32": str(folders[0]), "pairings": pairings}


def graph_swap_markdown(report: dict) -> str:
    """The report as a Markdown page."""
    beams = list(report["pairings"][0]["identical"])
    rows = [
        [f"`{row['encoder']}`", f"`{row['decoder']}`", *(f"{100 * row['identical'][b]:.1f}%" for b in beams)]
        for row in report["pairings"]
    ]
    header = ["encoder from", "decoder step from", *(f"identical, {b} beam(s)" for b in beams)]
    folders = " ".join(dict.fromkeys([report["float32"], *(row["decoder"] for row in report["pairings"])]))
    return "\n".join(
        [
            f"# Captions identical to `{report['float32']}`'s, by graph",
            "",
            f"{report['images']} photos, one per call, one thread. Made with `python scripts/int8_graph_swap.py "
            f"{folders}` (`soli_hf/bench/graph_swap.py`).",
            "",
            markdown_table(header, rows),
            "",
        ]
    )


def write_graph_swap_report(report: dict, json_path: Path) -> None:
    """The JSON and the Markdown page beside it (same stem, .md)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    json_path.with_suffix(".md").write_text(graph_swap_markdown(report), encoding="utf-8")
