"""Route syncs are spread over pumps: many routes falling due at once do not all hold up
one pump, and the flush timer takes only routes overdue by its period (stopped ones).

Each route's counters reach Python (``FastOpusForwarder.compiled_sync``: DirectionStats,
aiortc's statistics) once a sync interval while its packets flow. Routes set up or synced
together fall due together; syncing every one of them in one pump delayed the datagrams
behind it by milliseconds at a few hundred interviews. The rig is the per-packet harness's
(``bench.compiled_cost.Rig``: real sockets, real SRTP, real forwarders).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from bench.compiled_cost import Rig
from bench.forwarding_cost import rtp_packets
from relay.media import fastloop

ROUTES = 40


def _per_pump() -> int:
    from relay.media import _fastloop

    per_pump: int = _fastloop.SYNCS_PER_PUMP
    assert 2 * per_pump < ROUTES < 3 * per_pump  # three pumps, the last one partial
    return per_pump


def _rig(monkeypatch: pytest.MonkeyPatch, sync_interval_s: float, flush_s: float) -> Iterator[Rig]:
    """The rig with its routes due ``sync_interval_s`` after a sync; the flush timer takes
    those overdue by ``flush_s`` more."""
    if not fastloop.built():  # never skipped (as the media tests' compiled runs)
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    monkeypatch.setattr(fastloop, "SYNC_INTERVAL_S", sync_interval_s)
    monkeypatch.setattr(fastloop, "FLUSH_INTERVAL_S", flush_s)
    loop = asyncio.new_event_loop()
    rig = Rig(loop, ROUTES, compiled=True)
    try:
        yield rig
    finally:
        rig.close()
        loop.close()


@pytest.fixture
def always_overdue(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """Every route with unsynced counters is due, and overdue for the timer, at once."""
    yield from _rig(monkeypatch, 0.0, 0.0)


@pytest.fixture
def due_not_overdue(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """Due at once for a pump; overdue for the timer only a minute later."""
    yield from _rig(monkeypatch, 0.0, 60.0)


def _feed_round(rig: Rig, protected: list[list[bytes]], r: int) -> None:
    """One packet to every route's socket (loopback: queued before this returns)."""
    for i, target in enumerate(rig.targets):
        rig.feeder.sendto(protected[i][r], target)


def _forward_two_rounds(rig: Rig) -> None:
    """Each direction's first packet (Python; it hands its route over), then one packet
    each read and forwarded in a single pump of the compiled loop."""
    plain = rtp_packets(2)
    protected = [[tx.protect(p) for p in plain] for tx in rig.senders]
    _feed_round(rig, protected, 0)
    rig.sockets.read_ready()
    assert rig.drain() == ROUTES
    assert sum(s.compiled for s in rig.stats) == ROUTES
    assert rig.sockets.compiled is not None
    rig.sockets.compiled.take_due(0.0)  # start from every route synced
    _feed_round(rig, protected, 1)
    # At least these (a stray datagram of another test's socket may land on a port of the
    # rig's: the tests share loopback); exactly one forwarded per route.
    assert rig.sockets.read_ready() >= ROUTES
    assert rig.drain() == ROUTES


def _flush_timer(compiled: Any) -> None:
    """What the flush timer does when it fires (``MediaSockets._on_sync``)."""
    loop = asyncio.new_event_loop()  # for its exception handler only
    try:
        fastloop.sync_due(compiled, loop)
    finally:
        loop.close()


def _synced(rig: Rig) -> int:
    """Routes whose second packet Python has seen (their counters synced since)."""
    return sum(s.forwarded == 2 for s in rig.stats)


def test_a_pump_syncs_a_few_due_routes_and_the_next_pumps_the_rest(
    always_overdue: Rig,
) -> None:
    rig = always_overdue
    per_pump = _per_pump()
    _forward_two_rounds(rig)
    assert _synced(rig) == per_pump
    assert rig.sockets.read_ready() == 0  # nothing to read; the pump still syncs
    assert _synced(rig) == 2 * per_pump
    rig.sockets.read_ready()
    assert _synced(rig) == ROUTES
    assert rig.sockets.compiled is not None and rig.sockets.compiled.dirty == 0


def test_the_flush_timer_leaves_routes_not_overdue_to_the_pumps(due_not_overdue: Rig) -> None:
    # Due, but a pump will take them: the timer taking them all would line them up again.
    rig = due_not_overdue
    per_pump = _per_pump()
    _forward_two_rounds(rig)
    compiled = rig.sockets.compiled
    assert compiled is not None
    assert _synced(rig) == per_pump and compiled.dirty == ROUTES - per_pump
    _flush_timer(compiled)
    assert _synced(rig) == per_pump and compiled.dirty == ROUTES - per_pump
    rig.sockets.read_ready()  # the next pump takes the next few
    assert _synced(rig) == 2 * per_pump


def test_the_flush_timer_takes_every_overdue_route_at_once(always_overdue: Rig) -> None:
    # Packets stopped: no pump is coming, so the timer does not spread them.
    rig = always_overdue
    _forward_two_rounds(rig)
    compiled = rig.sockets.compiled
    assert compiled is not None
    assert _synced(rig) < ROUTES
    _flush_timer(compiled)
    assert _synced(rig) == ROUTES and compiled.dirty == 0


@pytest.fixture
def due_after_a_while(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """Routes due 0.2 s after a sync, overdue for the timer 0.05 s later; it looks every
    0.05 s."""
    yield from _rig(monkeypatch, 0.2, 0.05)


def test_the_flush_timer_looks_again_while_counters_wait_and_stops_once_all_are_synced(
    due_after_a_while: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set's own timer (``MediaSockets._on_sync``, on the running loop): armed by the
    pump that left counters unsynced, it finds none overdue at first and looks again until
    it has synced every route, then is not armed any more."""
    rig = due_after_a_while
    sockets = rig.sockets
    loop = sockets._loop
    looks: list[float] = []
    original = sockets._on_sync

    def counted() -> None:
        looks.append(loop.time())
        original()

    # The instance attribute shadows the method: the timer is armed with this one.
    monkeypatch.setattr(sockets, "_on_sync", counted)
    _forward_two_rounds(rig)
    compiled = sockets.compiled
    assert compiled is not None
    assert _synced(rig) == 0 and compiled.dirty == ROUTES  # none due yet for a pump
    assert sockets._sync is not None  # the pump armed the timer

    async def until_synced() -> None:
        deadline = loop.time() + 5
        while _synced(rig) < ROUTES or sockets._sync is not None:
            assert loop.time() < deadline, (_synced(rig), len(looks))
            await asyncio.sleep(0.01)

    loop.run_until_complete(until_synced())
    assert compiled.dirty == 0
    # It looked before any route was overdue (0.25 s after the sync), found none, and
    # looked again: at least twice in all, the last look taking every route.
    assert len(looks) >= 2, looks
