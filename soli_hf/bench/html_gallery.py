"""A self-contained HTML page of images with captions (images inlined as PNG, pixels kept sharp), written card by
card and renamed into place when complete. A card may also draw numbered, coloured boxes over its photo (inline SVG)
with each box's caption listed beside: the page of `soli caption --box ... --html`."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

STYLE = (
    "body{font-family:sans-serif;margin:1em} .grid{display:flex;flex-wrap:wrap;gap:12px}"
    ".card{width:300px;border:1px solid #ccc;padding:8px} img{width:192px;image-rendering:pixelated}"
    ".refs{color:#555;font-size:90%} .heading{color:#888;font-size:80%} img.photo{image-rendering:auto}"
    ".card.wide{width:auto;max-width:1000px} .region-view{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}"
    "svg.photo{width:480px;max-width:100%;height:auto} ol.regions{list-style:none;padding:0}"
    ".number{display:inline-block;min-width:1.5em;color:#fff;text-align:center;border-radius:3px;margin-right:6px}"
)
#: The colours of the boxes drawn over a photo, in order (repeated after the tenth; the numbers still tell them apart).
BOX_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#9a6324",
    "#808000",
    "#000075",
)
#: The longest side the photo under the boxes is embedded at (the boxes keep the photo's own pixel coordinates).
REGION_PHOTO_SIDE = 960


@dataclass
class GalleryRegion:
    """A box drawn over a card's photo, numbered in order, with its caption listed beside.

    Attributes:
        box: (x0, y0, x1, y1) in the photo's pixels.
        caption: the box's caption.
        note: shown after the caption, e.g. a proposed region's class and score.
    """

    box: tuple[float, float, float, float]
    caption: str
    note: str = ""


@dataclass
class GalleryCard:
    """One image, a small heading, labelled captions and (optionally) reference captions; `photo`, when given, is
    the original shown smooth above `image` (the LR input). With `regions`, the photo (then required) is drawn with
    each region's numbered box, and the regions' captions are listed beside it."""

    image: Image.Image
    heading: str
    captions: Sequence[tuple[str, str]]
    references: Sequence[str] = field(default_factory=tuple)
    photo: Image.Image | None = None
    regions: Sequence[GalleryRegion] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.regions and self.photo is None:
            raise ValueError(f"{self.heading}: a card with regions needs the photo to draw their boxes on")


def image_data_uri(image: Image.Image, image_format: str = "PNG") -> str:
    """`data:image/png;base64,...` of an image (or `image/jpeg` with `image_format="JPEG"`), for an <img src>."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return f"data:image/{image_format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value: float) -> str:
    """A coordinate for an SVG attribute: at most two decimals, no trailing zeros."""
    return f"{round(value, 2):g}"


def photo_with_boxes(photo: Image.Image, regions: Sequence[GalleryRegion]) -> str:
    """An inline SVG of `photo` (embedded as a JPEG data URI, at most `REGION_PHOTO_SIDE` pixels a side) with each
    region's box drawn over it in its colour and numbered from 1 (one `<g class="box">` per region)."""
    width, height = photo.size
    shown = photo.convert("RGB")
    shown.thumbnail((REGION_PHOTO_SIDE, REGION_PHOTO_SIDE))
    tag = max(width, height) / 20  # the number's square, in photo pixels
    parts = [
        f'<svg class="photo" viewBox="0 0 {width} {height}" role="img" aria-label="the photo with {len(regions)} '
        f'numbered boxes"><image href="{image_data_uri(shown, "JPEG")}" width="{width}" height="{height}"/>'
    ]
    for number, region in enumerate(regions, 1):
        colour = BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
        x0, y0, x1, y1 = region.box
        parts.append(
            f'<g class="box"><rect x="{_number(x0)}" y="{_number(y0)}" width="{_number(x1 - x0)}" '
            f'height="{_number(y1 - y0)}" fill="none" stroke="{colour}" stroke-width="3" '
            f'vector-effect="non-scaling-stroke"/><rect x="{_number(x0)}" y="{_number(y0)}" width="{_number(tag)}" '
            f'height="{_number(tag)}" fill="{colour}"/><text x="{_number(x0 + tag / 2)}" y="{_number(y0 + tag * 0.8)}" '
            f'font-size="{_number(tag * 0.8)}" text-anchor="middle" fill="#fff">{number}</text>'
            f"<title>{number}: {html.escape(region.caption)}</title></g>"
        )
    return "".join(parts) + "</svg>"


def _region_list(regions: Sequence[GalleryRegion]) -> str:
    """The numbered captions of the regions, each number in its box's colour."""
    items = []
    for number, region in enumerate(regions, 1):
        colour = BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
        note = f' <span class="refs">({html.escape(region.note)})</span>' if region.note else ""
        items.append(
            f'<li><span class="number" style="background:{colour}">{number}</span>{html.escape(region.caption)}'
            f"{note}</li>"
        )
    return f'<ol class="regions">{"".join(items)}</ol>'


def card_html(card: GalleryCard) -> str:
    """The HTML block of one card."""
    if card.regions:
        return (
            f'<div class="card wide"><div class="region-view">{photo_with_boxes(card.photo, card.regions)}'
            f"{_region_list(card.regions)}</div>{_card_body(card)}</div>"
        )
    photo = "" if card.photo is None else f'<img class="photo" src="{image_data_uri(card.photo, "JPEG")}" alt="photo">'
    return f'<div class="card">{photo}{_card_body(card)}</div>'


def _card_body(card: GalleryCard) -> str:
    """The LR input, the heading, the labelled captions and the references of a card."""
    captions = "".join(
        f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" if label else f"<li>{html.escape(text)}</li>"
        for label, text in card.captions
    )
    references = "".join(f"<li>{html.escape(reference)}</li>" for reference in card.references)
    return (
        f'<img src="{image_data_uri(card.image)}" alt="{html.escape(card.heading)}">'
        f'<p class="heading">{html.escape(card.heading)} ({card.image.width}x{card.image.height} input)</p>'
        + (f"<ul>{captions}</ul>" if captions else "")
        + (f'<p>references</p><ol class="refs">{references}</ol>' if references else "")
    )


class GalleryWriter:
    """Writes a page card by card into a temporary file beside `path`, and renames it to `path` when closed: the
    page at `path` is never half-written, and the cards are never all held in memory.

    As a context manager the page is completed even when the block ends with an exception, so a run stopped with
    Ctrl-C keeps the cards it made. A killed process leaves the old page (if any) and a stray `.NAME.tmp-PID`.
    """

    def __init__(self, path: Path, title: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = open(self._tmp, "w", encoding="utf-8")
        self._file.write(
            f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f'<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><div class="grid">'
        )

    def add(self, card: GalleryCard) -> None:
        """Append one card."""
        self._file.write(card_html(card))

    def close(self) -> None:
        """Complete the page, flush it to disk and rename it into place (once; later calls do nothing)."""
        if self._file.closed:
            return
        try:
            self._file.write("</div></body></html>\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        finally:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> GalleryWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_gallery(path: Path, title: str, cards: Iterable[GalleryCard]) -> None:
    """Write the page (one file, no external resources), atomically."""
    with GalleryWriter(path, title) as page:
        for card in cards:
            page.add(card)
