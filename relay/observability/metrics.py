"""A small in-process metrics registry: counters, gauges and latency summaries.

It renders the Prometheus text format (``/metrics``) and a JSON snapshot with
percentiles (``/api/stats``). Components get-or-create their metrics by name, so
there is no central list to edit; names follow Prometheus conventions
(``relay_<area>_<what>_<unit>``).

Why not prometheus_client: we also need percentiles for the JSON stats and
per-instance registries in tests; a summary over a bounded window of recent
samples gives both in ~150 lines.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

LabelValues = tuple[str, ...]

_QUANTILES = (0.5, 0.9, 0.99)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str]) -> None:
        self.name = name
        self.help = help_text
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        # Metrics can be touched from aiortc's threads; keep updates atomic.
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, Any]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _label_text(self, key: LabelValues, extra: str = "") -> str:
        parts = [f'{n}="{_escape(v)}"' for n, v in zip(self.labelnames, key, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def render(self) -> list[str]:
        raise NotImplementedError

    def snapshot(self) -> Any:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str]) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: Any) -> float:
        return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def render(self) -> list[str]:
        return [f"{self.name}{self._label_text(k)} {v:g}" for k, v in sorted(self._values.items())]

    def snapshot(self) -> Any:
        if not self.labelnames:
            return self._values.get((), 0.0)
        return [
            dict(zip(self.labelnames, k, strict=True), value=v)
            for k, v in sorted(self._values.items())
        ]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def dec(self, amount: float = 1.0, **labels: Any) -> None:
        self.inc(-amount, **labels)


class Summary(_Metric):
    """Count, sum and quantiles over the most recent ``window`` observations per label set."""

    kind = "summary"

    def __init__(
        self, name: str, help_text: str, labelnames: Iterable[str], window: int = 2048
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._window = window
        self._samples: dict[LabelValues, deque[float]] = {}
        self._count: dict[LabelValues, int] = {}
        self._sum: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            samples = self._samples.get(key)
            if samples is None:
                samples = self._samples[key] = deque(maxlen=self._window)
            samples.append(value)
            self._count[key] = self._count.get(key, 0) + 1
            self._sum[key] = self._sum.get(key, 0.0) + value

    def count(self, **labels: Any) -> int:
        return self._count.get(self._key(labels), 0)

    def quantiles(self, **labels: Any) -> dict[str, float]:
        return _quantiles(list(self._samples.get(self._key(labels), ())))

    def render(self) -> list[str]:
        lines: list[str] = []
        for key in sorted(self._samples):
            for q, v in zip(_QUANTILES, _quantiles(list(self._samples[key])).values(), strict=True):
                quantile = 'quantile="' + str(q) + '"'
                lines.append(f"{self.name}{self._label_text(key, quantile)} {v:g}")
            lines.append(f"{self.name}_count{self._label_text(key)} {self._count[key]}")
            lines.append(f"{self.name}_sum{self._label_text(key)} {self._sum[key]:g}")
        return lines

    def snapshot(self) -> Any:
        rows = []
        for key in sorted(self._samples):
            row: dict[str, Any] = dict(zip(self.labelnames, key, strict=True))
            row.update(count=self._count[key], sum=round(self._sum[key], 3))
            row.update(_quantiles(list(self._samples[key])))
            rows.append(row)
        if not self.labelnames:
            return rows[0] if rows else {"count": 0}
        return rows


def _quantiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {f"p{int(q * 100)}": math.nan for q in _QUANTILES}
    samples.sort()
    out = {}
    for q in _QUANTILES:
        idx = min(len(samples) - 1, max(0, math.ceil(q * len(samples)) - 1))
        out[f"p{int(q * 100)}"] = round(samples[idx], 3)
    return out


class MetricsRegistry:
    """Get-or-create metrics by name; one registry per app instance."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _get(self, cls: type[_Metric], name: str, help_text: str, labelnames: Iterable[str]) -> Any:
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = cls(name, help_text, labelnames)
            elif type(metric) is not cls or metric.labelnames != tuple(labelnames):
                raise ValueError(f"metric {name} re-registered with another type or labels")
            return metric

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Counter:
        result: Counter = self._get(Counter, name, help_text, labelnames)
        return result

    def gauge(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Gauge:
        result: Gauge = self._get(Gauge, name, help_text, labelnames)
        return result

    def summary(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Summary:
        result: Summary = self._get(Summary, name, help_text, labelnames)
        return result

    def render_prometheus(self) -> str:
        lines: list[str] = []
        for name in sorted(self._metrics):
            metric = self._metrics[name]
            lines.append(f"# HELP {name} {metric.help}")
            lines.append(f"# TYPE {name} {metric.kind}")
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, Any]:
        return {name: self._metrics[name].snapshot() for name in sorted(self._metrics)}
