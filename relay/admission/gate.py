"""Overload protection for the admission path: a bounded number of session creations in
flight, a short bounded wait for a slot, and a fast 503 ``overloaded`` beyond that.

Without it, every request that arrives while the database pool and the upstream mint are
busy queues behind them; under a sustained overload the queue grows without bound, each
request ends up waiting longer than its client (who has gone by then, while its work still
runs), and the relay serves nobody and does not recover when the load stops. With it, at
most ``limits.max_inflight_admissions`` creations run at once, a request waits at most
``limits.admission_queue_timeout_s`` for one of them to finish, and the rest are refused in
well under a second with Retry-After: the admitted ones are served in their clients' time
and the relay recovers as soon as the load drops.

A request whose client went away while it waited for a slot is dropped when it gets the
slot, before it touches the database (aiohttp keeps running a handler after its client
has gone; see docs/architecture.md, "Overload").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry

# The ``reason`` label of relay_admission_shed_total (a closed set).
OVERLOADED = "overloaded"
CLIENT_GONE = "client_gone"
SHED_REASONS = (OVERLOADED, CLIENT_GONE)


class ClientGone(Exception):
    """The client closed its connection while its request waited for a slot."""


def overloaded_error(retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        OVERLOADED,
        "The service is busy; try again shortly.",
        retryable=True,
        retry_after_s=retry_after_s,
    )


class AdmissionGate:
    """At most ``max_inflight`` holders at once; a bounded wait for a slot, then 503."""

    def __init__(
        self,
        *,
        max_inflight: int,
        queue_timeout_s: float,
        retry_after_s: int,
        metrics: MetricsRegistry,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.max_inflight = max_inflight
        self._queue_timeout_s = queue_timeout_s
        self._retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight = 0
        self._waiting = 0
        self._shed = metrics.counter(
            "relay_admission_shed_total",
            "Session requests refused before admission: overloaded (503, no slot in time)"
            " or client_gone (the client left while waiting)",
            ["reason"],
        )
        self._shed.declare(reason=SHED_REASONS)
        self._inflight_gauge = metrics.gauge(
            "relay_admission_inflight", "Session requests being admitted now (bounded)"
        )
        self._waiting_gauge = metrics.gauge(
            "relay_admission_waiting", "Session requests waiting for an admission slot"
        )

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        return self._waiting

    def shed_client_gone(self) -> None:
        self._shed.inc(reason=CLIENT_GONE)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one admission slot for the block; raise 503 ``overloaded`` if none frees
        up within the queue timeout."""
        await self._acquire()
        self._inflight += 1
        self._inflight_gauge.set(self._inflight)
        try:
            yield
        finally:
            self._inflight -= 1
            self._inflight_gauge.set(self._inflight)
            self._slots.release()

    async def _acquire(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: returns without suspending
            return
        if self._queue_timeout_s <= 0:
            self._refuse()
        self._waiting += 1
        self._waiting_gauge.set(self._waiting)
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            self._refuse()
        finally:
            self._waiting -= 1
            self._waiting_gauge.set(self._waiting)

    def _refuse(self) -> None:
        self._shed.inc(reason=OVERLOADED)
        raise overloaded_error(self._retry_after_s)
