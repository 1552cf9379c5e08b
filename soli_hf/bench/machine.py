"""The machine a benchmark ran on, recorded in its JSON: Python, processor, CPU model and count, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: The libraries that run the captioners, whose versions a latency report records.
CAPTIONER_LIBRARIES = ("torch", "transformers", "onnxruntime", "numpy", "pillow")


def cpu_model() -> str:
    """The CPU's model name (Linux), or the processor architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The Python version, processor architecture, CPU model and CPU count of this machine."""
    return {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
    }


def library_versions(names: tuple[str, ...] = CAPTIONER_LIBRARIES) -> dict[str, str]:
    """Installed versions of `names` (distribution names)."""
    from importlib.metadata import version

    return {name: version(name) for name in names}
