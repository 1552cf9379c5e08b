"""Writing files so that a crash, a kill or a full disk never leaves a half-written result behind.

Standard library only (no torch): the checkpoints, the model folders and the ONNX export all write through it.
"""

from .atomic import fsync_tree, write_folder_atomically

__all__ = ["fsync_tree", "write_folder_atomically"]
