"""Atomic folder writes: build the folder under a temporary name beside its final place, then rename it there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a fresh temporary folder beside `final`, then move it to `final`, replacing any old
    folder; a crash leaves either the old complete folder or the new one (plus a stray temporary folder)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` to disk (before it is renamed into place)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
