"""relay.tasks: owned tasks report their failures; cancel_and_wait never swallows the
caller's own cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.tasks import cancel_and_wait, owned_count, spawn


async def test_cancel_and_wait_returns_the_tasks_exception_instead_of_raising() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise ValueError("cleanup failed")  # noqa: B012

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    result = await cancel_and_wait(task)
    assert isinstance(result, ValueError) and task.done()


async def test_cancel_and_wait_of_a_finished_or_missing_task() -> None:
    async def ok() -> None:
        return None

    task = asyncio.create_task(ok())
    await task
    assert await cancel_and_wait(task) is None
    assert await cancel_and_wait(None) is None


async def test_the_callers_own_cancellation_is_re_raised() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # keeps running after being cancelled

    inner = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    waiting = asyncio.Event()

    async def caller() -> str:
        waiting.set()
        await cancel_and_wait(inner)
        return "went on"  # must not be reached: the caller itself was cancelled

    outer = asyncio.create_task(caller())
    await waiting.wait()
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not inner.done()
    release.set()
    await asyncio.wait({inner})
    assert inner.cancelled()


async def test_a_task_cannot_wait_for_itself() -> None:
    async def me() -> None:
        current = asyncio.current_task()
        assert current is not None
        await cancel_and_wait(current)

    with pytest.raises(RuntimeError):
        await asyncio.create_task(me())


async def test_an_owned_task_failure_is_logged_and_its_owner_cleans_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[BaseException] = []

    async def boom() -> None:
        raise RuntimeError("boom")

    before = owned_count()
    task = spawn(boom(), name="test-boom", on_failure=failures.append)
    await asyncio.wait({task})
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert [str(f) for f in failures] == ["boom"]
    assert any(
        r.levelno == logging.ERROR and "test-boom" in r.getMessage() and r.exc_info
        for r in caplog.records
    )
    assert owned_count() == before


async def test_an_owned_task_cancelled_or_finishing_is_not_a_failure() -> None:
    failures: list[BaseException] = []

    async def forever() -> None:
        await asyncio.Event().wait()

    task = spawn(forever(), name="test-forever", on_failure=failures.append)
    await asyncio.sleep(0)
    assert await cancel_and_wait(task) is None
    await asyncio.sleep(0)
    assert failures == []
