"""Caption data loaders returning `datasets.Dataset` objects.

Every loader yields one row per image with the columns ``image_id`` (str), ``image``
(``datasets.Image()``, decoded lazily from the file), ``image_path`` (str) and
``captions`` (list of raw str)::

    from soli_hf.data import load_caption_dataset, iter_captions

    train = load_caption_dataset("../shared/data/flickr8k", split="train")
    vocabulary_source = iter_captions(train)

The region format ("flickr30k_entities") yields one row per (photo, phrase chain with a
box) instead: ``image_id``, ``image``/``image_path`` (the photo's path), ``box``,
``references``, ``phrase_type``, ``num_boxes``, ``chain_id`` (:data:`REGION_FEATURES`)::

    regions = load_region_dataset("../shared/data/flickr30k_entities", split="dev")

Modules:
    records     the row layouts (:data:`CAPTION_FEATURES`, :data:`REGION_FEATURES`), record building,
                :func:`iter_captions`
    readers     the Flickr8k, COCO, Karpathy and image-folder readers
    regions     the Flickr30k Entities region reader, :func:`load_region_dataset` (+ ``_with_report``)
    detection   :func:`detect_format`
    bad_samples bad-sample kinds, report and skip/error policy; cheap image checks
    loading     :func:`load_caption_dataset` (+ ``_with_report``)
    safe_image  :func:`safe_load_image`, the training-time guard
"""

from .bad_samples import BadSample, BadSampleKind, BadSampleReport, OnBadSample, VerifyImages
from .detection import DATA_FORMATS, REGION_DATA_FORMATS, DataFormat, detect_format
from .loading import load_caption_dataset, load_caption_dataset_with_report
from .readers import DEFAULT_KARPATHY_SPLITS
from .records import CAPTION_FEATURES, REGION_FEATURES, iter_captions
from .regions import load_region_dataset, load_region_dataset_with_report
from .safe_image import safe_load_image

__all__ = [
    "CAPTION_FEATURES",
    "DATA_FORMATS",
    "DEFAULT_KARPATHY_SPLITS",
    "REGION_DATA_FORMATS",
    "REGION_FEATURES",
    "BadSample",
    "BadSampleKind",
    "BadSampleReport",
    "DataFormat",
    "OnBadSample",
    "VerifyImages",
    "detect_format",
    "iter_captions",
    "load_caption_dataset",
    "load_caption_dataset_with_report",
    "load_region_dataset",
    "load_region_dataset_with_report",
    "safe_load_image",
]
