"""relay.memory: the collector's pauses are measured, start-up objects frozen, ended
interviews freed once per delay (the interviews themselves: tests/integration/
test_memory_per_session.py)."""

from __future__ import annotations

import asyncio
import gc
import platform
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
