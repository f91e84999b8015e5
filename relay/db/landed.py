"""Whether a retried transaction's earlier attempt committed after all.

``Store.run`` retries an op after a lost connection or a timeout. Most ops are written so
that a retry finds what an earlier attempt committed (ids chosen before the first attempt,
conditional updates). An op that adds to a value (a user's seconds) cannot tell from the
rows whether its own change is already there: run again, it would add twice. Such an op
keeps a ``Landed`` across its attempts: each attempt notes its transaction id before it
commits, and the next asks PostgreSQL what became of that transaction
(``pg_xact_status``, made for exactly this: a connection lost during COMMIT). Committed:
the op answers what that attempt computed, and changes nothing again.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import asyncpg

T = TypeVar("T")


class OutcomeUnknown(ConnectionError):
    """The earlier attempt's transaction is still in progress on the server (its COMMIT is
    being processed): retryable, like the connection loss that caused it."""


class Landed(Generic[T]):
    """One op's memory of its attempts (create it before ``Store.run``, use it in the op)."""

    def __init__(self) -> None:
        self._xid: str | None = None
        self._result: T | None = None
        self._has_result = False

    async def earlier(self, conn: asyncpg.Connection) -> tuple[bool, T | None]:
        """(True, its result) when an earlier attempt committed; (False, None) otherwise
        (none, or it was rolled back). Call it first, outside the op's transaction."""
        if self._xid is None:
            return False, None
        status = await conn.fetchval("SELECT pg_xact_status($1::text::xid8)", self._xid)
        if status == "committed":
            if not self._has_result:  # it committed before noting its result: impossible
                raise RuntimeError("an earlier attempt committed without a result")
            return True, self._result
        if status == "in progress":
            raise OutcomeUnknown("the earlier attempt's commit is still in progress")
        self._xid = None
        self._has_result = False
        return False, None

    async def begin(self, conn: asyncpg.Connection) -> None:
        """Note this attempt's transaction (call it inside the transaction, first)."""
        self._xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
        self._has_result = False

    def result(self, value: T) -> T:
        """Note what this attempt answers (call it last inside the transaction); ``value``."""
        self._result = value
        self._has_result = True
        return value
