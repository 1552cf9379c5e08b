"""Captions of photos outside Flickr8k, model beside model (`python scripts/benchmark.py photos`).

Every model (a saved SOLI folder or Hub id, or an exported ONNX folder, loaded with `load_captioner`) captions every
photo of a photo set (`sample_photos.read_photo_set`, by default benchmarks/photos_outside_flickr) with its own
generation config. Written next to each other: the JSON (per photo: file, what it shows, source, each model's
caption), a Markdown report (a table photo | a caption per model, and per model its decoding, LR input and number
of distinct captions) and an HTML page (per photo: the photo, the LR input as the first model saw it, each model's
caption).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..captioner import Captioner, load_captioner
from ..storage import write_text_atomically
from .html_gallery import GalleryCard, write_gallery
from .markdown import markdown_table
from .sample_photos import SetPhoto

#: How a model is given: ("model", a saved SOLI folder or Hub id) or ("onnx", an exported ONNX folder).
BACKENDS = ("model", "onnx")
#: The side of the photo shown above the LR input on the page.
THUMBNAIL_SIDE = 192


@dataclass(frozen=True)
class ReportModel:
    """A model to caption with: `location` is a saved SOLI folder or Hub id (`backend` "model") or an exported
    ONNX folder (`backend` "onnx"); `name` labels its column."""

    name: str
    backend: str
    location: str

    def load(self) -> Captioner:
        """The captioner, through the package's one loader."""
        if self.backend == "onnx":
            return load_captioner(onnx=self.location)
        return load_captioner(self.location)


def report_models(sources: Sequence[tuple[str, str]], names: Sequence[str] = ()) -> list[ReportModel]:
    """The models of `sources` ((backend, location) pairs, in order), named by `names` (one per model) or else by
    their folder's name.

    Raises:
        ValueError: no model, an unknown backend, a number of names other than the number of models, or two
            models with the same name.
    """
    if not sources:
        raise ValueError("give at least one model (--model DIR or --onnx DIR)")
    unknown = sorted({backend for backend, _ in sources} - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; expected one of {list(BACKENDS)}")
    if names and len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} models: give one --name per model, or none")
    labels = list(names) or [Path(location.rstrip("/")).name for _, location in sources]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"two models named {repeated}: give each its own --name")
    return [ReportModel(label, backend, location) for label, (backend, location) in zip(labels, sources, strict=True)]


@dataclass
class PhotoSetCaptions:
    """Each model's caption of each photo, with what the page shows beside them.

    Attributes:
        photos: the photos, in the set's order; `images` the photos themselves (RGB).
        lr_images: each photo's LR input as the first model saw it.
        models: per model (in order) its name, backend, location, decoding, inference branches and preprocessing.
        captions: model name -> one caption per photo.
    """

    photos: list[SetPhoto]
    images: list[Image.Image]
    lr_images: list[Image.Image]
    models: list[dict[str, Any]]
    captions: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        """The JSON report: the models (with their number of distinct captions) and, per photo, its file, what it
        shows, its source and licence, and each model's caption."""
        models = [model | {"distinct_captions": len(set(self.captions[model["name"]]))} for model in self.models]
        photos = [
            {
                "file": photo.file,
                "shows": photo.shows,
                "source": f"{photo.package} {photo.version}: {photo.original_path}",
                "licence": photo.licence,
                "attribution": photo.attribution,
                "captions": {name: captions[index] for name, captions in self.captions.items()},
            }
            for index, photo in enumerate(self.photos)
        ]
        return {"models": models, "photos": photos}


def caption_photo_set(
    models: Sequence[ReportModel], photos: Sequence[SetPhoto], *, batch_size: int = 8
) -> PhotoSetCaptions:
    """Caption every photo with every model (each loaded in turn, decoding as its generation config says).

    Raises:
        ValueError: a photo that cannot be read (`ImageInputError`, naming the file), before any model is loaded;
            a model that cannot be loaded (naming it).
    """
    images = [photo.open() for photo in photos]
    result = PhotoSetCaptions(list(photos), images, lr_images=[], models=[], captions={})
    with tqdm(total=len(models) * len(images), desc="captioning", unit="photo", dynamic_ncols=True) as progress:
        for model in models:
            progress.set_postfix_str(model.name)
            captioner = model.load()
            captions = result.captions[model.name] = []
            for start in range(0, len(images), batch_size):
                pixel_values = captioner.preprocess(images[start : start + batch_size])
                captions += captioner.caption_pixels(pixel_values)
                if len(result.models) == 0:
                    result.lr_images += captioner.lr_images(pixel_values)
                progress.update(len(pixel_values))
            result.models.append(
                {
                    "name": model.name,
                    "backend": model.backend,
                    "location": model.location,
                    "decoding": captioner.decoding(),
                    "inference_branches": captioner.inference_branches,
                    "preprocessing": captioner.preprocessing,
                }
            )
    return result


def outside_photos_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a JSON report (`PhotoSetCaptions.to_json`)."""
    models, photos = report["models"], report["photos"]
    model_rows = [
        [
            f"**{model['name']}**",
            f"`{model['location']}` ({model['backend']})",
            f"beam {model['decoding']['num_beams']}, <= {model['decoding']['max_new_tokens']} new tokens",
            f"{model['preprocessing']['image_size']} px {model['preprocessing']['degradation']}, "
            f"branches {model['inference_branches']}",
            f"{model['distinct_captions']} / {len(photos)}",
        ]
        for model in models
    ]
    photo_rows = [
        [f"`{Path(photo['file']).stem}`: {photo['shows']}", *(photo["captions"][model["name"]] for model in models)]
        for photo in photos
    ]
    names = [model["name"] for model in models]
    return "\n\n".join(
        [
            "# Captions of photos outside Flickr8k",
            f"{len(photos)} freely licensed photographs that are not from Flickr8k or Flickr30k (sources and "
            "licences: `SOURCES.md` of the photo set), each reduced to the model's low-resolution input. Each model "
            "decodes with its own generation config. The HTML page beside this report shows every photo, its LR "
            f"input as {names[0]} saw it and the captions.",
            markdown_table(["model", "loaded from", "decoding", "LR input", "distinct captions"], model_rows),
            markdown_table(["photo", *names], photo_rows),
        ]
    )


def write_outside_photos_report(result: PhotoSetCaptions, out: Path) -> dict[str, Any]:
    """Write the JSON report at `out` and, next to it, the Markdown report (.md) and the page (.html); returns the
    JSON report."""
    report = result.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomically(out.with_suffix(".md"), outside_photos_markdown(report) + "\n")
    cards = []
    for index, (photo, image, lr_image) in enumerate(zip(result.photos, result.images, result.lr_images, strict=True)):
        thumbnail = image.copy()
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        captions = [(name, captions[index]) for name, captions in result.captions.items()]
        heading = f"{photo.name}: {photo.shows}. {photo.attribution}; {photo.licence}"
        cards.append(GalleryCard(lr_image, heading, captions, photo=thumbnail))
    write_gallery(out.with_suffix(".html"), "Captions of photos outside Flickr8k", cards)
    return report
