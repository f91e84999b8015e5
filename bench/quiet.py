"""Waiting for a quiet machine before a measurement (other work shares these two cores).

The media points measure one process's CPU and its latency per packet: anything else that
runs on the relay's core in the window (another test run, a compiler) both inflates the
CPU figures and stalls the relay for milliseconds at a time. ``wait_for_quiet`` waits, at
most ``max_wait_s``, for a stretch of ``stretch_s`` in which every other process together
used less than ``threshold`` of a core; the wait and the load it saw are reported with the
point either way (a point is never skipped: it runs once the wait is over).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from bench.cpu_accounting import cpu_by_process, others_cpu_delta


async def wait_for_quiet(
    exclude: set[int], max_wait_s: float, threshold: float = 0.05, stretch_s: float = 3.0
) -> dict[str, Any]:
    """Until the other processes are quiet for ``stretch_s`` (or ``max_wait_s`` passed)."""
    started = time.monotonic()
    loads: list[float] = []
    while True:
        before = cpu_by_process(exclude | {os.getpid()})
        t0 = time.monotonic()
        await asyncio.sleep(stretch_s)
        load = others_cpu_delta(before, cpu_by_process(exclude | {os.getpid()}))
        load /= time.monotonic() - t0
        loads.append(round(load, 3))
        waited = time.monotonic() - started
        if load < threshold or waited >= max_wait_s:
            return {
                "quiet_wait_s": round(waited, 1),
                "quiet_found": load < threshold,
                "others_cpu_before": loads[-1],
            }
