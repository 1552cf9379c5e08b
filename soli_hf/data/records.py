"""Format-independent caption records and their conversion to a `datasets.Dataset`.

Every caption format reader produces :class:`CaptionRecord` objects through a
:class:`RecordBuilder`, so the row layout of the final dataset is defined once, here
(the region rows' layout, :data:`REGION_FEATURES`, too).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from datasets import Dataset, DatasetInfo, Features, Image, List, NamedSplit, Value

#: Columns of every caption dataset returned by :func:`soli_hf.data.load_caption_dataset` (every format but the
#: region format "flickr30k_entities", whose columns are :data:`REGION_FEATURES`).
#: ``image`` decodes lazily (on row access) from ``image_path``; ``captions`` are raw.
CAPTION_FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Image(),
        "image_path": Value("string"),
        "captions": List(Value("string")),
    }
)

#: Columns of the region datasets (``data_format="flickr30k_entities"``, see :mod:`soli_hf.data.regions`): one row
#: per (photo, phrase chain with a box). ``image`` is the photo's path (a string: many rows share one photo), as is
#: ``image_path``; ``box`` is [x0, y0, x1, y1] in that photo's pixels; ``references`` are the chain's phrases.
REGION_FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Value("string"),
        "image_path": Value("string"),
        "box": List(Value("float32"), length=4),
        "references": List(Value("string")),
        "phrase_type": Value("string"),
        "num_boxes": Value("int32"),
        "chain_id": Value("string"),
    }
)


@dataclass
class CaptionEntry:
    """One reference caption and where it was read (e.g. ``"/d/Flickr8k.token.txt line 7"``)."""

    text: str
    row: str


@dataclass
class CaptionRecord:
    """One image with its reference captions, before validation.

    Attributes:
        image_id: Identifier of the image, unique within the dataset.
        image_path: Absolute path of the image file.
        row: Where the image was declared in the annotation files.
        captions: The captions found for the image, in file order.
    """

    image_id: str
    image_path: str
    row: str
    captions: list[CaptionEntry] = field(default_factory=list)


class RecordBuilder:
    """Collects images and captions in first-seen order, merging repeated images."""

    def __init__(self) -> None:
        self._records: dict[str, CaptionRecord] = {}

    def add_image(self, image_id: str, image_path: str, row: str) -> str | None:
        """Declare an image; a repeated ``image_id`` keeps its first path and row.

        Returns:
            None for a new ``image_id``; for a repeated one, the row that first declared it.
        """
        first = self._records.get(image_id)
        if first is not None:
            return first.row
        self._records[image_id] = CaptionRecord(image_id, image_path, row)
        return None

    def add_caption(self, image_id: str, text: str, row: str) -> bool:
        """Attach a caption to a declared image; return False if the image is unknown."""
        record = self._records.get(image_id)
        if record is None:
            return False
        record.captions.append(CaptionEntry(text, row))
        return True

    def records(self) -> list[CaptionRecord]:
        """The collected records, in the order their images were first declared."""
        return list(self._records.values())


def records_to_dataset(records: list[CaptionRecord], split: str, description: str) -> Dataset:
    """Build an in-memory dataset (no cache files) with :data:`CAPTION_FEATURES`."""
    columns = {
        "image_id": [record.image_id for record in records],
        "image": [record.image_path for record in records],
        "image_path": [record.image_path for record in records],
        "captions": [[entry.text for entry in record.captions] for record in records],
    }
    info = DatasetInfo(description=description, features=CAPTION_FEATURES)
    return Dataset.from_dict(columns, features=CAPTION_FEATURES, info=info, split=NamedSplit(split))


def iter_captions(dataset: Dataset, column: str = "captions") -> Iterator[str]:
    """Yield every caption of ``dataset`` (e.g. to build a tokenizer vocabulary).

    Only the caption column is read: no image is decoded.
    """
    for captions in dataset[column]:
        yield from captions
