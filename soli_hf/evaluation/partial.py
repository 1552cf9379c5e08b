"""The captions of an evaluation saved as each (model, condition) finishes, so that `soli evaluate --resume` goes on
where a killed evaluation stopped instead of captioning everything again, and re-runs only what is new after a
finished one (a model added to the list, or `--latency-photos` timed later on an idle machine).

Each finished (model, condition) is one folder `<out>/.partial/<slot>/` (written atomically): `run.json` (the key,
the predictions, the tag-only baseline's, the number of unreadable images) and the LR inputs kept for the samples
page as PNG files. The slot is a digest of the key: the model (its source, backend and the size and time of its
weight files), the condition, the decoding settings, the batch size (int8 captions depend on it), the data, split and
image ids. A changed model, setting or split therefore never reuses a saved run. The folder `.partial` stays
beside the report; an evaluation without `--resume` starts by removing it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

from ..storage import read_json, write_folder_atomically
from .captioning import CaptionRun
from .regions import RegionRun

PARTIAL_DIR = ".partial"
RUN_FILE = "run.json"
_WEIGHT_PATTERNS = ("*.safetensors", "*.onnx", "*.json")


def weights_stamp(source: str | Path) -> dict[str, list[int]]:
    """{file name: [size, modification time in ns]} of a model folder's weight and config files (empty for a Hub
    id): cheap to take, and different after the model is retrained or exported again."""
    folder = Path(source)
    if not folder.is_dir():
        return {}
    files = sorted({path for pattern in _WEIGHT_PATTERNS for path in folder.glob(pattern)})
    return {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files}


def run_folder(out: str | Path, key: dict[str, Any]) -> Path:
    """Where the run of `key` (JSON data) is saved under the report folder `out`."""
    slot = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(out) / PARTIAL_DIR / slot


def save_run(out: str | Path, key: dict[str, Any], run: CaptionRun | RegionRun) -> None:
    """Save a finished (model, condition) run under `out` (atomically: a kill leaves it whole or absent)."""

    def write(folder: Path) -> None:
        names = {image_id: f"{index:03d}.png" for index, image_id in enumerate(run.lr_images)}
        for image_id, image in run.lr_images.items():
            image.save(folder / names[image_id])
        record = {
            "key": key,
            "predictions": run.predictions,
            "tag_predictions": getattr(run, "tag_predictions", None),
            "regions": isinstance(run, RegionRun),
            "skipped_images": run.skipped_images,
            "lr_images": names,
        }
        (folder / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")

    write_folder_atomically(run_folder(out, key), write)


def load_run(out: str | Path, key: dict[str, Any]) -> CaptionRun | RegionRun | None:
    """The run saved under `out` for exactly `key`, or None (none saved, or unreadable)."""
    folder = run_folder(out, key)
    try:
        record = read_json(folder / RUN_FILE)
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    lr_images = {}
    for image_id, name in record["lr_images"].items():
        with Image.open(folder / name) as image:
            lr_images[image_id] = image.copy()
    if record["regions"]:
        return RegionRun(record["predictions"], record["tag_predictions"], lr_images, record["skipped_images"])
    return CaptionRun(record["predictions"], lr_images, record["skipped_images"])
