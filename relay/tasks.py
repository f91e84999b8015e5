"""Every background task the relay starts has an owner; one way to stop a task.

* ``TaskGroup(owner, log=..., metrics=...)`` is how a part of the relay owns its background
  tasks (the recording service, the cluster runtime, its command listener, the store's
  keep-warm, the workers supervisor, ...): ``spawn(coro, name=...)`` starts one, ``close()``
  cancels every one still running and waits until each has ended. A task of a group that
  fails is logged with its owner and counted in
  ``relay_background_task_failures_total{owner}``.
* ``spawn(coro, name=..., log=..., on_failure=...)`` starts an *owned* task: a strong
  reference is kept until it ends (asyncio itself keeps only a weak one), and if it
  ends with an exception the failure is logged with its traceback and ``on_failure``
  is called, so the owner can clean up (e.g. a bridge ends its session as failed)
  instead of the error surfacing as "Task exception was never retrieved" at exit.
* ``cancel_and_wait(task)`` cancels a task and waits until it has ended. The task's
  own outcome (its cancellation or its exception) is *returned*, never raised: the
  caller is usually cleaning up and must go on. The caller's *own* cancellation is
  never swallowed: if the caller is cancelled while waiting, ``CancelledError``
  propagates to it.
* ``idle(seconds)`` is the sleep between the rounds of a loop that runs until it is
  cancelled (a heartbeat, a listener, housekeeping): a cancel that a library call of the
  round swallowed is raised there instead of the loop going on (``raise_if_cancelling``).
* ``TaskGroup.close`` and ``cancel_and_wait`` name a task still running
  ``STUCK_AFTER_CANCEL_S`` after its cancel, with the chain of calls it waits in
  (``awaiting``): a shut-down that hangs says where.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from relay.observability.metrics import Counter, MetricsRegistry

T = TypeVar("T")

_log = logging.getLogger("relay.tasks")
# Owned tasks still running (asyncio keeps only weak references to tasks).
_owned: set[asyncio.Task[Any]] = set()
# Long past any bounded cleanup of a background task: still running by then, a task most
# likely lost its cancel inside a library call (see raise_if_cancelling).
STUCK_AFTER_CANCEL_S = 10.0


def spawn(
    coro: Coroutine[Any, Any, T],
    *,
    name: str,
    log: logging.Logger | None = None,
    on_failure: Callable[[BaseException], object] | None = None,
) -> asyncio.Task[T]:
    """Start ``coro`` as an owned task (see the module docstring)."""
    return _spawn(coro, name=name, log=log, on_failure=on_failure)


def _spawn(
    coro: Coroutine[Any, Any, T],
    *,
    name: str,
    log: logging.Logger | None,
    on_failure: Callable[[BaseException], object] | None,
    owner: str | None = None,
    failures: Counter | None = None,
) -> asyncio.Task[T]:
    task = asyncio.create_task(coro, name=name)
    _owned.add(task)
    logger = log or _log

    def _done(done: asyncio.Task[T]) -> None:
        _owned.discard(done)
        if done.cancelled():
            return
        exc = done.exception()  # also marks the exception as retrieved
        if exc is None:
            return
        if owner is None:
            logger.error("task %s failed", done.get_name(), exc_info=exc)
        else:
            logger.error("task %s of %s failed", done.get_name(), owner, exc_info=exc)
        if failures is not None:
            failures.inc(owner=owner)
        if on_failure is not None:
            try:
                on_failure(exc)
            except Exception:  # a cleanup that fails must not hide the first failure
                logger.exception("task %s: cleanup after its failure failed", done.get_name())

    task.add_done_callback(_done)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> BaseException | None:
    """Cancel ``task`` and wait for it to end; return how it ended if by an exception.

    Returns ``None`` if the task ended normally or was cancelled, else its exception
    (already logged by ``spawn`` for owned tasks). Raises ``CancelledError`` only when
    the *caller* is cancelled while waiting.
    """
    if task is None:
        return None
    if task is asyncio.current_task():
        raise RuntimeError("a task cannot cancel and wait for itself")
    task.cancel()
    # asyncio.wait never raises the task's outcome, but does raise the caller's own
    # cancellation (the task, already cancelled, then finishes on its own).
    await _wait_after_cancel({task}, owner=None, log=_log)
    if task.cancelled():
        return None
    return task.exception()


class TaskGroup:
    """The background tasks of one owner, stopped together by ``close``.

    Each task is an owned task (``spawn``); one that fails is logged with ``owner`` and
    counted in ``relay_background_task_failures_total{owner}`` (with ``metrics``). Unlike
    ``asyncio.TaskGroup``, one task's failure does not cancel the others: a background
    task's failure is its owner's to handle (``on_failure``), not its siblings'.
    """

    def __init__(
        self,
        owner: str,
        *,
        log: logging.Logger | None = None,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self.owner = owner
        self._log = log or _log
        self._failures = (
            metrics.counter(
                "relay_background_task_failures_total",
                "Background tasks that ended with an error, by owner",
                ["owner"],
            )
            if metrics is not None
            else None
        )
        if self._failures is not None:
            self._failures.declare(owner=(owner,))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        """How many of this group's tasks are still running."""
        return len(self._tasks)

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str,
        on_failure: Callable[[BaseException], object] | None = None,
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a task of this group. After ``close`` nothing starts: the
        coroutine is closed unstarted and RuntimeError raised."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.owner}: closed, task {name} not started")
        task = _spawn(
            coro,
            name=name,
            log=self._log,
            on_failure=on_failure,
            owner=self.owner,
            failures=self._failures,
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, *, grace_s: float = 0.0) -> None:
        """Stop taking tasks; give those running ``grace_s`` seconds to end on their own,
        then cancel the rest and wait until each has ended. Their errors were logged by
        then and are not raised here; the caller's own cancellation is (as with
        ``cancel_and_wait``). A task still running ``STUCK_AFTER_CANCEL_S`` after its cancel
        is logged with the calls it waits in, and still waited for: cancelling it again
        could cut short a cleanup that is merely slow."""
        self._closed = True
        # A task of the group may close it (an owner closing itself from its own task):
        # it goes on running, and is not waited for.
        current = asyncio.current_task()
        if grace_s > 0 and self._tasks - {current}:
            await asyncio.wait(self._tasks - {current}, timeout=grace_s)
        tasks = self._tasks - {current}
        for task in tasks:
            task.cancel()
        if tasks:
            await _wait_after_cancel(tasks, owner=self.owner, log=self._log)


async def _wait_after_cancel(
    tasks: set[asyncio.Task[Any]], *, owner: str | None, log: logging.Logger
) -> None:
    """Wait until each of ``tasks`` (cancelled) has ended; name, with where it waits, any
    still running ``STUCK_AFTER_CANCEL_S`` later. Raises only the caller's own
    cancellation."""
    stuck_after_s = STUCK_AFTER_CANCEL_S
    _, pending = await asyncio.wait(tasks, timeout=stuck_after_s)
    for task in pending:
        log.warning(
            "%stask %s still running %.0f s after its cancel; waiting for it\n%s",
            f"{owner}: " if owner else "",
            task.get_name(),
            stuck_after_s,
            awaiting(task),
        )
    if pending:
        await asyncio.wait(pending)


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits, outermost call first, as a traceback prints it.

    ``Task.print_stack`` shows only the task's own coroutine (a suspended coroutine's
    frame has no ``f_back`` to what it awaits): the chain of awaited coroutines
    (``cr_await``) reaches the call that actually waits."""
    lines: list[str] = []
    link: Any = task.get_coro()
    while link is not None and len(lines) < 32:
        frame = getattr(link, "cr_frame", None) or getattr(link, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        link = getattr(link, "cr_await", None) or getattr(link, "gi_yieldfrom", None)
    return "\n".join(lines)


def owned_count() -> int:
    """How many owned tasks are still running (for leak tests)."""
    return len(_owned)


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request got lost.

    A loop that reconnects forever (a LISTEN connection) must not outlive its owner's
    cancel: if the cancel lands inside a library call that swallows it (closing a broken
    connection under ``wait_for`` can, on Python 3.11), the task stays marked as cancelling
    but runs on, and whoever awaits its end waits forever. Called before such a loop goes
    round again, it turns the lost cancel back into the exception.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def idle(seconds: float) -> None:
    """Sleep between two rounds of a loop that runs until its task is cancelled.

    A round's library call may have swallowed the cancel (``raise_if_cancelling``): the
    loop must end here rather than sleep and go round again, forever."""
    raise_if_cancelling()
    await asyncio.sleep(seconds)
