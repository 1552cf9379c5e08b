"""Training-time guard: open a row's image without crashing the epoch on a bad file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import PIL.Image
from datasets import Image

from .bad_samples import IMAGE_ERRORS, OnBadSample, check_policy, image_error_sample

logger = logging.getLogger(__name__)


def safe_load_image(row: Mapping[str, Any], on_bad_sample: OnBadSample = "skip") -> PIL.Image.Image | None:
    """Decode the image of a dataset row, applying the bad-sample policy if that fails.

    Decoding is the same as ``datasets.Image()``'s (EXIF orientation applied, native mode).
    The row's ``image`` may be a decoded ``PIL.Image`` (returned as is) or the undecoded
    ``{"path", "bytes"}`` dict; otherwise ``image_path`` is opened. Rows of a dataset
    whose ``image`` column decodes on access fail inside ``datasets`` before reaching this
    function, so in a training loop read rows without decoding, e.g.::

        train = dataset.cast_column("image", datasets.Image(decode=False))

        def collate(rows):
            pairs = [(image, row) for row in rows if (image := safe_load_image(row)) is not None]
            ...

    Args:
        row: A row with ``image`` and/or ``image_path`` (and ``image_id``, used in messages).
        on_bad_sample: "skip" logs a warning and returns None; "error" raises.

    Returns:
        The decoded image, or None when it cannot be read under the "skip" policy.

    Raises:
        ValueError: under "error", naming the image path and the row's ``image_id``.
    """
    check_policy(on_bad_sample)
    image = row.get("image")
    if isinstance(image, PIL.Image.Image):
        return image
    encoded = image if isinstance(image, dict) else {"path": row.get("image_path"), "bytes": None}
    try:
        return Image().decode_example(encoded)
    except IMAGE_ERRORS as error:
        sample = image_error_sample(str(encoded.get("path")), f"image_id {row.get('image_id')!r}", error)
        if on_bad_sample == "error":
            raise ValueError(sample.message) from error
        logger.warning("skipping image: %s", sample.message)
        return None
