"""The peak memory of this process, measured the one way that holds after fork + exec."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB: `VmHWM` of /proc/self/status where there is one (Linux's
    `ru_maxrss` keeps the parent's peak across fork + exec), else `ru_maxrss`."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
