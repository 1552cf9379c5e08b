"""What `caption_archive` captions: image files, folders and globs (as `soli caption` finds them), text lists of
paths, and a column of paths in a Parquet or CSV table, resolved to absolute paths, in order, once each.

The absolute path is the key of a result row: a run continued from another working directory, or on another node
of a cluster with the same shared mount, recognises the photos already captioned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .files import find_images

#: A file with one of these suffixes lists paths, one a line (blank lines and lines starting with # left out).
LIST_SUFFIXES = (".txt", ".lst")
#: A table with one of these suffixes holds the paths in a column (`column`, default `DEFAULT_COLUMN`).
TABLE_SUFFIXES = (".parquet", ".csv")
DEFAULT_COLUMN = "path"


def archive_paths(inputs: Sequence[str | os.PathLike], column: str | None = None) -> list[str]:
    """The absolute paths to caption, in order, once each.

    Args:
        inputs: image files, folders (their images, not recursive), glob patterns, text lists of paths (`.txt`,
            `.lst`) and Parquet or CSV tables (`.parquet`, `.csv`). A relative path in a list or a table is taken
            from the folder of that list or table. Listed paths are kept whatever their suffix: one that is not a
            readable image becomes an error row when it is captioned.
        column: the tables' column of paths (default "path").

    Raises:
        ValueError: an input that does not exist, a folder or glob without images, an empty list or table, a table
            without the column (naming the columns it has) or with an empty cell in it, `column` without a table.
    """
    found: dict[str, None] = {}  # insertion-ordered set
    tables = 0
    for entry in map(os.fspath, inputs):
        path = Path(entry)
        suffix = path.suffix.lower()
        if path.is_file() and suffix in LIST_SUFFIXES:
            listed, base = _listed_paths(path), path.parent
        elif path.is_file() and suffix in TABLE_SUFFIXES:
            listed, base = _column_paths(path, column or DEFAULT_COLUMN), path.parent
            tables += 1
        else:  # raises for a missing path and for a folder or glob without images
            listed, base = [os.fspath(image) for image in find_images([entry])], Path()
        if not listed:
            raise ValueError(f"{entry}: no paths in it")
        found.update(dict.fromkeys(_absolute(base, item) for item in listed))
    if column is not None and not tables:
        raise ValueError(f"a column ({column!r}) applies to a Parquet or CSV table of paths, and none was given")
    return list(found)


def _absolute(base: Path, path: str) -> str:
    """`path` made absolute (and normalised) from the folder `base`; an absolute path stays as it is."""
    return os.path.abspath(os.path.join(base, path))


def _listed_paths(path: Path) -> list[str]:
    """The paths of a text list, one a line; blank lines and `#` comments left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _column_paths(path: Path, column: str) -> list[str]:
    """The values of `column` of a Parquet or CSV table, as strings (pyarrow reads it)."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if path.suffix.lower() == ".csv":
            options = pyarrow.csv.ConvertOptions(column_types={column: pa.string()})
            table = pyarrow.csv.read_csv(path, convert_options=options)
        else:
            table = pyarrow.parquet.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: cannot read the table ({error})") from error
    if column not in table.column_names:
        raise ValueError(f"{path}: no column {column!r}; its columns: {table.column_names} (choose one with --column)")
    try:
        values = table.column(column).cast(pa.string()).to_pylist()
    except pa.ArrowException as error:
        raise ValueError(
            f"{path}: column {column!r} does not hold paths ({table.schema.field(column).type})"
        ) from error
    empty = [row for row, value in enumerate(values, 1) if not value]
    if empty:
        raise ValueError(f"{path}: column {column!r} has no path in row(s) {empty[:10]}")
    return values
