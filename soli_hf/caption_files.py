"""`soli caption`: find image files (paths, folders, globs), caption them in batches with the PyTorch model or the
ONNX runtime, and write each result as soon as it is made. Imports neither torch nor transformers at import time,
so it serves a torch-free install too.

A run never loses what it made: each file is turned into its small LR input the moment it is opened (a batch
holds those, never full-size photos), a file that cannot be read is skipped with its reason, and results are
written one line per image, flushed at once. With an output file (`ResultsFile`) a killed run is continued by
running the same command again: the images already captioned are left out.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .image_transforms_soli import ImageInputError, unnormalize_pixels

if TYPE_CHECKING:
    from .modeling_soli import SoliForConditionalGeneration
    from .onnx.runtime import SoliOnnxCaptioner
    from .processing_soli import SoliProcessor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: The shipped default model, beside the package in a source checkout.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "soli-flickr8k-lr64"
#: The name of the weights file of a saved SOLI folder.
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class FileCaptioner:
    """What `caption_files` needs of a model.

    `preprocess` makes one file's normalised LR input (3, S, S) when the file is opened, so that a batch holds
    only these small arrays; it raises `ImageInputError` for a file that cannot be read. `caption` turns a stack of
    them (B, 3, S, S) into B captions. `image_mean` and `image_std` turn an input back into the LR image the model
    saw.
    """

    preprocess: Callable[[Path], np.ndarray]
    caption: Callable[[np.ndarray], list[str]]
    image_mean: Sequence[float]
    image_std: Sequence[float]


@dataclass
class CaptionedImage:
    """A captioned file and the LR input the model saw."""

    path: Path
    caption: str
    lr_image: Image.Image


@dataclass
class SkippedImage:
    """A file that could not be captioned, and why (e.g. "not an image file PIL can read")."""

    path: Path
    reason: str


def _listed(paths: Iterator[Path]) -> list[Path]:
    """The image files among `paths` (by suffix; folders left out), sorted."""
    return sorted(path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir())


def find_images(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted, not recursive) and glob patterns -> image paths, in order, once each.

    A path that exists but is no regular file (a FIFO, a device) is kept: opening refuses it with its reason, so
    it is skipped by name rather than silently.

    Raises:
        ValueError: a path that does not exist, a glob or folder that matches no image.
    """
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = _listed(path.iterdir())
        elif path.exists():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = _listed(Path(match) for match in glob.glob(pattern))
        else:
            raise ValueError(f"{pattern}: no such file or folder")
        if not matches:
            raise ValueError(f"{pattern}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        found += [match for match in matches if match not in found]
    return found


def load_captioner(
    model_dir: str | Path, inference_branches: str | None = None
) -> tuple[SoliForConditionalGeneration, SoliProcessor]:
    """A saved SOLI folder's (or Hub id's) model, in eval mode, and processor; `inference_branches` overrides the
    config's.

    Raises:
        ValueError: a folder without config.json, weights that cannot be read (truncated or corrupt), a branch
            setting the model lacks.
    """
    from safetensors import SafetensorError

    from .modeling_soli import SoliForConditionalGeneration
    from .processing_soli import SoliProcessor

    path = Path(model_dir)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"--model {model_dir}: not a saved SOLI folder (no config.json)")
    try:
        model = SoliForConditionalGeneration.from_pretrained(model_dir).eval()
    except SafetensorError as error:
        weights = path / WEIGHTS_NAME if path.is_dir() else f"{model_dir} ({WEIGHTS_NAME})"
        raise ValueError(f"{weights}: cannot read the weights, the file is truncated or corrupt ({error})") from error
    if inference_branches is not None:
        if inference_branches == "both" and not model.config.use_sr_branch:
            raise ValueError(f"--model {model_dir} has no SR branch (baseline variant): use --inference-branches lr")
        model.config.inference_branches = inference_branches
    return model, SoliProcessor.from_pretrained(model_dir)


def pytorch_captioner(
    model: SoliForConditionalGeneration, processor: SoliProcessor, *, num_beams: int = 3, max_new_tokens: int = 20
) -> FileCaptioner:
    """A `FileCaptioner` of the processor and `model.generate` (which disables gradients itself)."""
    import torch

    model.eval()
    image_processor = processor.image_processor

    def caption(pixels: np.ndarray) -> list[str]:
        ids = model.generate(pixel_values=torch.from_numpy(pixels), num_beams=num_beams, max_new_tokens=max_new_tokens)
        return processor.batch_decode(ids, skip_special_tokens=True)

    return FileCaptioner(
        lambda path: image_processor(path)["pixel_values"][0], caption, image_processor.image_mean,
        image_processor.image_std,
    )  # fmt: skip


def onnx_captioner(captioner: SoliOnnxCaptioner, *, num_beams: int = 3, max_new_tokens: int = 20) -> FileCaptioner:
    """A `FileCaptioner` running the exported graphs on onnxruntime."""
    settings = captioner.manifest["preprocessing"]

    def caption(pixels: np.ndarray) -> list[str]:
        return captioner.decode(captioner.generate(pixels, num_beams=num_beams, max_new_tokens=max_new_tokens))

    return FileCaptioner(
        lambda path: captioner.preprocess(path)[0], caption, settings["image_mean"], settings["image_std"]
    )


def caption_files(
    captioner: FileCaptioner, paths: Sequence[Path], *, batch_size: int = 16
) -> Iterator[CaptionedImage | SkippedImage]:
    """Caption the files in batches, yielding each result as soon as it is made: a `SkippedImage` the moment a file
    turns out unreadable (any `ImageInputError`: missing, no regular file, not an image, corrupt, too many pixels,
    NaN values, ...), then the `CaptionedImage`s of each batch. Shows a progress bar when there is more than one
    batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    with tqdm(total=len(paths), unit="img", desc="captioning", disable=len(paths) <= batch_size) as progress:
        for start in range(0, len(paths), batch_size):
            opened, rows = [], []
            for path in paths[start : start + batch_size]:
                try:
                    rows.append(captioner.preprocess(path))
                    opened.append(path)
                except ImageInputError as error:
                    yield SkippedImage(path, error.reason)
            if rows:
                pixels = np.stack(rows)
                mean, std = captioner.image_mean, captioner.image_std
                for path, caption, row in zip(opened, captioner.caption(pixels), pixels):
                    yield CaptionedImage(path, caption, unnormalize_pixels(row, mean, std))
            progress.update(len(paths[start : start + batch_size]))


def format_result(path: Path | str, caption: str, as_json: bool) -> str:
    """One result line (no newline): a JSON object `{"path", "caption"}` or `path<TAB>caption`."""
    return json.dumps({"path": str(path), "caption": caption}) if as_json else f"{path}\t{caption}"


def _parsed_path(line: str, as_json: bool) -> str | None:
    """The path of a result line, or None when the line is not one `format_result` writes."""
    if not as_json:
        return line.rsplit("\t", 1)[0] if "\t" in line else None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("path"), str) and isinstance(record.get("caption"), str)
    return record["path"] if ok else None


@dataclass
class ResultsFile:
    """The `--output` file of `soli caption`: one `format_result` line per image, appended and flushed as each
    caption is made, so that a killed run loses nothing it wrote.

    Opening it reads the paths it already holds (`done`), to be left out of this run. A last line without its
    newline was cut off by a kill while being written: it is dropped (`dropped_cut_line`) and that image is
    captioned again.
    """

    path: Path
    as_json: bool
    done: set[str]
    dropped_cut_line: bool
    stream: TextIO

    @classmethod
    def open(cls, path: Path, as_json: bool) -> ResultsFile:
        """Read what `path` holds (if it exists) and open it for appending; blank lines are ignored.

        Raises:
            ValueError: a complete line that is not a result of this format, naming the file and line.
        """
        path = Path(path)
        data = path.read_bytes() if path.exists() else b""
        complete = data.rfind(b"\n") + 1  # the bytes up to the last newline; 0 when there is none
        done = set()
        for number, line in enumerate(data[:complete].decode("utf-8", "surrogateescape").split("\n")[:-1], 1):
            if not line.strip():
                continue
            parsed = _parsed_path(line, as_json)
            if parsed is None:
                kind = 'a JSON object with "path" and "caption"' if as_json else "path<TAB>caption"
                raise ValueError(f"{path} line {number}: not a result line ({kind}); give another --output file")
            done.add(parsed)
        if complete < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(complete)
        stream = open(path, "a", encoding="utf-8", errors="surrogateescape")
        return cls(path, as_json, done, complete < len(data), stream)

    def write(self, path: Path, caption: str) -> None:
        """Append one result line and flush it to the operating system."""
        self.stream.write(format_result(path, caption, self.as_json) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Flush the file to disk and close it."""
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
