"""Metrics on prometheus-client: one ``CollectorRegistry`` per app, two views of it.

Components get-or-create their metrics by name (``registry.counter(...)``,
``.gauge(...)``, ``.histogram(...)``), so there is no central list to edit; names follow
Prometheus conventions (``relay_<area>_<what>_<unit>``, latencies in seconds).

One ``observe`` call feeds both views of a latency:
- ``/metrics``: a Prometheus histogram with buckets chosen for that latency (``FAST_BUCKETS``
  for in-process work, ``DATABASE_BUCKETS`` for database work and its retries,
  ``SLOW_BUCKETS`` for the upstream and media set-up, ``GC_BUCKETS`` for collections),
  aggregatable across instances;
- ``/api/stats``: percentiles for people, from a small bounded reservoir of the most recent
  observations (exact for what it holds, and windowed in time so a chart shows the present).

Label values must come from bounded sets: route templates, status codes, error codes from a
known list (``bounded`` maps anything else to ``other``). Each metric also caps its number of
label sets (``MAX_SERIES``) as a backstop: a new set beyond the cap is folded into ``other``.

In a worker of ``relay serve --workers N`` (``MetricsRegistry(worker=i)``), ``/metrics``
covers every worker (``relay.observability.worker_metrics``); the JSON view stays this
worker's own.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import (
    Counter as PromCounter,
)
from prometheus_client import (
    Gauge as PromGauge,
)
from prometheus_client import (
    Histogram as PromHistogram,
)
from prometheus_client import (
    Info as PromInfo,
)

from relay.observability import worker_metrics

# No "<name>_created" series next to every counter and histogram: Prometheus does not need
# them (it tracks resets itself) and they would double the series count. (Process-wide.)
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

# Milliseconds to seconds: admission, HTTP handlers, database statements, cache lookups.
FAST_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Database statements and what waits for one (the credential check on a cache miss): as
# fast as FAST_BUCKETS when all is well, but each retries on a timeout, and the worst case
# with the defaults (docs/operations.md, "Failure modes": 3 attempts of 5 s connect + 8 s
# query, plus backoff) is about 40 s: that, and one or two failed attempts (13-26 s), each
# get a bucket of their own instead of all landing in +Inf past 10 s.
DATABASE_BUCKETS: tuple[float, ...] = (*FAST_BUCKETS, 20.0, 30.0, 45.0)
# HTTP handlers: a session request may wait for the database's worst case and then the
# upstream's mint with its own timeouts and retries.
HTTP_BUCKETS: tuple[float, ...] = (*DATABASE_BUCKETS, 60.0)
# Garbage collections: a young generation's takes microseconds (a median of about 7 us
# measured), a full one "well under a millisecond" with no interview live and about half a
# millisecond per live interview (a third of a second at 500; docs/operations.md, "Memory
# per session"). FAST_BUCKETS start at 1 ms, where nearly all of them would land; these go
# from 10 us to 1 s in steps of about 3x.
GC_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.00003,
    0.0001,
    0.0003,
    0.001,
    0.003,
    0.01,
    0.03,
    0.1,
    0.3,
    1.0,
)
# Tens of milliseconds to a minute: upstream mint/SDP exchange, media connect, first audio.
SLOW_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    8.0,
    13.0,
    20.0,
    30.0,
    60.0,
)

# Label sets per metric before new ones are folded into "other".
MAX_SERIES = 200
OTHER = "other"
# Reservoir: the most recent observations per label set, and the window the JSON
# percentiles cover (a dashboard polling every 2 s charts the last minute's p50/p99).
RESERVOIR_SIZE = 512
WINDOW_S = 60.0
_QUANTILES = (0.5, 0.9, 0.99)

LabelValues = tuple[str, ...]


def bounded(value: str | None, known: Collection[str]) -> str:
    """``value`` when it is one of ``known``, else ``other``: keeps label sets bounded."""
    return value if value is not None and value in known else OTHER


class _Metric:
    def __init__(self, name: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        # Metrics are touched from aiortc's threads too; keep bookkeeping atomic.
        self._lock = threading.Lock()
        self._series: set[LabelValues] = set()

    def _key(self, labels: dict[str, Any]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {list(self.labelnames)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            if key in self._series:
                return key
            if len(self._series) >= MAX_SERIES:
                key = (OTHER,) * len(key)
            self._series.add(key)
        return key

    def snapshot(self) -> Any:
        raise NotImplementedError


class Counter(_Metric):
    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, labelnames: Sequence[str]
    ) -> None:
        super().__init__(name, labelnames)
        self._prom = PromCounter(name, help_text, self.labelnames, registry=registry)
        self._values: dict[LabelValues, float] = {}

    def _child(self, key: LabelValues) -> Any:
        return self._prom.labels(*key) if key else self._prom

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        key = self._key(labels)
        self._child(key).inc(amount)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def declare(self, **values: Iterable[str]) -> None:
        """Make every series of these label values (each combination) exist at 0 from now.
        For series alerted on with ``increase()``: Prometheus sees no increase in a
        series' first sample, so a series born with its first event would not fire on it
        (docs/operations.md, "Alerts")."""
        names = list(values)
        for combination in itertools.product(*(values[n] for n in names)):
            self.inc(0, **dict(zip(names, combination, strict=True)))

    def value(self, **labels: Any) -> float:
        return self._values.get(tuple(str(labels[n]) for n in self.labelnames), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def snapshot(self) -> Any:
        with self._lock:
            items = sorted(self._values.items())
        if not self.labelnames:
            return dict(items).get((), 0.0)
        return [dict(zip(self.labelnames, k, strict=True), value=v) for k, v in items]


class Gauge(_Metric):
    """A value now. ``worker``: in a worker of ``--workers N``, exported with a ``worker``
    label (one series per live worker; the JSON view has no such label)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        worker: str | None = None,
    ) -> None:
        super().__init__(name, labelnames)
        self._worker = worker
        extra = (worker_metrics.WORKER_LABEL,) if worker is not None else ()
        self._prom = PromGauge(
            name,
            help_text,
            self.labelnames + extra,
            registry=registry,
            # Used in multiprocess mode only: each live worker's own series.
            multiprocess_mode=worker_metrics.GAUGE_MODE,
        )
        if worker is not None and not self.labelnames:
            # prometheus-client exports an unlabelled gauge at 0 from its creation, but the
            # ``worker`` label makes this one labelled: without its child made now it would
            # have no series until first set, and ``max(relay_upstream_consecutive_failures)``
            # none for a worker (re)started since. (A labelled gauge's label values are not
            # known in advance: its series appear when first set, as in a single process.)
            self._prom.labels(worker)
        self._values: dict[LabelValues, float] = {}

    def _child(self, key: LabelValues) -> Any:
        if self._worker is not None:
            return self._prom.labels(*key, self._worker)
        return self._prom.labels(*key) if key else self._prom

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        self._child(key).set(value)
        with self._lock:
            self._values[key] = value

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        key = self._key(labels)
        self._child(key).inc(amount)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: Any) -> None:
        self.inc(-amount, **labels)

    def value(self, **labels: Any) -> float:
        return self._values.get(tuple(str(labels[n]) for n in self.labelnames), 0.0)

    def snapshot(self) -> Any:
        with self._lock:
            items = sorted(self._values.items())
        if not self.labelnames:
            return dict(items).get((), 0.0)
        return [dict(zip(self.labelnames, k, strict=True), value=v) for k, v in items]


class _Reservoir:
    __slots__ = ("count", "samples", "sum")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=RESERVOIR_SIZE)
        self.count = 0
        self.sum = 0.0


class Histogram(_Metric):
    """A latency in seconds: a Prometheus histogram plus a reservoir for JSON percentiles."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        keep_samples: bool = True,
    ) -> None:
        super().__init__(name, labelnames)
        self.buckets = tuple(buckets)
        # False: Prometheus buckets only, no JSON percentiles (a metric observed by time,
        # not by request, whose reservoir would only ever fill).
        self.keep_samples = keep_samples
        self._prom = PromHistogram(
            name, help_text, self.labelnames, registry=registry, buckets=self.buckets
        )
        self._reservoirs: dict[LabelValues, _Reservoir] = {}

    def observe(self, seconds: float, **labels: Any) -> None:
        key = self._key(labels)
        (self._prom.labels(*key) if key else self._prom).observe(seconds)
        if not self.keep_samples:
            return
        now = time.monotonic()
        with self._lock:
            res = self._reservoirs.get(key)
            if res is None:
                res = self._reservoirs[key] = _Reservoir()
            res.samples.append((now, seconds))
            res.count += 1
            res.sum += seconds

    def declare(self, **labels: Any) -> None:
        """Expose this label set, at zero, before its first observation: the set of
        series is then the same from the start, not growing as values first occur."""
        key = self._key(labels)
        if key:
            self._prom.labels(*key)

    def count(self, **labels: Any) -> int:
        res = self._reservoirs.get(tuple(str(labels[n]) for n in self.labelnames))
        return res.count if res else 0

    def quantiles_ms(self, window_s: float | None = WINDOW_S, **labels: Any) -> dict[str, float]:
        """p50/p90/p99 in ms over the observations of the last ``window_s`` (all retained
        ones when None), across every label set matching ``labels``."""
        values = self._recent(window_s, labels)
        return _quantiles_ms(values)

    def _recent(self, window_s: float | None, labels: dict[str, Any]) -> list[float]:
        since = time.monotonic() - window_s if window_s is not None else -math.inf
        wanted = {self.labelnames.index(k): str(v) for k, v in labels.items()}
        with self._lock:
            return [
                v
                for key, res in self._reservoirs.items()
                if all(key[i] == v for i, v in wanted.items())
                for t, v in res.samples
                if t >= since
            ]

    def snapshot(self) -> Any:
        rows = []
        now = time.monotonic()
        with self._lock:
            items = sorted(self._reservoirs.items())
            copies = [(k, r.count, r.sum, list(r.samples)) for k, r in items]
        for key, count, total, samples in copies:
            row: dict[str, Any] = dict(zip(self.labelnames, key, strict=True))
            row.update(count=count, sum_s=round(total, 6))
            # Percentiles in milliseconds: over the last minute (the dashboard's view) and
            # over every retained observation.
            row.update(_quantiles_ms([v for t, v in samples if t >= now - WINDOW_S]))
            row["retained"] = _quantiles_ms([v for _, v in samples])
            rows.append(row)
        if not self.labelnames:
            return rows[0] if rows else {"count": 0}
        return rows


def _quantiles_ms(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {f"p{int(q * 100)}_ms": None for q in _QUANTILES}
    samples.sort()
    out: dict[str, Any] = {}
    for q in _QUANTILES:
        idx = min(len(samples) - 1, max(0, math.ceil(q * len(samples)) - 1))
        out[f"p{int(q * 100)}_ms"] = round(samples[idx] * 1000, 3)
    return out


class MetricsRegistry:
    """Get-or-create metrics by name over one ``CollectorRegistry`` (one per app instance,
    so tests stay isolated); process metrics are collected on the same registry.

    ``worker``: this process is worker ``worker`` of ``relay serve --workers N``; with the
    supervisor's ``PROMETHEUS_MULTIPROC_DIR`` set, ``render_prometheus`` covers every worker
    (``relay.observability.worker_metrics``)."""

    def __init__(self, *, process_metrics: bool = True, worker: int | None = None) -> None:
        # auto_describe off: registering the process collector would otherwise collect it
        # at once, reading /proc on the event loop (our own metrics describe themselves).
        self.registry = CollectorRegistry(auto_describe=False)
        self.worker = worker
        self._multiprocess_dir = (
            worker_metrics.multiprocess_directory() if worker is not None else None
        )
        if self._multiprocess_dir is not None:
            worker_metrics.create_value_files(self._multiprocess_dir)
        # The process metrics of every worker come from the scrape registry instead.
        if process_metrics and self._multiprocess_dir is None:
            ProcessCollector(registry=self.registry)
        self._build_labels: dict[str, str] = {}
        self._scrape: CollectorRegistry | None = None
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    @property
    def covers_all_workers(self) -> bool:
        """Whether ``render_prometheus`` reports every worker of the instance."""
        return self._multiprocess_dir is not None

    def _get(self, cls: type[_Metric], name: str, labelnames: Iterable[str], make: Any) -> Any:
        labels = tuple(labelnames)
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._metrics[name] = make(labels)
            elif type(metric) is not cls or metric.labelnames != labels:
                raise ValueError(f"metric {name} re-registered with another type or labels")
            return metric

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Counter:
        result: Counter = self._get(
            Counter, name, labelnames, lambda ls: Counter(self.registry, name, help_text, ls)
        )
        return result

    def gauge(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Gauge:
        worker = str(self.worker) if self.covers_all_workers else None
        result: Gauge = self._get(
            Gauge, name, labelnames, lambda ls: Gauge(self.registry, name, help_text, ls, worker)
        )
        return result

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        *,
        buckets: Sequence[float] = FAST_BUCKETS,
        keep_samples: bool = True,
    ) -> Histogram:
        result: Histogram = self._get(
            Histogram,
            name,
            labelnames,
            lambda ls: Histogram(self.registry, name, help_text, ls, buckets, keep_samples),
        )
        if result.buckets != tuple(buckets):
            raise ValueError(f"metric {name} re-registered with other buckets")
        return result

    def build_info(self, **labels: str) -> None:
        """``relay_build_info{version=…,…} 1``: which build an instance runs."""
        PromInfo("relay_build", "Relay build", registry=self.registry).info(labels)
        self._build_labels = dict(labels)

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def render_prometheus(self) -> bytes:
        """The text format; blocking (reads /proc, and every worker's files): off the loop."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        if self._scrape is None:
            self._scrape = worker_metrics.scrape_registry(
                self._multiprocess_dir, self._build_labels
            )
        return generate_latest(self._scrape)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            metrics = dict(self._metrics)
        return {name: metrics[name].snapshot() for name in sorted(metrics)}
