"""The folder an ONNX export writes: what it may replace, and writing it whole or not at all.

`export_onnx` (both routes) and `quantize_onnx` write `encoder.onnx`, `decoder_step.onnx` and `soli_onnx.json` into
a temporary folder beside `out_dir` (`.<name>.tmp-*`) and then rename it to `out_dir`
(`soli_hf.storage.write_folder_atomically`, as the checkpoints are written). A crash, a kill or a full disk
therefore leaves the previous export in `out_dir` complete and loadable (after a kill, also the hidden temporary
folder, which can be deleted), never a mix of new and old graphs. A full disk is an `OSError` saying so, where, and
how much space is left.

Since the whole folder is replaced, `out_dir` must be new, empty, or a previous SOLI export holding only the files
an export writes. A folder with anything else in it is refused (`ValueError` naming the folder and the other files)
rather than deleted with the old export. Standard library only, like the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..storage import disk_full_as_oserror, write_folder_atomically
from .spec import DECODER_WEIGHTS_FILE, GRAPHS, GREEDY_FILE, MANIFEST_NAME

#: The files of an export folder (float32 or quantized): the only ones an existing `out_dir` may hold.
EXPORT_FILES = frozenset({*(graph.file_name for graph in GRAPHS), GREEDY_FILE, DECODER_WEIGHTS_FILE, MANIFEST_NAME})
_NAMES_SHOWN = 5


def check_output_folder(out_dir: str | os.PathLike) -> None:
    """Raise `ValueError` unless `out_dir` may be replaced by an export: absent, an empty folder, or a folder that
    holds nothing but export files (a previous export)."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file: give a new or empty folder, or a previous SOLI ONNX export")
    others = sorted(path.name for path in out.iterdir() if path.name not in EXPORT_FILES)
    if others:
        shown = ", ".join(others[:_NAMES_SHOWN])
        if len(others) > _NAMES_SHOWN:
            shown += f" and {len(others) - _NAMES_SHOWN} more"
        raise ValueError(
            f"{out} is not empty and not a SOLI ONNX export (it holds {shown}); an export replaces the whole folder, "
            f"so give a new or empty folder"
        )


def write_export_folder(out_dir: str | os.PathLike, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Check `out_dir` (`check_output_folder`), then call `write(folder)` on a fresh temporary folder beside it and
    rename that folder to `out_dir`, replacing a previous export whole.

    Args:
        out_dir: the export folder; created with its parents if needed.
        write: writes the export's files into the folder it is given and returns their paths.

    Returns:
        The paths `write` returned, under `out_dir`.
    """
    check_output_folder(out_dir)
    out = Path(out_dir)
    names: list[Path] = []

    def write_and_name(folder: Path) -> None:
        names.extend(path.relative_to(folder) for path in write(folder))

    with disk_full_as_oserror("the ONNX export", out, f"free some space and export again; {out} is unchanged"):
        write_folder_atomically(out.resolve(), write_and_name)
    return [out / name for name in names]
