"""Reading the relay's ``/metrics`` (Prometheus text format) in the benchmarks."""

from __future__ import annotations

import re

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from Prometheus text: sorted label pairs → value."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if not match or match[1] != name:
            continue
        labels = tuple(sorted(_LABEL.findall(match[2] or "")))
        out[labels] = float(match[3])
    return out


def gc_pauses(before: str, after: str) -> dict[str, float]:
    """The relay's garbage collections between two ``/metrics`` texts
    (``relay_gc_pause_seconds``): how many, their total pause, and how many paused the
    event loop for more than 5 ms (what a packet being forwarded would wait)."""
    out: dict[str, float] = {}
    counts = [prometheus_samples(t, "relay_gc_pause_seconds_count") for t in (before, after)]
    sums = [prometheus_samples(t, "relay_gc_pause_seconds_sum") for t in (before, after)]
    buckets = [prometheus_samples(t, "relay_gc_pause_seconds_bucket") for t in (before, after)]
    for generation in ("0", "1", "2"):
        key = (("generation", generation),)
        out[f"gen{generation}_count"] = counts[1].get(key, 0.0) - counts[0].get(key, 0.0)
        out[f"gen{generation}_total_ms"] = round(
            1000 * (sums[1].get(key, 0.0) - sums[0].get(key, 0.0)), 2
        )
    over = 0.0
    for labels, value in buckets[1].items():
        label = dict(labels)
        if label.get("le") == "0.005":
            total_key = (("generation", label["generation"]),)
            at_most = value - buckets[0].get(labels, 0.0)
            total = counts[1].get(total_key, 0.0) - counts[0].get(total_key, 0.0)
            over += total - at_most
    out["over_5ms"] = over
    return out
