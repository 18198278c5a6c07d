"""How many CPU threads PyTorch may use in this process, decided in one place.

PyTorch sizes its intra-op pool from the machine's cores (CPU affinity at most); it does not
see a container's CPU quota, so a step limited to 2 CPUs on a 64-core node runs 64 threads
and spends its quota spinning and being throttled. Every `madrec` verb calls `configure()`
first (madrec.cli), which picks, first match wins:

1. an explicit number: the caller's (config `trainer.num_threads` > 0), else
   `$MADREC_NUM_THREADS`, else `$OMP_NUM_THREADS`;
2. what the process may really use: its CPU affinity, capped by the CPU quota of its cgroup
   (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, the tightest along the cgroup's
   path), rounded up, shared among the processes of one node (`$LOCAL_WORLD_SIZE`, torchrun).

On a machine shared with other unrestricted CPU-bound processes (a laptop) neither limit
applies; pin the count there with `MADREC_NUM_THREADS` (bench/reliability/threads.md shows
what oversubscription costs).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from madrec.dist import launch_layout
from madrec.errors import MadrecError

log = logging.getLogger(__name__)

ENV = "MADREC_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # where the number came from, for the log line

    def __str__(self) -> str:
        return f"{self.threads} ({self.source})"


def _positive_int(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise MadrecError(f"{name}={value!r}: expected a whole number of threads >= 1") from None
    if n < 1:
        raise MadrecError(f"{name}={value!r}: expected a whole number of threads >= 1")
    return n


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process from /proc/self/cgroup."""
    v2 = v1 = None
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str) -> list[Path]:
    """root/path, root/parent-of-path, ..., root (existing folders only)."""
    rel = Path(path.lstrip("/"))
    out = []
    while True:
        d = root / rel
        if d.is_dir():
            out.append(d)
        if rel == Path("") or rel == Path("."):
            break
        rel = rel.parent
    return out


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs the cgroup quota allows (e.g. 1.5), the tightest along the cgroup's path; None: no limit."""
    v2, v1 = _cgroup_paths(proc_cgroup)
    limits: list[float] = []
    if v2 is not None:  # cgroup v2: "max 100000" or "150000 100000"
        for base in {root, root / "unified"}:
            for d in _ancestors(base, v2):
                fields = (_read(d / "cpu.max") or "").split()
                if len(fields) == 2 and fields[0] != "max":
                    try:
                        quota, period = int(fields[0]), int(fields[1])
                    except ValueError:
                        continue
                    if quota > 0 and period > 0:
                        limits.append(quota / period)
    if v1 is not None:  # cgroup v1: cfs_quota_us = -1 means no limit
        for base in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
            for d in _ancestors(base, v1):
                quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                try:
                    q, p = int(quota or "-1"), int(period or "0")
                except ValueError:
                    continue
                if q > 0 and p > 0:
                    limits.append(q / p)
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def choose(
    explicit: int | None = None, *, environ=None, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> ThreadChoice:
    """The thread count this process should use, and why (module docstring)."""
    env = os.environ if environ is None else environ
    if explicit:
        return ThreadChoice(_positive_int(str(explicit), "trainer.num_threads"), "trainer.num_threads")
    for name in (ENV, "OMP_NUM_THREADS"):
        if env.get(name, "").strip():
            return ThreadChoice(_positive_int(env[name].strip(), name), f"${name}")
    cpus = affinity_cpus()
    source = f"CPU affinity: {cpus}"
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None and math.ceil(quota) < cpus:
        cpus = max(1, math.ceil(quota))
        source = f"cgroup CPU quota: {quota:g} CPUs"
    local = launch_layout(env).local_world_size
    if local > 1:
        cpus = max(1, cpus // local)
        source += f", shared by {local} local processes"
    return ThreadChoice(cpus, source)


def configure(explicit: int | None = None, **kw) -> ThreadChoice:
    """Set torch's intra-op thread count from `choose()`; returns the choice (logged)."""
    import torch

    choice = choose(explicit, **kw)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    log.info("torch CPU threads: %s", choice)
    return choice
