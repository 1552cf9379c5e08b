"""`soli caption`: find image files (paths, folders, globs) and caption them in batches with the PyTorch model or
the ONNX runtime. Imports neither torch nor transformers, so it serves a torch-free install too."""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from tqdm.auto import tqdm

from .image_transforms_soli import open_image, unnormalize_pixels

if TYPE_CHECKING:
    from .modeling_soli import SoliForConditionalGeneration
    from .onnx.runtime import SoliOnnxCaptioner
    from .processing_soli import SoliProcessor

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: The shipped default model, beside the package in a source checkout.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "soli-flickr8k-lr64"

#: Captions a batch of RGB images: their captions and the LR images the model saw.
BatchCaptioner = Callable[[list[Image.Image]], tuple[list[str], list[Image.Image]]]


@dataclass
class CaptionedImage:
    """A captioned file and the LR input the model saw."""

    path: Path
    caption: str
    lr_image: Image.Image


def find_images(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted, not recursive) and glob patterns -> image paths, in order, once each.

    Raises:
        ValueError: a path that does not exist, a glob or folder that matches no image.
    """
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
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
    config's."""
    from .modeling_soli import SoliForConditionalGeneration
    from .processing_soli import SoliProcessor

    path = Path(model_dir)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"--model {model_dir}: not a saved SOLI folder (no config.json)")
    model = SoliForConditionalGeneration.from_pretrained(model_dir).eval()
    if inference_branches is not None:
        if inference_branches == "both" and not model.config.use_sr_branch:
            raise ValueError(f"--model {model_dir} has no SR branch (baseline variant): use --inference-branches lr")
        model.config.inference_branches = inference_branches
    return model, SoliProcessor.from_pretrained(model_dir)


def pytorch_captioner(
    model: SoliForConditionalGeneration, processor: SoliProcessor, *, num_beams: int = 3, max_new_tokens: int = 20
) -> BatchCaptioner:
    """A `BatchCaptioner` running `model.generate` (which disables gradients itself)."""
    model.eval()

    def caption(images: list[Image.Image]) -> tuple[list[str], list[Image.Image]]:
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        ids = model.generate(pixel_values=pixels, num_beams=num_beams, max_new_tokens=max_new_tokens)
        lr_images = [processor.image_processor.unnormalize_pixels(row) for row in pixels]
        return processor.batch_decode(ids, skip_special_tokens=True), lr_images

    return caption


def onnx_captioner(captioner: SoliOnnxCaptioner, *, num_beams: int = 3, max_new_tokens: int = 20) -> BatchCaptioner:
    """A `BatchCaptioner` running the exported graphs on onnxruntime."""
    settings = captioner.manifest["preprocessing"]

    def caption(images: list[Image.Image]) -> tuple[list[str], list[Image.Image]]:
        pixels = captioner.preprocess(images)
        ids = captioner.generate(pixels, num_beams=num_beams, max_new_tokens=max_new_tokens)
        lr_images = [unnormalize_pixels(row, settings["image_mean"], settings["image_std"]) for row in pixels]
        return captioner.decode(ids), lr_images

    return caption


def caption_files(
    caption_batch: BatchCaptioner, paths: Sequence[Path], *, batch_size: int = 16
) -> tuple[list[CaptionedImage], list[Path]]:
    """Caption the files (a progress bar when there are many); returns the captions and the unreadable files."""
    captioned, unreadable = [], []
    with tqdm(total=len(paths), unit="img", desc="captioning", disable=len(paths) <= batch_size) as progress:
        for start in range(0, len(paths), batch_size):
            batch = []
            for path in paths[start : start + batch_size]:
                try:
                    batch.append((path, open_image(path)))
                except ValueError as error:
                    logger.warning("%s, skipped", error)
                    unreadable.append(path)
            if batch:
                captions, lr_images = caption_batch([image for _, image in batch])
                captioned += [
                    CaptionedImage(path, caption, lr_image)
                    for (path, _), caption, lr_image in zip(batch, captions, lr_images)
                ]
            progress.update(len(paths[start : start + batch_size]))
    return captioned, unreadable
