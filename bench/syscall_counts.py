"""System calls and context switches of a process over a window, counted by ``perf stat``;
and where its CPU goes over a window, sampled by ``perf record`` (``record_over``).

The relay's forwarding cost at small N is mostly system calls and wake-ups rather than its
own per-packet work (docs/benchmarks.md, "Where the rest goes"); these counts say how many
of each a window took. ``perf`` (Debian's ``linux-perf``) must be installed and allowed to
read the kernel's syscall tracepoints (root, or ``kernel.perf_event_paranoid`` low enough);
``available()`` says whether it is.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

# The calls the media path makes per datagram and per wake-up.
SYSCALLS = ("recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "epoll_ctl", "sendto")
_ALL = "raw_syscalls:sys_enter"
_SWITCHES = "context-switches"


def available() -> bool:
    return shutil.which("perf") is not None


def events() -> list[str]:
    return [f"syscalls:sys_enter_{name}" for name in SYSCALLS] + [_ALL, _SWITCHES]


def parse(csv_text: str) -> dict[str, int]:
    """``perf stat -x,`` output → {"recvmmsg": n, ..., "all": n, "context_switches": n}.
    Uncounted events ("<not counted>", "<not supported>") are left out."""
    counts: dict[str, int] = {}
    for line in csv_text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].strip().isdigit():
            continue
        value, event = int(fields[0]), fields[2].strip()
        if event == _ALL:
            counts["all"] = value
        elif event == _SWITCHES:
            counts["context_switches"] = value
        elif event.startswith("syscalls:sys_enter_"):
            counts[event.removeprefix("syscalls:sys_enter_")] = value
    return counts


async def count_over(pid: int, window_s: float) -> dict[str, int]:
    """Count ``pid``'s (all its threads') system calls and context switches for
    ``window_s`` seconds."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-perf-") as tmp:
        out = Path(tmp) / "stat.csv"
        proc = await asyncio.create_subprocess_exec(
            "perf", "stat", "-x,", "-e", ",".join(events()), "-p", str(pid),
            "-o", str(out), "--", "sleep", f"{window_s:g}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"perf stat failed (exit {proc.returncode})")
        return parse(out.read_text())


# Samples a second for ``record_over``: enough for a ranking over a 10 s window.
RECORD_HZ = 2000


def record_command(pid: int, window_s: float, out: Path) -> list[str]:
    """``perf record`` of ``pid`` (all its threads, with call graphs) for ``window_s``."""
    return [
        "perf", "record", "-F", str(RECORD_HZ), "-g", "-p", str(pid), "-o", str(out),
        "--", "sleep", f"{window_s:g}",
    ]  # fmt: skip


async def record_over(pid: int, window_s: float, out: Path) -> None:
    """Sample ``pid``'s CPU for ``window_s`` seconds into ``out`` (read it with
    ``perf report -i out``: ``--sort dso`` for libraries, ``--children`` for calls)."""
    proc = await asyncio.create_subprocess_exec(
        *record_command(pid, window_s, out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()
    if proc.returncode != 0 or not await asyncio.to_thread(out.exists):
        raise RuntimeError(f"perf record failed (exit {proc.returncode})")
