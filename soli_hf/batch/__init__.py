"""Captioning many files: finding them (`find_images`; `archive_paths` adds text lists and Parquet/CSV columns of
paths), captioning them in batches in one process (`caption_files`, what `soli caption` runs) and over a pool of
Ray Data actors with Parquet output that a rerun resumes (`caption_archive`, `soli caption --ray`).

Modules:
    files    :func:`find_images`, :func:`caption_files` and its results (`CaptionedImage`, `SkippedImage`)
    inputs   :func:`archive_paths`
    archive  :func:`caption_archive` (Ray and pyarrow, the `scale` extra, are imported when a run starts)
"""

from .archive import ArchiveRun, caption_archive, read_archive_results, written_paths
from .files import IMAGE_SUFFIXES, CaptionedImage, SkippedImage, caption_files, find_images
from .inputs import archive_paths

__all__ = [
    "IMAGE_SUFFIXES",
    "ArchiveRun",
    "CaptionedImage",
    "SkippedImage",
    "archive_paths",
    "caption_archive",
    "caption_files",
    "find_images",
    "read_archive_results",
    "written_paths",
]
