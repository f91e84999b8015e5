"""relay.memory: the collector's pauses are measured, start-up objects frozen, ended
interviews freed once per delay (the interviews themselves: tests/integration/
test_memory_per_session.py)."""

from __future__ import annotations

import asyncio
import gc
import platform
import time
from collections.abc import Iterator

import pytest

from relay.memory import MALLOC_TRIM, GcPauseMeter, MemoryKeeper, freeze_startup_objects
from relay.observability.metrics import MetricsRegistry


def full_pauses(metrics: MetricsRegistry) -> float:
    value = metrics.registry.get_sample_value("relay_gc_pause_seconds_count", {"generation": "2"})
    return value or 0.0


def test_every_collection_is_timed_once_flushed() -> None:
    metrics = MetricsRegistry(process_metrics=False)
    meter = GcPauseMeter(metrics)
    meter.install()
    try:
        gc.collect()
        gc.collect()
    finally:
        meter.remove()
    # Nothing reaches the histogram from inside the collector's callback...
    assert full_pauses(metrics) == 0
    meter.flush()
    # ...only when flushed (from the event loop's monitor).
    assert full_pauses(metrics) == 2
    assert meter not in gc.callbacks
    gc.collect()
    meter.flush()
    assert full_pauses(metrics) == 2


@pytest.fixture
def unfreeze() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()


def test_start_up_objects_leave_the_collected_generations(unfreeze: None) -> None:
    tracked_before = len(gc.get_objects())
    frozen = freeze_startup_objects()
    assert frozen == gc.get_freeze_count() >= tracked_before // 2
    # What the collector still scans is what was created since.
    assert len(gc.get_objects()) < tracked_before // 10


async def test_one_collection_per_delay_however_many_interviews_end() -> None:
    keeper = MemoryKeeper(delay_s=0.05)
    try:
        for _ in range(5):
            keeper.session_ended()
        async with asyncio.timeout(5):
            await keeper.settled()
        assert keeper.collections == 1
        keeper.session_ended()
        async with asyncio.timeout(5):
            await keeper.settled()
        assert keeper.collections == 2
    finally:
        await keeper.close()


async def test_an_interview_ending_during_a_collection_gets_its_own() -> None:
    keeper = MemoryKeeper(delay_s=0.05)
    try:
        keeper.session_ended()
        async with asyncio.timeout(5):
            # Step the loop until the first collection has run (its trim is still
            # pending): a counter the keeper has no reason to signal; bounded above.
            while keeper.collections == 0:  # noqa: ASYNC110
                await asyncio.sleep(0)
        keeper.session_ended()
        async with asyncio.timeout(5):
            await keeper.settled()
        assert keeper.collections == 2
    finally:
        await keeper.close()


async def ended_and_collected(keeper: MemoryKeeper) -> None:
    keeper.session_ended()
    async with asyncio.timeout(30):
        await keeper.settled()


@pytest.fixture
def only_new_objects_collected() -> Iterator[None]:
    """Whatever the process holds already is frozen (out of the collector's scans) for the
    test, so a collection's pause is that of the test's own objects: in a test worker that
    ran other files first it was that of millions more, and a 1.2 s pause made the test
    wait out 24 s (the share). A freeze already in place (start-up objects) is kept."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


@pytest.mark.parametrize("pause_share", [0.05, 0.0])
async def test_full_collections_keep_to_their_share_of_the_time(
    pause_share: float, only_new_objects_collected: None
) -> None:
    """With many objects live a full collection pauses for long: the next one waits until
    that pause is at most ``pause_share`` of the time since (0: only the delay)."""
    keeper = MemoryKeeper(delay_s=0.01, pause_share=pause_share)
    # What live interviews are to the collector: many tracked objects, each scanned.
    live: list[list[int]] = [[] for _ in range(300_000)]
    try:
        await ended_and_collected(keeper)
        first_pause = keeper.last_pause_s
        first_ended_at = keeper.last_started_at + first_pause
        assert first_pause > 0.002  # the live objects made it measurable
        # Asked right away, the keeper would wait out the share; without one, the delay.
        bound = first_pause / pause_share if pause_share else 0.0
        assert keeper.next_wait_s() == pytest.approx(
            max(0.01, first_ended_at + bound - time.monotonic()), abs=0.05
        )
        await ended_and_collected(keeper)
        gap = keeper.last_started_at - first_ended_at
        assert keeper.collections == 2
        if pause_share:
            assert gap >= first_pause / pause_share
        else:
            assert gap < first_pause / 0.05  # what the share would have waited
    finally:
        del live
        await keeper.close()


async def test_delay_zero_leaves_collection_to_python() -> None:
    keeper = MemoryKeeper(delay_s=0)
    keeper.session_ended()
    await keeper.close()
    assert keeper.collections == 0
    closed = MemoryKeeper(delay_s=0.01)
    await closed.close()
    closed.session_ended()  # after close: nothing is started that would outlive it
    assert closed.collections == 0 and closed._pending is None


def test_malloc_trim_is_found_on_glibc() -> None:
    if platform.libc_ver()[0] == "glibc":
        assert MALLOC_TRIM is not None and MALLOC_TRIM(0) in (0, 1)
    else:
        assert MALLOC_TRIM is None
