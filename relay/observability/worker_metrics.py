"""Metrics of ``relay serve --workers N``: one scrape of /metrics covers every worker.

The kernel hands each connection to any worker, so before this a scrape showed the
counters of whichever worker answered, alternating from one scrape to the next with nothing
to tell them apart. The workers now use prometheus-client's multiprocess mode: each worker
writes its values to memory-mapped files in a directory the supervisor creates for the run
(``PROMETHEUS_MULTIPROC_DIR``), and the worker that answers a scrape reads all of them:

* counters and histograms are summed over the workers, those that exited included, so a
  count never goes backwards when a worker is restarted: the instance reads like one relay;
* gauges carry a ``worker`` label (the worker's index, stable across restarts), one series
  per live worker: aggregate them in the query (``sum``, ``max``); a worker that exited has
  its gauges dropped (``worker_exited``);
* the process metrics (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, …)
  are read from /proc for every live worker, labelled ``worker``;
* ``relay_build_info`` is the answering worker's (every worker runs the same build).

``/api/stats`` stays the view of the worker that answered (its latency reservoirs and
counters are its own) and says which one that is (``worker``). docs/operations.md, "Metrics
with --workers", has the decision and its reasons.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final, Literal

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import Info as PromInfo
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_LABEL = "worker"
# Gauges of every live worker, each under its own ``worker`` label (summing a series that
# one worker alone writes is its value; "live": a worker that exited drops out).
GAUGE_MODE: Final[Literal["livesum"]] = "livesum"
_PID_FILE = "worker-{index}.pid"


def multiprocess_directory() -> Path | None:
    """The directory this worker writes its metric values to (None: not a worker)."""
    value = os.environ.get(MULTIPROC_ENV, "")
    return Path(value) if value else None


# ---------------------------------------------------------------------- supervisor side
def create_directory() -> Path:
    """A fresh directory for one run's metric files (mode 0700, removed by ``remove``)."""
    return Path(tempfile.mkdtemp(prefix="relay-worker-metrics-"))


def remove_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def worker_started(path: Path, index: int, pid: int) -> None:
    """Record which process is worker ``index`` (for its process metrics and gauges)."""
    target = path / _PID_FILE.format(index=index)
    partial = target.with_suffix(".tmp")
    partial.write_text(str(pid))
    partial.replace(target)


def worker_exited(path: Path, pid: int) -> None:
    """Drop the gauges of a worker that exited (its counts stay in the totals)."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]  # untyped upstream


# ---------------------------------------------------------------------- worker side
def _live_workers(path: Path) -> Iterator[tuple[str, int]]:
    for pid_file in sorted(path.glob(_PID_FILE.format(index="*"))):
        index = pid_file.name[len("worker-") : -len(".pid")]
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if Path(f"/proc/{pid}").exists():
                yield index, pid


class WorkerProcessCollector(Collector):
    """prometheus-client's process metrics for every live worker, labelled ``worker``."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for index, pid in _live_workers(self._path):
            collector = ProcessCollector(pid=_constant(pid), registry=None)
            for family in collector.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    out.add_sample(
                        sample.name, {**sample.labels, WORKER_LABEL: index}, sample.value
                    )
        return list(merged.values())


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def scrape_registry(path: Path, build_labels: dict[str, str]) -> CollectorRegistry:
    """What /metrics renders in a worker: every worker's values, read at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    registry.register(WorkerProcessCollector(path))
    if build_labels:
        PromInfo("relay_build", "Relay build", registry=registry).info(build_labels)
    return registry
