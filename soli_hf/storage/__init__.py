"""Writing files so that a crash, a kill or a full disk never leaves a half-written result behind; reading JSON
files so that a bad one is named.

Standard library only (no torch): the checkpoints, the model folders and the ONNX export all write through it.
"""

from .atomic import fsync_tree, write_folder_atomically
from .json_files import read_json

__all__ = ["fsync_tree", "read_json", "write_folder_atomically"]
