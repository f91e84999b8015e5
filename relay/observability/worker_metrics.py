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
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from relay.private_files import open_private, write_private

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_LABEL = "worker"
# Gauges of every live worker, each under its own ``worker`` label (summing a series that
# one worker alone writes is its value; "live": a worker that exited drops out).
GAUGE_MODE: Final[Literal["livesum"]] = "livesum"
_PID_FILE = "worker-{index}.pid"
# The files prometheus-client's multiprocess mode writes a process's values to,
# ``<kind>_<pid>.db``: one per kind the relay uses (no summaries; gauges all ``GAUGE_MODE``).
_VALUE_FILE_KINDS = ("counter", "histogram", f"gauge_{GAUGE_MODE}")


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
    write_private(path / _PID_FILE.format(index=index), str(pid))


def worker_exited(path: Path, pid: int) -> None:
    """Drop the gauges of a worker that exited (its counts stay in the totals)."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]  # untyped upstream


# ---------------------------------------------------------------------- worker side
def create_value_files(path: Path) -> None:
    """Create this process's value files 0600 before prometheus-client opens them.

    It creates them with ``open(…, "a+b")``, so their mode would be the umask's (0644 for
    the usual 022); the directory is 0700 already, but the relay's files are 0600 whatever
    the umask (docs/operations.md, "Local files and their modes"). An existing file (a
    dead worker's, its pid reused) is kept as it is, counts included, and narrowed: the
    counters of the instance never go backwards. Call before the first metric is made."""
    for kind in _VALUE_FILE_KINDS:
        target = path / f"{kind}_{os.getpid()}.db"
        open_private(target, "ab").close()
        # Laid out at once (prometheus-client's own header, no values): another worker's
        # scrape reads every file here, and an empty one would fail it.
        MmapedDict(str(target)).close()  # type: ignore[no-untyped-call]  # untyped upstream


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
