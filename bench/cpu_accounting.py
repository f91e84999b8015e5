"""CPU accounting from ``/proc``: a process's CPU, its descendants, every other process's,
and the hypervisor's steal per core (what the shipped-relay benchmark reads per window)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def steal_seconds(cpus: tuple[int, ...]) -> list[float]:
    """CPU time the hypervisor took from each of ``cpus`` so far (``steal`` in /proc/stat).

    A virtual machine's core can be taken away while a process is running on it: the
    process sees a pause it did not cause (a latency spike at the relay, a gap in the
    generator's sending). It is reported per window rather than hidden."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{c}": i for i, c in enumerate(cpus)}
    out = [0.0] * len(cpus)
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            out[wanted[fields[0]]] = int(fields[8]) / tick
    return out


def cpu_by_process(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every other process (kernel threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def others_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings by the processes alive at the second (a process
    that exited in between is not counted, rather than counted negative)."""
    return sum(max(0.0, used - before.get(pid, 0.0)) for pid, used in after.items())


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{name}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
