"""Redistributable sample photographs for demos and benchmarks: scikit-image's, public domain or CC0 (see each
`skimage.data.<name>` docstring). Needs the `demo` extra (scikit-image)."""

from __future__ import annotations

from PIL import Image

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def load_sample_photos() -> dict[str, Image.Image]:
    """Name -> photo (full resolution; SOLI's processor makes the LR input)."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in SAMPLE_PHOTOS}
