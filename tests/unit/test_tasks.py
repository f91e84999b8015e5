"""relay.tasks: owned tasks report their failures; cancel_and_wait never swallows the
caller's own cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

import pytest

from relay.observability.metrics import Counter, MetricsRegistry
from relay.tasks import (
    TaskGroup,
    cancel_and_wait,
    idle,
    owned_count,
    raise_if_cancelling,
    spawn,
)


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


# ---------------------------------------------------------------------- TaskGroup
async def test_a_group_closes_every_task_it_holds_and_then_takes_no_more() -> None:
    group = TaskGroup("test-owner")
    before = owned_count()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    tasks = [group.spawn(forever(), name=f"forever-{i}") for i in range(3)]
    await started.wait()
    assert len(group) == 3
    assert owned_count() == before + 3  # owned tasks: leak checks count them
    await group.close()
    assert all(t.cancelled() for t in tasks)
    assert len(group) == 0
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert owned_count() == before
    late = forever()
    with pytest.raises(RuntimeError, match="test-owner"):
        group.spawn(late, name="late")
    assert inspect.getcoroutinestate(late) == "CORO_CLOSED"  # not left un-awaited


async def test_a_failing_task_is_logged_with_its_owner_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = MetricsRegistry(process_metrics=False)
    group = TaskGroup("recordings", metrics=metrics)
    failures: list[BaseException] = []

    async def boom() -> None:
        raise RuntimeError("boom")

    async def forever() -> None:
        await asyncio.Event().wait()

    sibling = group.spawn(forever(), name="sibling")
    task = group.spawn(boom(), name="test-boom", on_failure=failures.append)
    await asyncio.wait({task})
    await asyncio.sleep(0)
    assert [str(f) for f in failures] == ["boom"]
    assert any(
        r.levelno == logging.ERROR
        and "test-boom" in r.getMessage()
        and "recordings" in r.getMessage()
        and r.exc_info
        for r in caplog.records
    )
    counter = metrics.get("relay_background_task_failures_total")
    assert isinstance(counter, Counter) and counter.value(owner="recordings") == 1
    assert not sibling.done()  # one task's failure is not its siblings'
    await group.close()
    assert sibling.cancelled()
    assert counter.value(owner="recordings") == 1  # a cancellation is no failure


async def test_close_gives_running_tasks_their_grace_then_cancels_the_rest() -> None:
    group = TaskGroup("test-owner")
    release = asyncio.Event()

    async def finishes_when_released() -> str:
        await release.wait()
        return "done"

    async def forever() -> None:
        await asyncio.Event().wait()

    quick = group.spawn(finishes_when_released(), name="quick")
    stuck = group.spawn(forever(), name="stuck")
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_soon(release.set)
    await group.close(grace_s=1.0)  # quick ends within it; stuck never would
    assert quick.result() == "done"
    assert stuck.cancelled()


async def test_a_task_may_close_its_own_group() -> None:
    group = TaskGroup("test-owner")

    async def forever() -> None:
        await asyncio.Event().wait()

    other = group.spawn(forever(), name="other")

    async def closes_its_group() -> str:
        await group.close()
        return "closed"

    closer = group.spawn(closes_its_group(), name="closer")
    assert await asyncio.wait_for(closer, 10) == "closed"
    assert other.cancelled()


async def pause_with_a_check(seconds: float) -> None:
    raise_if_cancelling()
    await asyncio.sleep(seconds)


@pytest.mark.parametrize("pause", [pause_with_a_check, idle], ids=["raise_if_cancelling", "idle"])
async def test_a_cancel_swallowed_by_a_library_is_raised_again_before_the_loop_goes_on(
    pause: Callable[[float], Awaitable[None]],
) -> None:
    rounds = 0

    async def reconnect_forever() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            # A library call that eats the cancel aimed at it (as closing a broken
            # connection can): the task is still marked as cancelling.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
            await pause(3600)

    task = asyncio.create_task(reconnect_forever())
    await asyncio.sleep(0)
    task.cancel()
    async with asyncio.timeout(5):
        await asyncio.wait({task})
    assert task.cancelled()
    assert rounds == 1


class Heard(logging.Handler):
    """Sets ``heard`` once a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.heard = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.heard.set()


async def test_a_task_still_running_after_its_cancel_is_named_with_its_stack_and_waited_for(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.tasks.STUCK_AFTER_CANCEL_S", 0.05)
    handler = Heard("after its cancel")
    logging.getLogger("relay.tasks").addHandler(handler)
    release = asyncio.Event()

    async def waits_deeper() -> None:
        await release.wait()  # a cancel is lost: only the test ends it

    async def loses_its_cancel() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await waits_deeper()
        return "ended"

    group = TaskGroup("owner-x")
    stuck = group.spawn(loses_its_cancel(), name="stuck-one")
    await asyncio.sleep(0)
    try:
        closing = asyncio.create_task(group.close())
        async with asyncio.timeout(5):
            await handler.heard.wait()
        assert not closing.done()  # still waited for: not abandoned, not cancelled again
        release.set()
        async with asyncio.timeout(5):
            await closing
    finally:
        logging.getLogger("relay.tasks").removeHandler(handler)
    assert stuck.result() == "ended"
    [message] = [r.getMessage() for r in caplog.records if "after its cancel" in r.getMessage()]
    assert "owner-x: task stuck-one still running" in message
    # The whole chain it waits in, down to the call that holds it, not only its top.
    assert message.index("in loses_its_cancel") < message.index("in waits_deeper")
    assert message.rstrip().endswith("in wait")  # asyncio.Event.wait


async def test_cancel_and_wait_names_a_task_that_lost_its_cancel(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.tasks.STUCK_AFTER_CANCEL_S", 0.05)
    release = asyncio.Event()

    async def loses_its_cancel() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await release.wait()

    handler = Heard("after its cancel")
    logging.getLogger("relay.tasks").addHandler(handler)
    task = asyncio.create_task(loses_its_cancel(), name="lost-cancel")
    await asyncio.sleep(0)
    try:
        waiting = asyncio.create_task(cancel_and_wait(task))
        async with asyncio.timeout(5):
            await handler.heard.wait()
        release.set()
        async with asyncio.timeout(5):
            assert await waiting is None
    finally:
        logging.getLogger("relay.tasks").removeHandler(handler)
    [message] = [r.getMessage() for r in caplog.records if "after its cancel" in r.getMessage()]
    assert message.startswith("task lost-cancel still running")
