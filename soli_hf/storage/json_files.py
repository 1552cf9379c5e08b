"""Reading a JSON file so that a bad one is named: the file, and where in it the problem is.

Standard library only (no torch): the caption data loaders and the torch-free ONNX runtime both read through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path) -> Any:
    """Parse the JSON file at `path`; a leading UTF-8 byte order mark (BOM) is ignored.

    Raises:
        FileNotFoundError / OSError: when the file cannot be read.
        ValueError: naming the file and the offset of the first byte that is not UTF-8, or the line and column of
            a JSON syntax error.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {error.start})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from error
