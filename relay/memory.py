"""Giving an ended interview's memory back, and keeping garbage collection pauses short.

Why this exists (docs/operations.md, "Memory per session"): aiortc's peer connections are
reference cycles (transports and their peers, event emitters and the handlers that
reference them), so when an interview ends *nothing* of its two peers is freed by
reference counting: measured, every RTCPeerConnection, transport, SRTP session and DTLS
context of an ended interview waits for CPython's cyclic collector. That collector only
runs a full collection once the long-lived objects have grown by a quarter, and it counts
objects, not bytes: the native memory behind them (OpenSSL's DTLS state, libsrtp's
contexts) is invisible to it. So ended interviews piled up for dozens of sessions between
full collections, glibc's heap grew to hold them and stayed fragmented afterwards: RSS
grew with every interview over hundreds of open-close cycles while the memory Python
itself traced stayed flat.

Two measures:

* ``freeze_startup_objects()``, once start-up is done: the objects alive then (modules,
  classes, configuration: by far the most numerous) move to the permanent generation and
  are never scanned again, so a full collection costs in proportion to the live
  interviews only, not to the size of the program. Every automatic collection, which
  pauses the event loop and so every packet being forwarded, gets as much cheaper (the
  figures: docs/benchmarks.md, "Figures behind the code's choices").
* ``MemoryKeeper.session_ended()``: a bridge has ended; within ``delay_s`` (and at most
  once per ``delay_s``, however many end) a full collection frees it, and glibc's
  ``malloc_trim`` hands the freed heap pages back to the system (in a worker thread: it
  does not need the interpreter, ctypes releases the GIL). Collection itself stays on
  the event loop's thread: finalisers of asyncio objects must run there.

  A full collection scans every live interview's objects (about a thousand each), and
  while it runs nothing else does, the forwarding of every other interview's audio
  included: measured, about half a millisecond per live interview, a third of a second
  with 500 live (docs/benchmarks.md, "What a full collection costs with interviews
  live"). So the keeper also keeps full collections within ``pause_share`` of the time:
  the next one waits until the last one's pause is at most that share of the time since
  it ended. With few interviews live the pause is short and ``delay_s`` decides; with
  hundreds, ended interviews are freed together, less often, and hold their memory
  meanwhile.

``relay_gc_pause_seconds`` (every collection, automatic or ours, by generation) shows what
the collector costs the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from relay.observability.metrics import GC_BUCKETS, Histogram, MetricsRegistry
from relay.tasks import TaskGroup

log = logging.getLogger("relay.memory")
# The coarsest step of an event loop's timer clock (uvloop: milliseconds).
TIMER_STEP_S = 0.001


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it (musl, macOS)."""
    try:
        # dlopen(NULL): the symbols already loaded into this process, C library included
        # (no search on disk, which find_library would do by running ldconfig).
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


MALLOC_TRIM = _find_malloc_trim()


def freeze_startup_objects() -> int:
    """Collect once, then move every surviving object to the permanent generation.

    Returns how many objects were frozen. Objects frozen here are never collected: this
    runs after start-up, when what is alive is what lives as long as the process."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauseMeter:
    """Times every collection (``gc.callbacks``); ``flush()`` moves them into a histogram.

    The callback runs inside whatever allocation triggered the collection, possibly while
    that code holds a lock (a metric's own, say): it must not take locks itself, so it
    only appends to a bounded deque, and the histogram is fed later from the event loop.
    """

    def __init__(self, metrics: MetricsRegistry) -> None:
        self._histogram: Histogram = metrics.histogram(
            "relay_gc_pause_seconds",
            "Garbage collections, how long each paused the process, by generation",
            ["generation"],
            buckets=GC_BUCKETS,
            # Collections come with time and allocations, not with requests: Prometheus
            # buckets only, so nothing here grows while the process runs.
            keep_samples=False,
        )
        for generation in range(3):
            self._histogram.declare(generation=generation)
        self._started: float | None = None
        self._pending: deque[tuple[int, float]] = deque(maxlen=10_000)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._pending.append(
                (int(info.get("generation", 0)), time.perf_counter() - self._started)
            )
            self._started = None

    def flush(self) -> None:
        while self._pending:
            generation, pause = self._pending.popleft()
            self._histogram.observe(pause, generation=generation)

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class MemoryKeeper:
    """Frees ended interviews within ``delay_s`` (0: leave it to Python's collector), with
    full collections pausing the process at most ``pause_share`` of the time (0: no bound)."""

    def __init__(
        self,
        delay_s: float,
        *,
        pause_share: float = 0.0,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.pause_share = pause_share
        self._tasks = TaskGroup("memory", log=log, metrics=metrics)
        self._pending: asyncio.Task[None] | None = None
        # An interview ended since the pending task's last collection began.
        self._ended = False
        self._closed = False
        # Full collections this keeper ran, and what the last one found and cost, on the
        # monotonic clock (tests, stats).
        self.collections = 0
        self.last_unreachable = 0
        self.last_started_at = 0.0
        self.last_pause_s = 0.0

    def session_ended(self) -> None:
        if self.delay_s <= 0 or self._closed:
            return
        self._ended = True
        if self._pending is None or self._pending.done():
            self._pending = self._tasks.spawn(self._collect(), name="memory-keeper")
        # else: the pending task collects again for this one (one collection per delay).

    def next_wait_s(self) -> float:
        """From now until the next full collection may run: ``delay_s``, or longer while
        the last one's pause is more than ``pause_share`` of the time since it ended."""
        wait = self.delay_s
        if self.pause_share > 0 and self.collections:
            ended_at = self.last_started_at + self.last_pause_s
            due = ended_at + self.last_pause_s / self.pause_share
            wait = max(wait, due - time.monotonic())
        return wait

    async def _collect(self) -> None:
        while self._ended:
            self._ended = False
            # The event loop's timer may fire up to a millisecond before time.monotonic()
            # says (uvloop's clock has millisecond steps): that much more, so the share holds.
            await asyncio.sleep(self.next_wait_s() + TIMER_STEP_S)
            self.last_started_at = time.monotonic()
            self.last_unreachable = gc.collect()
            self.last_pause_s = time.monotonic() - self.last_started_at
            self.collections += 1
            log.debug(
                "full collection: %d unreachable objects in %.1f ms",
                self.last_unreachable,
                self.last_pause_s * 1000,
            )
            if MALLOC_TRIM is not None:
                await asyncio.to_thread(MALLOC_TRIM, 0)

    async def settled(self) -> None:
        """Until no collection is pending (every interview ended so far was collected)."""
        if self._pending is not None:
            await asyncio.shield(self._pending)

    async def close(self) -> None:
        self._closed = True
        await self._tasks.close()
