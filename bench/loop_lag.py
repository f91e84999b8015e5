"""Event-loop lag, watched the same way in the relay and in the endpoint process."""

from __future__ import annotations

import asyncio
import time

INTERVAL_S = 0.01


class LoopLag:
    """How late a 10 ms timer fires (``samples``, s), and stalls over 10 ms with their
    wall time (``stalls``: (unix s, ms)). A stall seen by both processes at once is the
    machine, not the relay."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stalls: list[tuple[float, float]] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(INTERVAL_S)
            lag = time.perf_counter() - started - INTERVAL_S
            self.samples.append(lag)
            if lag > INTERVAL_S:
                self.stalls.append((round(time.time(), 3), round(lag * 1000, 1)))
