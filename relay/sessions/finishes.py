"""Closing sessions' rows: queued before the write, retried until they land.

Once the registry has let a session go, its finish (state, reason, duration, the debit)
exists only here, so it is queued *before* its row is written: a write that fails in any
way (the database unavailable after the store's retries, or any other error the database
or the driver raises) or is cancelled stays queued, and housekeeping retries it until it
lands, going on past an entry that still cannot be written. Credit is always debited
eventually. The latest finish queued for a session replaces an earlier one.

A session's shared lease (relay.cluster.limits) goes with its finish when this member
held the session; otherwise (a pending session, a claim whose outcome is unknown) only
once this finish closed the row: a row another member's claim took meanwhile is that
member's session, and so is its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from relay.db import DatabaseUnavailable
from relay.observability.metrics import MetricsRegistry
from relay.sessions.registry import SessionEntry
from relay.sessions.rows import SessionRows, debit_seconds

log = logging.getLogger("relay.sessions")


@dataclass(frozen=True)
class Finish:
    session_id: str
    state: Literal["ended", "failed"]
    reason: str
    duration_s: float
    user_id: int
    token_hash: str = field(repr=False)
    # Never claimed here: close the row only if nobody claimed it elsewhere meanwhile.
    only_if_pending: bool = False
    # Claimed here: close a claimed row only while it holds this claim.
    claim_token: str | None = field(default=None, repr=False)
    # This member held the session: its lease goes whatever the row's write does.
    held: bool = True


def finish_record(
    entry: SessionEntry,
    state: str,
    reason: str,
    duration_s: float,
    *,
    only_if_pending: bool = False,
    claim_token: str | None = None,
    held: bool = True,
) -> Finish:
    return Finish(
        session_id=entry.session_id,
        state="ended" if state == "ended" else "failed",
        reason=reason,
        duration_s=duration_s,
        user_id=entry.user_id,
        token_hash=entry.token_hash,
        only_if_pending=only_if_pending,
        claim_token=claim_token,
        held=held,
    )


class FinishQueue:
    """The finishes whose rows are not written yet, and their writing."""

    def __init__(
        self,
        rows: SessionRows,
        metrics: MetricsRegistry,
        *,
        release_lease: Callable[[str, int], Awaitable[None]],
        forget_user: Callable[[str], Awaitable[None]],
        not_superseded: Callable[[str], None],
    ) -> None:
        self._rows = rows
        self._release_lease = release_lease
        self._forget_user = forget_user
        self._not_superseded = not_superseded
        self._queued: dict[str, Finish] = {}
        self._failures = metrics.counter(
            "relay_sessions_finish_write_failures_total",
            "Session rows that could not be closed at once (queued for a retry)",
        )

    def __len__(self) -> int:
        return len(self._queued)

    def queue(self, finish: Finish) -> None:
        self._queued[finish.session_id] = finish

    async def land(self, finish: Finish) -> int | None:
        """Queue ``finish`` and write it; see ``write``."""
        self.queue(finish)
        return await self.write(finish)

    async def write(self, finish: Finish) -> int | None:
        """Write a queued finish: the user's remaining seconds if this closed the row (or
        an earlier attempt of it did), else None. It stays queued unless the write
        answered."""
        written = False
        remaining: int | None = None
        try:
            remaining = await self._rows.finish_session(
                finish.session_id,
                state=finish.state,
                end_reason=finish.reason,
                duration_seconds=finish.duration_s,
                only_if_pending=finish.only_if_pending,
                claim_token=finish.claim_token,
            )
            written = True
        except DatabaseUnavailable as exc:
            self._failures.inc()
            # An outage, retried by housekeeping until it lands: a warning per attempt, not
            # an error (nor an error-tracking event per session and round).
            log.warning("could not close session %s yet (%s); will retry", finish.session_id, exc)
        except Exception:
            # Not only an outage: whatever the database (or the driver) raised, the
            # registry has let the session go already, so the finish must not be lost.
            self._failures.inc()
            log.exception("could not close session %s yet; will retry", finish.session_id)
        if written and self._queued.get(finish.session_id) is finish:
            del self._queued[finish.session_id]
        if finish.held or remaining is not None:
            # Held here, or closed by this finish: the slot is free cluster-wide.
            await self._release_lease(finish.session_id, finish.user_id)
        elif written and finish.reason == "superseded":
            # A claim took the row before the supersede: it was not superseded after all.
            self._not_superseded(finish.session_id)
        # The user's record changes only by a debit: a session that ended without using
        # any time (expired, superseded, failed before it started) leaves the cached
        # record true, and dropping it would send the user's next request to PostgreSQL.
        if written and debit_seconds(finish.duration_s) > 0:
            await self._forget_user(finish.token_hash)
        return remaining

    async def write_queued(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            finish = self._queued.get(session_id)
            if finish is not None:
                await self.write(finish)

    async def retry(self) -> int:
        """Write every finish still queued; return how many are still due."""
        for finish in list(self._queued.values()):
            if self._queued.get(finish.session_id) is not finish:
                continue  # written meanwhile, or replaced by a later finish
            try:
                await self.write(finish)
            except Exception:  # one entry that cannot be written must not stop the others
                log.exception("retrying the finish of session %s failed", finish.session_id)
        return len(self._queued)
