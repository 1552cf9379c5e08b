"""Flickr30k Entities regions: one row per (photo, phrase chain with at least one box).

The annotation folder (``data_format="flickr30k_entities"``) has the official release's layout:

- ``Sentences/<flickr id>.txt``: the five captions, phrases marked as ``[/EN#<chain id>/<type>[/<type>...] <words>]``;
- ``Annotations/<flickr id>.xml``: the original photo's ``<size>``, then one ``<object>`` per box, whose ``<name>``\\ s
  are the chains it belongs to and whose ``<bndbox>`` is in original-photo pixels; an object without ``<bndbox>``
  (``<nobndbox>``/``<scene>`` flags) declares a chain without a box.

The photos and the split lists are the Flickr8k folder's (``images``, by default the sibling folder
``../flickr8k``): ``Flicker8k_Dataset/<flickr id>_<suffix>.jpg`` and ``Flickr8k_text/Flickr_8k.<split>Images.txt``.
A row's box is in pixels of the photo as stored there (the XML box scaled by photo size / ``<size>``); a chain with
several boxes ("two men") gets their union. Its references are all the chain's phrases across the captions.

Phrases of chains that have no box by design (flagged ``<nobndbox>``/``<scene>``, or typed ``notvisual``, which the
XML does not list) are not regions and are only counted. Bad samples, each naming the file, row and value:

- ``missing_image`` / ``unreadable_image``: the photo (checked as by :func:`~soli_hf.data.load_caption_dataset`);
- ``malformed_entry``: a missing or unparseable annotation file, a ``<size>`` or ``<bndbox>`` that is not numbers,
  an ``<object>`` without a chain name, caption markup that does not parse (the caption line is skipped), a phrase
  whose chain the XML neither boxes nor declares box-less;
- ``bad_box``: an inverted, degenerate (zero width or height) or out-of-image box; its chains are dropped.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import PIL.Image
from datasets import Dataset, DatasetInfo, NamedSplit

from .bad_samples import (
    IMAGE_ERRORS,
    BadSample,
    BadSampleHandler,
    BadSampleKind,
    BadSampleReport,
    Handle,
    OnBadSample,
    VerifyImages,
    check_image,
    check_policy,
    check_verify_images,
    default_num_workers,
    image_error_sample,
)
from .readers import FLICKR8K_IMAGE_DIR, FLICKR8K_TEXT_DIR, flickr8k_split_files, numbered_lines, resolve_split
from .records import REGION_FEATURES

logger = logging.getLogger(__name__)

FLICKR30K_SENTENCES_DIR = "Sentences"
FLICKR30K_ANNOTATIONS_DIR = "Annotations"
#: The default ``images`` folder, beside the annotation folder.
DEFAULT_IMAGES_FOLDER = "flickr8k"
#: The phrase type of chains that name nothing visible; the XML does not list them.
NOT_VISUAL = "notvisual"

#: One marked phrase: ``[/EN#<chain id>/<type>[/<type>...] <words>]``.
_PHRASE = re.compile(r"\[/EN#(?P<chain>\d+)(?P<types>(?:/[^\s/\[\]]+)+) (?P<words>[^\[\]]*)\]")
_BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")

Box = tuple[float, float, float, float]
#: A bad box: its kind (malformed entry or bad box) and the detail.
_Problem = tuple[BadSampleKind, str]


@dataclass
class RegionRecord:
    """One region row (see :data:`~soli_hf.data.records.REGION_FEATURES`)."""

    image_id: str
    image_path: str
    box: Box
    references: list[str]
    phrase_type: str
    num_boxes: int
    chain_id: str


@dataclass
class RegionCounts:
    """What a split holds, for the dataset description and the README's figures."""

    photos: int = 0
    regions: int = 0
    phrases: int = 0  # phrases whose chain has a box (phrase-box pairs in the release's count)
    boxes: int = 0  # distinct <bndbox> elements used by the regions
    multi_box_regions: int = 0  # chains with several boxes (their union is the region's box)
    phrases_without_box: int = 0  # phrases of chains with no box by design (scene, not visual, ...)

    def describe(self) -> str:
        """One line with every count."""
        return (
            f"{self.photos} photos, {self.regions} regions, {self.phrases} phrases with a box, {self.boxes} boxes, "
            f"{self.multi_box_regions} regions with several boxes (union box), "
            f"{self.phrases_without_box} phrases of chains without a box"
        )


@dataclass
class _Annotation:
    """One photo's XML: the boxes of each chain (original pixels) and the chains without a usable box."""

    size: tuple[float, float]
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    box_ids: dict[str, list[int]] = field(default_factory=dict)  # object index of each box, to count distinct ones
    without_box: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)  # chains with a bad box (already reported)


@dataclass
class _Phrase:
    chain_id: str
    types: list[str]
    words: str
    text: str  # the markup as written, for messages
    row: str


def load_region_dataset(
    path: str | Path,
    split: str = "train",
    images: str | Path | None = None,
    on_bad_sample: OnBadSample = "skip",
    verify_images: VerifyImages = True,
    num_workers: int | None = None,
) -> Dataset:
    """Load Flickr30k Entities regions: one row per (photo, phrase chain with at least one box).

    Args:
        path: The Flickr30k Entities folder (``Sentences/``, ``Annotations/``).
        split: A split of the Flickr8k split lists ("train", "dev"; "val"/"validation" find "dev").
        images: The Flickr8k root folder whose ``Flicker8k_Dataset`` photos and ``Flickr8k_text`` split lists the
            annotations cover; default: the folder ``flickr8k`` beside ``path``.
        on_bad_sample: "skip" drops bad samples and logs one summary; "error" raises ``ValueError`` naming the file,
            row and value of the first one (see the module docstring for what is checked).
        verify_images: How each photo is checked, as in :func:`~soli_hf.data.load_caption_dataset`.
        num_workers: Threads used to check photos (default: 2 x CPU count, at most 16).

    Returns:
        An in-memory ``datasets.Dataset`` with :data:`~soli_hf.data.records.REGION_FEATURES`: ``image_id`` (the
        photo's file name), ``image`` and ``image_path`` (its absolute path), ``box`` ([x0, y0, x1, y1] in pixels of
        that photo; the union of the chain's boxes), ``references`` (the chain's phrases across the captions,
        lower-cased, in caption order), ``phrase_type`` (the first type of the chain's first phrase), ``num_boxes``
        and ``chain_id``. ``dataset.info.description`` carries the :class:`RegionCounts` and the bad-sample counts.

    Raises:
        FileNotFoundError: if ``path`` or the ``images`` folder does not exist.
        ValueError: for an unknown split, a bad sample under "error", or when no usable region is left.
    """
    dataset, _ = load_region_dataset_with_report(path, split, images, on_bad_sample, verify_images, num_workers)
    return dataset


def load_region_dataset_with_report(
    path: str | Path,
    split: str = "train",
    images: str | Path | None = None,
    on_bad_sample: OnBadSample = "skip",
    verify_images: VerifyImages = True,
    num_workers: int | None = None,
) -> tuple[Dataset, BadSampleReport]:
    """Like :func:`load_region_dataset`, also returning the report of skipped bad samples."""
    check_policy(on_bad_sample)
    check_verify_images(verify_images)
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"Flickr30k Entities folder (with Sentences/ and Annotations/) not found: {path}")
    images = Path(images).absolute() if images is not None else path.parent / DEFAULT_IMAGES_FOLDER
    if not images.is_dir():
        raise FileNotFoundError(
            f"Flickr8k folder (photos and split lists) not found: {images}; pass images=<the Flickr8k root folder>"
        )
    handle = BadSampleHandler(on_bad_sample)
    records, counts = read_flickr30k_entities(path, split, handle, images, verify_images, num_workers)
    report = handle.report
    if report:
        logger.warning("flickr30k_entities %s split %r: %s", path, split, report.summary())
    if not records:
        raise ValueError(f"no usable region in flickr30k_entities data {path} (split {split!r}): {report.summary()}")
    description = (
        f"flickr30k_entities regions from {path} with the photos of {images}, split {split!r}: "
        f"{counts.describe()}; bad samples skipped: {report.counts}"
    )
    return region_records_to_dataset(records, split, description), report


def read_flickr30k_entities(
    root: Path,
    split: str,
    handle: Handle,
    images: Path,
    verify_images: VerifyImages = True,
    num_workers: int | None = None,
) -> tuple[list[RegionRecord], RegionCounts]:
    """Read the regions of the photos of one Flickr8k split, checking each photo on a thread pool.

    Photos are examined in split-list order, so under the "error" policy the first bad sample in that order is the one
    raised.
    """
    text_dir = images / FLICKR8K_TEXT_DIR
    split_pattern = f"{text_dir}/Flickr_8k.<split>Images.txt"
    split_file = resolve_split(split, flickr8k_split_files(text_dir), split_pattern)
    photos = [
        (name.strip(), f"{split_file} line {line_no}", str(images / FLICKR8K_IMAGE_DIR / name.strip()))
        for line_no, name in numbered_lines(split_file, handle)
    ]
    records: list[RegionRecord] = []
    counts = RegionCounts()
    pool = ThreadPoolExecutor(num_workers or default_num_workers())
    try:
        sizes = pool.map(lambda photo: _photo_size(photo[2], photo[1], verify_images), photos)
        for (name, row, image_path), size in zip(photos, sizes, strict=True):
            if isinstance(size, BadSample):
                handle(size)
                continue
            regions = _photo_regions(root, name, image_path, size, row, handle, counts)
            if regions:
                counts.photos += 1
                records.extend(regions)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return records, counts


def region_records_to_dataset(records: list[RegionRecord], split: str, description: str) -> Dataset:
    """Build an in-memory dataset (no cache files) with :data:`~soli_hf.data.records.REGION_FEATURES`."""
    columns = {
        "image_id": [record.image_id for record in records],
        "image": [record.image_path for record in records],
        "image_path": [record.image_path for record in records],
        "box": [list(record.box) for record in records],
        "references": [record.references for record in records],
        "phrase_type": [record.phrase_type for record in records],
        "num_boxes": [record.num_boxes for record in records],
        "chain_id": [record.chain_id for record in records],
    }
    info = DatasetInfo(description=description, features=REGION_FEATURES)
    return Dataset.from_dict(columns, features=REGION_FEATURES, info=info, split=NamedSplit(split))


def flickr_id(file_name: str) -> str:
    """The Flickr id of a Flickr8k (``1000268201_693b08cb0e.jpg``) or Flickr30k (``1000268201.jpg``) file name."""
    return PurePosixPath(file_name).stem.partition("_")[0]


def _photo_size(image_path: str, row: str, verify: VerifyImages) -> tuple[int, int] | BadSample:
    """The photo's (width, height), or the problem with it."""
    problem = check_image(image_path, row, verify)
    if problem is not None:
        return problem
    try:
        with PIL.Image.open(image_path) as image:
            return image.size
    except IMAGE_ERRORS as error:
        return image_error_sample(image_path, row, error)


def _photo_regions(
    root: Path,
    name: str,
    image_path: str,
    photo_size: tuple[int, int],
    row: str,
    handle: Handle,
    counts: RegionCounts,
) -> list[RegionRecord]:
    """The regions of one photo, in the order their chains first appear in the captions."""
    xml_path = root / FLICKR30K_ANNOTATIONS_DIR / f"{flickr_id(name)}.xml"
    sentences_path = root / FLICKR30K_SENTENCES_DIR / f"{flickr_id(name)}.txt"
    for annotation_file in (xml_path, sentences_path):
        if not annotation_file.is_file():
            detail = f"no annotation file for photo {name!r}"
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(annotation_file), row, detail))
            return []
    annotation = _read_annotation(xml_path, handle)
    if annotation is None:
        return []
    chains: dict[str, list[_Phrase]] = {}
    for phrase in _read_phrases(sentences_path, handle):
        if phrase.chain_id in annotation.boxes:
            chains.setdefault(phrase.chain_id, []).append(phrase)
        elif phrase.chain_id in annotation.broken:
            continue
        elif phrase.chain_id in annotation.without_box or NOT_VISUAL in phrase.types:
            counts.phrases_without_box += 1
        else:
            detail = (
                f"phrase {phrase.text!r}: chain {phrase.chain_id} has no <bndbox> in {xml_path} and no object "
                f"declaring it box-less (<nobndbox>/<scene>)"
            )
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(sentences_path), phrase.row, detail))
    scale_x, scale_y = photo_size[0] / annotation.size[0], photo_size[1] / annotation.size[1]
    regions = []
    box_ids: set[int] = set()
    for chain_id, phrases in chains.items():
        boxes = annotation.boxes[chain_id]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        box = (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y)
        references = [phrase.words for phrase in phrases]
        regions.append(RegionRecord(name, image_path, box, references, phrases[0].types[0], len(boxes), chain_id))
        box_ids.update(annotation.box_ids[chain_id])
        counts.phrases += len(phrases)
        counts.multi_box_regions += len(boxes) > 1
    counts.regions += len(regions)
    counts.boxes += len(box_ids)
    return regions


def _read_annotation(xml_path: Path, handle: Handle) -> _Annotation | None:
    """Parse one photo's XML; None (reported) when the file or its ``<size>`` is unusable."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as error:
        line, column = error.position
        detail = f"not well-formed XML ({error})"
        handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(xml_path), f"{xml_path} line {line}", detail))
        return None
    root = tree.getroot()
    size = [_number(root.findtext(f"size/{key}")) for key in ("width", "height")]
    if any(value is None or value <= 0 for value in size):
        found = {key: root.findtext(f"size/{key}") for key in ("width", "height")}
        detail = f"expected a positive <size> <width> and <height>, found {found}"
        handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(xml_path), f"{xml_path} <size>", detail))
        return None
    width, height = size
    annotation = _Annotation(size=(width, height))
    for index, element in enumerate(root.iter("object")):
        row = f"{xml_path} <object>[{index}]"
        names = [name.text.strip() for name in element.findall("name") if name.text and name.text.strip()]
        bndbox = element.find("bndbox")
        if not names:
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(xml_path), row, "<object> without a chain <name>"))
            continue
        if bndbox is None:
            annotation.without_box.update(names)
            continue
        box, problem = _parse_box(bndbox, width, height)
        if problem is not None:
            kind, detail = problem
            handle(BadSample(kind, str(xml_path), row, f"chain(s) {', '.join(names)}: {detail}"))
            annotation.broken.update(names)
            continue
        for name in names:
            annotation.boxes.setdefault(name, []).append(box)
            annotation.box_ids.setdefault(name, []).append(index)
    for name in annotation.broken:
        annotation.boxes.pop(name, None)
    return annotation


def _parse_box(bndbox: ET.Element, width: float, height: float) -> tuple[Box, None] | tuple[None, _Problem]:
    """A ``<bndbox>`` of a ``width`` x ``height`` photo as ``(box, None)``, or ``(None, (kind, detail))``."""
    found = {key: bndbox.findtext(key) for key in _BOX_FIELDS}
    values = [_number(found[key]) for key in _BOX_FIELDS]
    if any(value is None for value in values):
        detail = f"expected numbers in <bndbox> {'/'.join(_BOX_FIELDS)}, found {found}"
        return None, (BadSampleKind.MALFORMED_ENTRY, detail)
    x0, y0, x1, y1 = values
    box = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if x1 < x0 or y1 < y0:
        return None, (BadSampleKind.BAD_BOX, f"inverted {box}: xmax < xmin or ymax < ymin")
    if x1 == x0 or y1 == y0:
        return None, (BadSampleKind.BAD_BOX, f"degenerate {box}: zero width or height")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return None, (BadSampleKind.BAD_BOX, f"{box} outside the {width:g}x{height:g} photo of <size>")
    return (x0, y0, x1, y1), None


def _number(text: str | None) -> float | None:
    """``text`` as a finite float, or None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_phrases(sentences_path: Path, handle: Handle) -> Iterator[_Phrase]:
    """Yield the marked phrases of a Sentences file; a line whose markup does not parse is reported and skipped."""
    for line_no, line in numbered_lines(sentences_path, handle):
        row = f"{sentences_path} line {line_no}"
        matches = list(_PHRASE.finditer(line))
        unmarked = _PHRASE.sub(" ", line)
        empty = next((m.group() for m in matches if not m.group("words").split()), None)
        if "[" in unmarked or "]" in unmarked or empty is not None:
            where = f"empty phrase {empty!r}" if empty is not None else f"stray bracket in {unmarked.strip()!r}"
            detail = f"malformed phrase markup ({where}); expected '[/EN#<chain id>/<type> <words>]' in {line!r}"
            handle(BadSample(BadSampleKind.MALFORMED_ENTRY, str(sentences_path), row, detail))
            continue
        for match in matches:
            words = " ".join(match.group("words").lower().split())
            types = match.group("types").strip("/").split("/")
            yield _Phrase(match.group("chain"), types, words, match.group(), row)
