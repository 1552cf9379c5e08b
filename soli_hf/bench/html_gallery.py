"""A self-contained HTML page of images with captions (images inlined as PNG, pixels kept sharp), written card by
card and renamed into place when complete."""

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
)


@dataclass
class GalleryCard:
    """One image, a small heading, labelled captions and (optionally) reference captions; `photo`, when given, is
    the original shown smooth above `image` (the LR input)."""

    image: Image.Image
    heading: str
    captions: Sequence[tuple[str, str]]
    references: Sequence[str] = field(default_factory=tuple)
    photo: Image.Image | None = None


def image_data_uri(image: Image.Image, image_format: str = "PNG") -> str:
    """`data:image/png;base64,...` of an image (or `image/jpeg` with `image_format="JPEG"`), for an <img src>."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return f"data:image/{image_format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card_html(card: GalleryCard) -> str:
    """The HTML block of one card."""
    captions = "".join(
        f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" if label else f"<li>{html.escape(text)}</li>"
        for label, text in card.captions
    )
    references = "".join(f"<li>{html.escape(reference)}</li>" for reference in card.references)
    photo = "" if card.photo is None else f'<img class="photo" src="{image_data_uri(card.photo, "JPEG")}" alt="photo">'
    return (
        f'<div class="card">{photo}<img src="{image_data_uri(card.image)}" alt="{html.escape(card.heading)}">'
        f'<p class="heading">{html.escape(card.heading)} ({card.image.width}x{card.image.height} input)</p>'
        f"<ul>{captions}</ul>"
        + (f'<p>references</p><ol class="refs">{references}</ol>' if references else "")
        + "</div>"
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
