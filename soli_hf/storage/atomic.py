"""Atomic folder writes: build the folder under a temporary name beside its final place, then rename it there."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# how libraries word a full disk: the OS's own text, and safetensors' `IoError(Os { .. kind: StorageFull .. })`
_DISK_FULL_WORDS = ("no space left", "storagefull", "quota exceeded")
# torch.save's words for a failed write, which do not say why (`basic_ios::clear: iostream error`, `file write failed`)
_WRITE_FAILED_WORDS = ("iostream error", "write failed")
TEMPORARY_MARK = ".tmp-"  # `.<name>.tmp-<random>`: a folder being written, until it is complete and renamed
OLD_FOLDER_MARK = ".old-"  # `.<name>.old-<pid>`: a replaced folder, until its successor is in place
LOW_DISK_SPACE = 64 * 2**20  # bytes; a failed write with less free space than this is put down to a full disk


def write_folder_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a fresh temporary folder beside `final`, then move it to `final`, replacing any old
    folder; a crash leaves either the old complete folder or the new one (plus a stray temporary folder). The folder
    keeps the old one's permissions, or gets those `mkdir` gives under the umask (not `mkdtemp`'s private 0700)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    mode = _folder_mode(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMPORARY_MARK}", dir=final.parent))
    try:
        tmp.chmod(mode)
        write(tmp)
        fsync_tree(tmp)
        move_folder_into_place(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _folder_mode(folder: Path) -> int:
    """The permissions of `folder` if it exists, else those `mkdir` would give it under the process's umask."""
    if folder.is_dir():
        return stat.S_IMODE(folder.stat().st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def move_folder_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` to `final`. An old `final` is first renamed to `.<name>.old-<pid>` beside it
    and deleted once the new one is in place, so a crash in between leaves it there, complete."""
    if final.exists():
        old = final.with_name(f".{final.name}{OLD_FOLDER_MARK}{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def recover_interrupted_writes(parent: Path, prefix: str = "") -> list[Path]:
    """Undo what a kill during `write_folder_atomically` left in `parent`, for the folders whose names start with
    `prefix`: a temporary folder is deleted; an old folder moved aside is put back when its successor never got the
    name, else deleted. Returns the temporary folders deleted."""
    deleted: list[Path] = []
    if not parent.is_dir():
        return deleted
    for path in sorted(parent.iterdir()):
        name = path.name
        if not name.startswith(f".{prefix}"):
            continue
        if TEMPORARY_MARK in name:
            remove_path(path)
            deleted.append(path)
        elif OLD_FOLDER_MARK in name:
            replaced = parent / name[1:].split(OLD_FOLDER_MARK)[0]
            if replaced.exists():
                remove_path(path)
            else:
                os.replace(path, replaced)
    return deleted


def remove_path(path: Path) -> None:
    """Delete a file, a link or a folder with everything in it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` to disk (before it is renamed into place)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_file_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Replace the file `path` in one step: `write(tmp)` writes it under a hidden temporary name beside it
    (`.<name>.tmp-<pid>`), which is flushed to disk and renamed over `path`; a crash leaves the old file or the
    new one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace the file `path` with `text` (UTF-8) in one step (`write_file_atomically`)."""
    write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def free_disk_space(path: Path) -> tuple[int, Path]:
    """Bytes this user may still write on the file system holding `path` (or its nearest existing parent), and
    that file system's mount point."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    mount = existing
    while not os.path.ismount(mount):
        mount = mount.parent
    return shutil.disk_usage(existing).free, mount


def is_disk_full(error: BaseException, path: Path) -> bool:
    """Whether `error`, raised while writing under `path`, comes from a full disk or an exhausted quota, however the
    writing library words it. torch.save only says that its stream failed: that counts as a full disk when the
    file system has less than `LOW_DISK_SPACE` left."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    message = str(error).lower()
    if any(words in message for words in _DISK_FULL_WORDS):
        return True
    return any(words in message for words in _WRITE_FAILED_WORDS) and free_disk_space(path)[0] < LOW_DISK_SPACE


@contextmanager
def disk_full_as_oserror(what: str, path: Path, advice: str) -> Iterator[None]:
    """Raise a full disk met inside the block as `OSError(ENOSPC)` that says what was being written, where, how much
    space is left on which file system, and `advice` (what to do); any other error passes unchanged."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error, path):
            raise
        free, mount = free_disk_space(path)
        message = f"disk full while writing {what} {path} ({free / 2**30:.1f} GiB free on {mount}): {advice}"
        raise OSError(errno.ENOSPC, message) from error
