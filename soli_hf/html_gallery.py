"""A self-contained HTML page of images with captions (images inlined as PNG, pixels kept sharp)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

STYLE = (
    "body{font-family:sans-serif;margin:1em} .grid{display:flex;flex-wrap:wrap;gap:12px}"
    ".card{width:300px;border:1px solid #ccc;padding:8px} img{width:192px;image-rendering:pixelated}"
    ".refs{color:#555;font-size:90%} .heading{color:#888;font-size:80%}"
)


@dataclass
class GalleryCard:
    """One image, a small heading, labelled captions and (optionally) reference captions."""

    image: Image.Image
    heading: str
    captions: Sequence[tuple[str, str]]
    references: Sequence[str] = field(default_factory=tuple)


def image_data_uri(image: Image.Image) -> str:
    """`data:image/png;base64,...` of an image, for an <img src>."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_gallery(path: Path, title: str, cards: Sequence[GalleryCard]) -> None:
    """Write the page (one file, no external resources)."""
    blocks = []
    for card in cards:
        captions = "".join(
            f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" if label else f"<li>{html.escape(text)}</li>"
            for label, text in card.captions
        )
        references = "".join(f"<li>{html.escape(reference)}</li>" for reference in card.references)
        blocks.append(
            f'<div class="card"><img src="{image_data_uri(card.image)}" alt="{html.escape(card.heading)}">'
            f'<p class="heading">{html.escape(card.heading)} ({card.image.width}x{card.image.height} input)</p>'
            f"<ul>{captions}</ul>"
            + (f'<p>references</p><ol class="refs">{references}</ol>' if references else "")
            + "</div>"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>"
        f'</head><body><h1>{html.escape(title)}</h1><div class="grid">{"".join(blocks)}</div></body></html>\n',
        encoding="utf-8",
    )
