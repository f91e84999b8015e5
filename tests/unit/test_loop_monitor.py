"""The loop monitor's max lag covers a recent window: one stall does not pin it for ever."""

from __future__ import annotations

from relay.observability.loop_monitor import MAX_LAG_WINDOW_S, TICK_S, LoopMonitor
from relay.observability.metrics import MetricsRegistry


def test_max_lag_is_the_worst_tick_of_the_recent_window() -> None:
    monitor = LoopMonitor(MetricsRegistry(process_metrics=False))
    assert monitor.snapshot()["loop_lag_max_ms"] == 0.0
    monitor.observe_lag(1.5)  # a start-up stall
    monitor.observe_lag(0.002)
    assert monitor.snapshot()["loop_lag_max_ms"] == 1500.0

    ticks_in_window = round(MAX_LAG_WINDOW_S / TICK_S)
    for _ in range(ticks_in_window - 2):
        monitor.observe_lag(0.003)
    assert monitor.max_lag_s == 1.5  # still within the window
    monitor.observe_lag(0.004)  # the stall's tick leaves the window
    assert monitor.snapshot()["loop_lag_max_ms"] == 4.0
