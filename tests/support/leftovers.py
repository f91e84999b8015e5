"""Processes a test run started and left running (Linux ``/proc``).

A process belongs to the run when it is a descendant of the test process, or when it
carries the run's mark in its environment (``RUN_MARK_ENV``, set at the start of the run
and inherited by everything started from then on): an orphan, reparented to PID 1 when
its parent died, is no longer a descendant but still carries the mark. Processes that
existed before the run (the same pid *and* start time) are never counted, nor are
zombies (exited, only waiting to be reaped), nor other runs' processes (another mark).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

RUN_MARK_ENV = "INTERVIEW_RELAY_TEST_RUN"

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    state: str
    # Clock ticks after boot: with the pid, names one process even after pid reuse.
    started: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}, state {self.state}): {self.command}"


def _read(pid: int) -> ProcessInfo | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return None
    # The command name is parenthesised and may itself hold spaces or parentheses.
    name_end = stat.rindex(")")
    fields = stat[name_end + 2 :].split()
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return ProcessInfo(
        pid=pid,
        ppid=int(fields[1]),
        state=fields[0],
        started=int(fields[19]),
        command=command or stat[stat.index("(") + 1 : name_end],
    )


def snapshot() -> dict[int, ProcessInfo]:
    """Every process visible in /proc."""
    out: dict[int, ProcessInfo] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (info := _read(int(entry.name))) is not None:
            out[info.pid] = info
    return out


def descendants(root: int, processes: dict[int, ProcessInfo]) -> set[int]:
    """Pids below ``root`` in ``processes`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for info in processes.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: set[int] = set()
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, []))
    return found


def carries_mark(pid: int, mark: str) -> bool:
    needle = f"{RUN_MARK_ENV}={mark}".encode()
    with contextlib.suppress(OSError):  # exited, or another user's (not readable)
        return needle in (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    return False


def left_running(before: dict[int, ProcessInfo], mark: str) -> list[ProcessInfo]:
    """Live processes of this run (module docstring) that were not there ``before``."""
    me = os.getpid()
    now = snapshot()
    below = descendants(me, now)
    out = []
    for info in now.values():
        old = before.get(info.pid)
        if info.pid == me or info.state == "Z" or (old and old.started == info.started):
            continue
        if info.pid in below or carries_mark(info.pid, mark):
            out.append(info)
    return sorted(out, key=lambda i: i.pid)
