"""Writing files so that a crash, a kill or a full disk never leaves a half-written result behind; reading JSON
files so that a bad one is named.

Standard library only (no torch): the checkpoints, the model folders and the ONNX export all write through it.
"""

from .atomic import (
    disk_full_as_oserror,
    recover_interrupted_writes,
    remove_path,
    write_file_atomically,
    write_folder_atomically,
    write_text_atomically,
)
from .json_files import read_json

__all__ = [
    "disk_full_as_oserror",
    "read_json",
    "recover_interrupted_writes",
    "remove_path",
    "write_file_atomically",
    "write_folder_atomically",
    "write_text_atomically",
]
