"""How much CPU *other* processes took while a measurement ran.

On a 2-core machine shared with other work (test runs, builds) that is the first thing to know about a number.
Machine-wide busy time comes from ``/proc/stat``; the benchmark's own time is this process and all its live
descendants (``/proc/<pid>/stat``: the servers and their workers), each with its reaped children. The rest is
others'.
Linux only; elsewhere every share reads 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Mark:
    wall: float
    busy: float  # machine-wide CPU-seconds, all cores
    steal: float  # CPU-seconds the hypervisor gave to other guests
    own: float  # the benchmark's CPU-seconds


@dataclass(frozen=True, slots=True)
class Span:
    wall_s: float
    benchmark_cpu_s: float
    others_cpu_s: float
    steal_s: float
    others_share: float  # others_cpu_s / (wall_s x cores): 0.0 = nobody else ran


def mark() -> Mark:
    busy, steal = _machine()
    return Mark(time.monotonic(), busy, steal, _own())


def since(start: Mark) -> Span:
    end = mark()
    wall = end.wall - start.wall
    own = end.own - start.own
    others = max(end.busy - start.busy - own, 0.0)
    capacity = wall * cores()
    return Span(
        wall_s=round(wall, 2),
        benchmark_cpu_s=round(own, 2),
        others_cpu_s=round(others, 2),
        steal_s=round(end.steal - start.steal, 2),
        others_share=round(others / capacity, 3) if capacity else 0.0,
    )


def cores() -> int:
    """The cores this benchmark may use: what the shares are shares of."""
    return len(os.sched_getaffinity(0))


def _machine() -> tuple[float, float]:
    stat = Path("/proc/stat")
    if not stat.exists():
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in stat.read_text().split()[1:9])
    # Interrupt time is left out: loopback traffic's softirq work is the benchmark's own but charged to no task.
    return (user + nice + system) / _HZ, steal / _HZ


def _own() -> float:
    # The whole tree: a server's own children (TT_WORKERS, the training process) are the benchmark's too.
    return tree_cpu_seconds(os.getpid())


def tree_cpu_seconds(root: int) -> float:
    """CPU-seconds used so far by ``root`` and every live descendant, each with its reaped children."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])  # ppid
        used[pid] = sum(int(x) for x in fields[11:15]) / _HZ  # utime, stime, cutime, cstime
    total = 0.0
    for pid, seconds in used.items():
        p = pid
        while p > 1 and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += seconds
    return total
