"""Bad-sample detection, reporting and the skip/error policy.

A *bad sample* is a problem found while loading: a missing or unreadable image, an
empty caption, an image without captions, a malformed annotation entry, a line of
an annotation file that is not UTF-8, or (region data) a box that is inverted,
degenerate or outside its photo. Readers and the validator pass each one to a
:class:`BadSampleHandler`, which either raises ``ValueError`` at once
(``on_bad_sample="error"``) or records it in a :class:`BadSampleReport`
(``on_bad_sample="skip"``) while the sample is dropped.

What the image check (``verify_images``) catches:

- ``False``: only that the file exists.
- ``True`` (the default, cheap): PIL parses the header (a file that is not an image,
  or has a broken header, fails); a PNG is verified chunk by chunk (each chunk's CRC,
  up to IEND), which catches truncation and flipped bytes; a JPEG that ends with its
  end-of-image marker (FF D9) passes without decoding; a JPEG without it and every
  other format are decoded (JPEGs at 1/8 scale, which still reads every byte), which
  catches truncation.
- ``"full"``: every image is decoded as above, the JPEGs that end with FF D9 too; this
  also catches a JPEG whose middle is broken (bytes the decoder rejects) but whose end
  is intact, at the cost of decoding every JPEG once.

Neither check can tell a JPEG whose middle was overwritten with data the decoder
accepts (a run of zero bytes, say) from a real photo: it decodes without an error,
into a partly grey or smeared picture. JPEG has no checksum to catch that.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import Literal

import PIL.Image

from .records import CaptionEntry, CaptionRecord

OnBadSample = Literal["skip", "error"]
ON_BAD_SAMPLE_CHOICES: tuple[str, ...] = ("skip", "error")

#: How images are checked while loading (see the module docstring): existence only, cheap, or a full decode.
VerifyImages = bool | Literal["full"]
VERIFY_IMAGES_CHOICES: tuple[VerifyImages, ...] = (True, False, "full")

#: Exceptions PIL raises for files it cannot open or decode (``UnidentifiedImageError``,
#: ``FileNotFoundError`` and truncation errors are ``OSError``s).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


class BadSampleKind(StrEnum):
    """The kinds of problem a loader reports."""

    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    EMPTY_CAPTION = "empty_caption"
    NO_CAPTIONS = "no_captions"
    MALFORMED_ENTRY = "malformed_entry"
    UNDECODABLE_LINE = "undecodable_line"
    BAD_BOX = "bad_box"  # a region box that is inverted, degenerate or outside its photo


@dataclass(frozen=True)
class BadSample:
    """One problem found while loading.

    Attributes:
        kind: What is wrong.
        path: The image file concerned, or the annotation file when no image is known
            (a malformed line).
        row: Where in the annotation files the sample is declared, e.g.
            ``"/data/Flickr8k_text/Flickr8k.token.txt line 12"`` or
            ``"/data/captions.json annotations[40]"``.
        detail: A short human-readable explanation.
    """

    kind: BadSampleKind
    path: str
    row: str
    detail: str

    @property
    def message(self) -> str:
        """One line naming the kind, the path, the row and the detail."""
        return f"{self.kind.value}: {self.path} ({self.row}): {self.detail}"


@dataclass
class BadSampleReport:
    """The bad samples skipped while loading one dataset, in the order they were found."""

    samples: list[BadSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def counts(self) -> dict[str, int]:
        """Number of bad samples per kind (``BadSampleKind`` value -> count)."""
        return dict(Counter(sample.kind.value for sample in self.samples))

    def summary(self, max_examples: int = 5) -> str:
        """Multi-line summary: the count per kind, then the first ``max_examples`` samples."""
        if not self.samples:
            return "no bad samples"
        counts = ", ".join(f"{kind}={count}" for kind, count in self.counts.items())
        shown = self.samples[:max_examples]
        lines = [f"skipped {len(self)} bad sample(s) ({counts}); first {len(shown)}:"]
        lines.extend(f"  {sample.message}" for sample in shown)
        return "\n".join(lines)


#: What readers and the validator call with each bad sample (a :class:`BadSampleHandler`).
Handle = Callable[[BadSample], None]


class BadSampleHandler:
    """Applies the ``on_bad_sample`` policy to each reported :class:`BadSample`."""

    def __init__(self, on_bad_sample: OnBadSample) -> None:
        check_policy(on_bad_sample)
        self.on_bad_sample = on_bad_sample
        self.report = BadSampleReport()

    def __call__(self, sample: BadSample) -> None:
        """Raise ``ValueError(sample.message)`` under "error"; record it under "skip"."""
        if self.on_bad_sample == "error":
            raise ValueError(sample.message)
        self.report.samples.append(sample)


def check_policy(on_bad_sample: str) -> None:
    """Raise ``ValueError`` unless ``on_bad_sample`` is "skip" or "error"."""
    if on_bad_sample not in ON_BAD_SAMPLE_CHOICES:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE_CHOICES}, got {on_bad_sample!r}")


def image_error_sample(path: str, row: str, error: BaseException) -> BadSample:
    """Turn an exception raised while opening ``path`` into a missing/unreadable sample."""
    if not os.path.isfile(path):
        return BadSample(BadSampleKind.MISSING_IMAGE, path, row, "file not found")
    return BadSample(BadSampleKind.UNREADABLE_IMAGE, path, row, f"{type(error).__name__}: {error}")


def check_verify_images(verify_images: object) -> None:
    """Raise ``ValueError`` unless ``verify_images`` is True, False or "full"."""
    if not (isinstance(verify_images, bool) or verify_images == "full"):
        raise ValueError(f"verify_images must be one of {VERIFY_IMAGES_CHOICES}, got {verify_images!r}")


def check_image(path: str, row: str, verify: VerifyImages = True) -> BadSample | None:
    """Return the problem with the image at ``path``, or None if it is usable.

    ``verify`` says how closely the file is checked (see the module docstring): False
    checks only that it exists, True checks it as cheaply as the format allows, "full"
    decodes it.
    """
    if not os.path.isfile(path):
        return BadSample(BadSampleKind.MISSING_IMAGE, path, row, "file not found")
    if not verify:
        return None
    try:
        _verify_image_file(path, full=verify == "full")
    except IMAGE_ERRORS as error:
        return image_error_sample(path, row, error)
    return None


def _verify_image_file(path: str, full: bool = False) -> None:
    """Raise one of :data:`IMAGE_ERRORS` if the image file is corrupt or truncated.

    PIL parses the header on open. A PNG is verified chunk by chunk (CRCs, up to IEND);
    unless ``full``, a JPEG that ends with its end-of-image marker passes on that
    evidence; any other file is decoded, JPEGs at 1/8 scale (PIL's ``draft``), which
    still reads every byte.
    """
    with PIL.Image.open(path) as image:
        if image.format == "PNG":
            image.verify()
        elif full or image.format != "JPEG" or not _ends_with_jpeg_eoi(path):
            image.draft(image.mode, (1, 1))
            image.load()


def _ends_with_jpeg_eoi(path: str) -> bool:
    """True if the file's last two bytes are the JPEG end-of-image marker (FF D9)."""
    with open(path, "rb") as file:
        file.seek(-2, os.SEEK_END)
        return file.read(2) == b"\xff\xd9"


def default_num_workers() -> int:
    """Threads used to check images: twice the CPU count, at most 16."""
    return min(16, 2 * (os.cpu_count() or 1))


def validate_records(
    records: list[CaptionRecord],
    handle: Handle,
    verify_images: VerifyImages = True,
    num_workers: int | None = None,
) -> list[CaptionRecord]:
    """Return the usable records: non-empty captions kept, bad images and empty rows dropped.

    Records are examined in order (images are checked ahead on a thread pool), so under
    the "error" policy the first bad sample in file order is the one raised.
    """
    check = partial(check_image, verify=verify_images)
    kept = []
    pool = ThreadPoolExecutor(num_workers or default_num_workers())
    try:
        image_problems = pool.map(check, [r.image_path for r in records], [r.row for r in records])
        for record, image_problem in zip(records, image_problems, strict=True):
            captions = _non_empty_captions(record, handle)
            if not captions:
                handle(BadSample(BadSampleKind.NO_CAPTIONS, record.image_path, record.row, "no usable caption"))
            elif image_problem is not None:
                handle(image_problem)
            else:
                kept.append(replace(record, captions=captions))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return kept


def _non_empty_captions(record: CaptionRecord, handle: Handle) -> list[CaptionEntry]:
    """Report each empty/whitespace caption of ``record`` and return the others."""
    kept = []
    for entry in record.captions:
        if entry.text.strip():
            kept.append(entry)
        else:
            handle(BadSample(BadSampleKind.EMPTY_CAPTION, record.image_path, entry.row, "empty caption"))
    return kept
