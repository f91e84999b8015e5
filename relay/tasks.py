"""Every background task the relay starts has an owner; one way to stop a task.

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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_log = logging.getLogger("relay.tasks")
# Owned tasks still running (asyncio keeps only weak references to tasks).
_owned: set[asyncio.Task[Any]] = set()


def spawn(
    coro: Coroutine[Any, Any, T],
    *,
    name: str,
    log: logging.Logger | None = None,
    on_failure: Callable[[BaseException], object] | None = None,
) -> asyncio.Task[T]:
    """Start ``coro`` as an owned task (see the module docstring)."""
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
        logger.error("task %s failed", done.get_name(), exc_info=exc)
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
    await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.exception()


def owned_count() -> int:
    """How many owned tasks are still running (for leak tests)."""
    return len(_owned)
