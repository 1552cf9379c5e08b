"""How many CPUs this process may use: its CPU affinity and its cgroup's CPU quota (standard library only).

onnxruntime's default thread count is one per physical core of the machine, whatever the process is allowed: under
`taskset -c 0`, or in a container limited to one CPU (`docker run --cpus 1`), its threads then share one CPU and
captioning is slower than with one thread. `SoliOnnxCaptioner` uses `available_cpus()` when no thread count is given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Where cgroup v2 (the unified hierarchy) or the v1 controllers are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The process's cgroup membership (`0::/path` under cgroup v2).
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_cpus() -> int:
    """The CPUs this process may run on (`os.sched_getaffinity` where the OS has it, else all of them), no more
    than a cgroup CPU quota allows (rounded down); at least 1."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def affinity_cpus() -> int:
    """The number of CPUs in the process's affinity mask (all CPUs where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_cpu_quota() -> float | None:
    """The CPU time the process's cgroups allow per period, in CPUs (1.5: one and a half), the smallest over its
    cgroup and their ancestors; None without a quota (or without cgroups).

    cgroup v2: `cpu.max` ("<quota> <period>", or "max <period>") in the process's cgroup folder (from
    `/proc/self/cgroup`) and each folder above it, `/sys/fs/cgroup` included (a container's own root).
    cgroup v1: `cpu.cfs_quota_us` / `cpu.cfs_period_us` of the mounted `cpu` controller (-1: no quota).
    """
    quotas = [_cgroup_v2_quota(folder / "cpu.max") for folder in _cgroup_v2_folders()]
    for controller in ("cpu", "cpu,cpuacct"):
        folder = CGROUP_ROOT / controller
        quotas.append(_ratio(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")))
    limits = [quota for quota in quotas if quota is not None]
    return min(limits) if limits else None


def _cgroup_v2_folders() -> list[Path]:
    """The process's cgroup v2 folder and every folder above it up to `CGROUP_ROOT` (just the root when the
    membership cannot be read)."""
    membership = _read(PROC_SELF_CGROUP) or ""
    relative = next((line[3:] for line in membership.splitlines() if line.startswith("0::")), "/")
    folder = CGROUP_ROOT / relative.lstrip("/")
    return [folder, *(parent for parent in folder.parents if parent.is_relative_to(CGROUP_ROOT))]


def _cgroup_v2_quota(path: Path) -> float | None:
    """The quota of a `cpu.max` file in CPUs; None when it is absent, unlimited ("max") or unreadable."""
    text = _read(path)
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    return None if quota == "max" else _ratio(quota, period)


def _ratio(quota: str | None, period: str | None) -> float | None:
    """quota / period as numbers; None when either is missing or malformed, or the quota is not positive."""
    if quota is None or period is None:
        return None
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _read(path: Path) -> str | None:
    """The stripped text of a small system file, or None where it cannot be read."""
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
