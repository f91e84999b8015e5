"""Whether a retried transaction's earlier attempt committed after all.

``Store.run`` retries an op after a lost connection or a timeout. Most ops are written so
that a retry finds what an earlier attempt committed (ids chosen before the first attempt,
conditional updates). An op that adds to a value (a user's seconds) cannot tell from the
rows whether its own change is already there: run again, it would add twice. Such an op is
given to ``Store.run`` as ``landed_once(work)``: each attempt runs ``work`` in a
transaction that notes its id first, and the next attempt asks PostgreSQL what became of
that transaction (``pg_xact_status``, made for exactly this: a connection lost during
COMMIT). Committed: the op answers what that attempt computed, and changes nothing again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

T = TypeVar("T")


class OutcomeUnknown(ConnectionError):
    """The earlier attempt's transaction is still in progress on the server (its COMMIT is
    being processed): retryable, like the connection loss that caused it."""


class _Attempts(Generic[T]):
    """One op's memory of its attempts: the last one's transaction id and answer."""

    def __init__(self) -> None:
        self._xid: str | None = None
        # (answer,) once the attempt noted it: an answer may itself be None.
        self._answer: tuple[T] | None = None

    async def earlier(self, conn: asyncpg.Connection) -> tuple[T] | None:
        """(its answer,) when the last attempt committed; None when there was none or it
        was rolled back. Raises ``OutcomeUnknown`` while its commit is in progress."""
        if self._xid is None:
            return None
        status = await conn.fetchval("SELECT pg_xact_status($1::text::xid8)", self._xid)
        if status == "committed":
            if self._answer is None:  # it committed before noting its answer: impossible
                raise RuntimeError("an earlier attempt committed without a result")
            return self._answer
        if status == "in progress":
            raise OutcomeUnknown("the earlier attempt's commit is still in progress")
        self._xid = None
        self._answer = None
        return None

    async def begin(self, conn: asyncpg.Connection) -> None:
        """Note this attempt's transaction (inside it, first)."""
        self._xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
        self._answer = None

    def note(self, answer: T) -> None:
        """Note what this attempt answers (inside its transaction, last)."""
        self._answer = (answer,)


def landed_once(
    work: Callable[[asyncpg.Connection], Awaitable[T]],
) -> Callable[[asyncpg.Connection], Awaitable[T]]:
    """The op for ``Store.run`` that applies ``work`` once across its retries.

    Each attempt first asks whether the one before committed (its reply lost): if so it
    answers that attempt's result and runs nothing. Otherwise it runs ``work`` in a
    transaction of its own, which it notes first; ``work`` must not open one itself."""
    attempts: _Attempts[T] = _Attempts()

    async def op(conn: asyncpg.Connection) -> T:
        earlier = await attempts.earlier(conn)
        if earlier is not None:
            return earlier[0]
        async with conn.transaction():
            await attempts.begin(conn)
            answer = await work(conn)
            attempts.note(answer)
            return answer

    return op
