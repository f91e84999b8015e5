"""Event-loop lag and process CPU, sampled by one small task.

Lag is how late a short timer fires: anything that blocks the loop (a slow callback, a
blocking call, CPU starvation) shows up here before it shows up as bad audio. CPU is this
process's CPU time over wall time (100 = one core busy), from ``time.process_time``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

from relay.observability.metrics import FAST_BUCKETS, MetricsRegistry

TICK_S = 0.25
CPU_PERIOD_S = 2.0
# The dashboard's "max lag" is the worst tick of this recent window: one stall (at start,
# say) shows for this long and then leaves the chart, instead of pinning it for ever.
MAX_LAG_WINDOW_S = 10.0


class PauseMeter(Protocol):
    """Collector pauses measured elsewhere (relay.memory.GcPauseMeter), fed to their
    histogram from the event loop on every tick."""

    def flush(self) -> None: ...


class LoopMonitor:
    def __init__(self, metrics: MetricsRegistry, gc_pauses: PauseMeter | None = None) -> None:
        self._gc_pauses = gc_pauses
        self.lag = metrics.histogram(
            "relay_event_loop_lag_seconds",
            f"How late a {TICK_S * 1000:.0f} ms timer fired on the event loop",
            buckets=FAST_BUCKETS,
        )
        self._cpu_gauge = metrics.gauge(
            "relay_process_cpu_percent",
            f"Process CPU over the last {CPU_PERIOD_S:.0f} s (100 = one core)",
        )
        self.cpu_percent: float | None = None
        self._recent_lags: deque[float] = deque(maxlen=round(MAX_LAG_WINDOW_S / TICK_S))

    @property
    def max_lag_s(self) -> float:
        """The largest lag of the last ``MAX_LAG_WINDOW_S`` seconds of ticks."""
        return max(self._recent_lags, default=0.0)

    def observe_lag(self, lag_s: float) -> None:
        self.lag.observe(lag_s)
        self._recent_lags.append(lag_s)

    async def run(self) -> None:
        cpu_wall, cpu_used = time.perf_counter(), time.process_time()
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            lag = max(0.0, now - started - TICK_S)
            self.observe_lag(lag)
            if self._gc_pauses is not None:
                self._gc_pauses.flush()
            if now - cpu_wall >= CPU_PERIOD_S:
                used = time.process_time()
                self.cpu_percent = round((used - cpu_used) / (now - cpu_wall) * 100, 1)
                self._cpu_gauge.set(self.cpu_percent)
                cpu_wall, cpu_used = now, used

    def snapshot(self) -> dict[str, Any]:
        lag = self.lag.quantiles_ms()
        return {
            "cpu_percent": self.cpu_percent,
            "loop_lag_p50_ms": lag["p50_ms"],
            "loop_lag_p99_ms": lag["p99_ms"],
            "loop_lag_max_ms": round(self.max_lag_s * 1000, 3),
        }
