"""relay.admission.gate: the bound on session creations in flight, the bounded wait for a
slot, the 503 overloaded beyond it, and no slot ever leaked (errors, cancelled waiters)."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.admission.gate import AdmissionGate
from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry

DEADLINE_S = 5.0


def make_gate(
    max_inflight: int = 2, queue_timeout_s: float = 0.0
) -> tuple[AdmissionGate, MetricsRegistry]:
    metrics = MetricsRegistry(process_metrics=False)
    gate = AdmissionGate(
        max_inflight=max_inflight, queue_timeout_s=queue_timeout_s, retry_after_s=7, metrics=metrics
    )
    return gate, metrics


def shed(metrics: MetricsRegistry, reason: str) -> float:
    counter = metrics.get("relay_admission_shed_total")
    assert counter is not None
    value: float = counter.value(reason=reason)  # type: ignore[attr-defined]
    return value


async def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0)


class Holders:
    """Tasks that each hold a slot until ``release`` is set."""

    def __init__(self, gate: AdmissionGate) -> None:
        self.gate = gate
        self.release = asyncio.Event()
        self.entered = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def _hold(self) -> None:
        async with self.gate.slot():
            self.entered += 1
            await self.release.wait()

    def start(self, count: int) -> None:
        self.tasks += [asyncio.create_task(self._hold()) for _ in range(count)]

    @classmethod
    async def inside(cls, gate: AdmissionGate, count: int, what: str) -> Holders:
        """``count`` new holders, once all of them hold a slot."""
        holders = cls(gate)
        holders.start(count)
        await wait_for(lambda: holders.entered == count, what)
        return holders

    @classmethod
    async def queued(cls, gate: AdmissionGate, what: str) -> Holders:
        """One new holder, once it waits in the gate's queue (nothing else waiting)."""
        holders = cls(gate)
        holders.start(1)
        await wait_for(lambda: gate.waiting == 1, what)
        return holders

    async def finish(self) -> list[BaseException | None]:
        self.release.set()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]


async def test_full_gate_refuses_at_once_with_503_overloaded_and_retry_after() -> None:
    gate, metrics = make_gate(max_inflight=2, queue_timeout_s=0.0)
    holders = await Holders.inside(gate, 2, "both holders inside")
    assert gate.inflight == 2
    with pytest.raises(ApiError) as refused:
        async with gate.slot():
            pytest.fail("a third holder got in")
    err = refused.value
    assert (err.status, err.code, err.retryable) == (503, "overloaded", True)
    assert err.headers() == {"Retry-After": "7"}
    assert shed(metrics, "overloaded") == 1 and shed(metrics, "client_gone") == 0
    assert await holders.finish() == [None, None]
    assert gate.inflight == 0 and gate.waiting == 0


async def test_a_waiter_gets_the_slot_a_holder_frees_within_the_queue_timeout() -> None:
    gate, metrics = make_gate(max_inflight=1, queue_timeout_s=DEADLINE_S)
    holders = await Holders.inside(gate, 1, "the holder inside")
    waiter = await Holders.queued(gate, "the waiter queued")
    assert waiter.entered == 0
    assert await holders.finish() == [None]
    await wait_for(lambda: waiter.entered == 1, "the waiter inside")
    assert gate.inflight == 1 and gate.waiting == 0
    assert await waiter.finish() == [None]
    assert shed(metrics, "overloaded") == 0


async def test_a_waiter_is_refused_after_the_queue_timeout_and_capacity_is_intact() -> None:
    gate, metrics = make_gate(max_inflight=2, queue_timeout_s=0.05)
    holders = await Holders.inside(gate, 2, "both holders inside")
    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        async with gate.slot():
            pytest.fail("got in past a full gate")
    waited = time.monotonic() - started
    assert refused.value.code == "overloaded"
    assert 0.04 <= waited < 2.0  # the bounded wait, then a prompt refusal
    assert gate.waiting == 0 and gate.inflight == 2
    assert shed(metrics, "overloaded") == 1
    assert await holders.finish() == [None, None]
    # Every slot came back: two enter again at once.
    again = await Holders.inside(gate, 2, "two new holders inside")
    assert await again.finish() == [None, None]


async def test_an_error_inside_or_a_cancelled_waiter_leaks_no_slot() -> None:
    gate, _ = make_gate(max_inflight=1, queue_timeout_s=DEADLINE_S)
    with pytest.raises(RuntimeError):
        async with gate.slot():
            raise RuntimeError("admission failed")
    assert gate.inflight == 0
    holders = await Holders.inside(gate, 1, "the holder inside")
    waiter = await Holders.queued(gate, "the waiter queued")
    waiter.tasks[0].cancel()
    results = await waiter.finish()
    assert isinstance(results[0], asyncio.CancelledError) and waiter.entered == 0
    assert gate.waiting == 0
    assert await holders.finish() == [None]
    assert gate.inflight == 0
    after = await Holders.inside(gate, 1, "a new holder inside")
    assert await after.finish() == [None]


async def test_a_newcomer_does_not_overtake_a_waiter() -> None:
    gate, _ = make_gate(max_inflight=1, queue_timeout_s=DEADLINE_S)
    holders = await Holders.inside(gate, 1, "the holder inside")
    first = await Holders.queued(gate, "the first waiter queued")
    holders.release.set()
    await asyncio.gather(*holders.tasks)
    # The freed slot is promised to the waiter: a newcomer now waits behind it.
    second = Holders(gate)
    second.start(1)
    await wait_for(lambda: first.entered == 1, "the first waiter inside")
    assert second.entered == 0
    assert await first.finish() == [None]
    await wait_for(lambda: second.entered == 1, "the newcomer inside")
    assert await second.finish() == [None]


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        make_gate(max_inflight=0)
