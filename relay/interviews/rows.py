"""The ``interviews`` table's statements (migration 007): create, read, list, cancel, a
new invite, and housekeeping's expiry. Status changes driven by sessions are
relay.interviews.transitions.

Every statement runs through ``Store.run`` (timeouts, retries); ids are chosen before the
first attempt, so a retry whose first attempt committed finds its own row.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from relay.admission.invites import USED_SECONDS_SQL
from relay.db import Store, Within
from relay.fields import iso_utc
from relay.interviews import transitions

STATUSES = ("scheduled", "in_progress", "completed", "expired", "cancelled", "failed")
OPEN = ("scheduled", "in_progress")

# Sends a cluster command on a connection, inside its transaction (relay.cluster.bus.notify).
Notify = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[None]]


# What housekeeping closes (``close_due``). Scheduled interviews past their expiry:
_EXPIRED = "i.status = 'scheduled' AND i.expires_at <= now()"
# Interviews in progress with no live session, past their expiry or idle since their last
# session ended for the rejoin window ($1, in seconds):
_ABANDONED = """i.status = 'in_progress'
    AND NOT EXISTS (SELECT 1 FROM interview_sessions s
                    WHERE s.interview_id = i.id
                      AND s.state IN ('pending', 'connecting', 'active'))
    AND (i.expires_at <= now()
         OR COALESCE((SELECT max(s.ended_at) FROM interview_sessions s
                      WHERE s.interview_id = i.id), i.started_at)
            < now() - make_interval(secs => $1))"""


class CandidateInactive(Exception):
    """The candidate's user is deactivated: reactivate it before inviting it again."""


class CandidateErasing(Exception):
    """The candidate's user is being erased (``DELETE /api/users/{id}``): until its row is
    gone, the address cannot get a new interview (it would be erased with the user)."""


@dataclass(frozen=True)
class NewInterview:
    interview_id: str
    email: str
    name: str | None
    invite_hash: str = field(repr=False)
    # The hash stored for a user created by this interview (no usable user token).
    user_token_hash: str = field(repr=False)
    instructions: str = field(repr=False)
    voice: str | None
    language: str | None
    max_duration_s: int
    recording: bool
    metadata: dict[str, Any]
    expires_at: datetime
    created_by: str


@dataclass(frozen=True)
class InterviewRecord:
    id: str
    user_id: int
    email: str
    name: str | None
    instructions: str = field(repr=False)
    voice: str | None = None
    language: str | None = None
    max_duration_s: int = 0
    recording: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    status: str = "scheduled"
    end_reason: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    created_by: str = ""
    used_seconds: int = 0


_COLUMNS = f"""i.id, i.user_id, u.email, i.candidate_name, i.instructions, i.voice, i.language,
    i.max_duration_s, i.recording, i.metadata, i.expires_at, i.status, i.end_reason,
    i.created_at, i.started_at, i.ended_at, i.created_by, {USED_SECONDS_SQL} AS used_seconds"""
_FROM = "interviews i JOIN users u ON u.id = i.user_id"
# An interview marked for erasure (migration 017) is gone for every reader: only the
# erasure itself (relay.erasure) still sees its rows.
_BY_ID = f"SELECT {_COLUMNS} FROM {_FROM} WHERE i.id = $1 AND i.erase_requested_at IS NULL"


def _record(row: asyncpg.Record) -> InterviewRecord:
    metadata = row["metadata"]
    return InterviewRecord(
        id=row["id"],
        user_id=row["user_id"],
        email=row["email"],
        name=row["candidate_name"],
        instructions=row["instructions"],
        voice=row["voice"],
        language=row["language"],
        max_duration_s=row["max_duration_s"],
        recording=row["recording"],
        metadata=json.loads(metadata) if isinstance(metadata, str) else dict(metadata),
        expires_at=row["expires_at"],
        status=row["status"],
        end_reason=row["end_reason"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        created_by=row["created_by"],
        used_seconds=int(row["used_seconds"]),
    )


async def end_sessions(conn: asyncpg.Connection, interview_id: str, notify: Notify) -> None:
    """End the interview's sessions (reason ``cancelled``), inside the caller's transaction
    (which holds the interview's row and has just closed it): its pending sessions fail, so
    nobody may claim them any more (the claim re-checks the interview too), and every
    member holding one of its pending or live sessions is told, at commit, to let it go."""
    pending = await conn.fetch(
        """UPDATE interview_sessions
           SET state = 'failed', end_reason = 'cancelled', ended_at = now(),
               duration_seconds = 0, debited_seconds = 0
           WHERE interview_id = $1 AND state = 'pending' RETURNING id""",
        interview_id,
    )
    live = await conn.fetch(
        """SELECT id FROM interview_sessions
           WHERE interview_id = $1 AND state IN ('connecting', 'active')""",
        interview_id,
    )
    for session in [*pending, *live]:
        await notify(
            conn, {"op": "end_session", "session_id": session["id"], "reason": "cancelled"}
        )


@dataclass(frozen=True)
class Closed:
    """An interview housekeeping closed: its id and new status."""

    id: str
    status: str


class InterviewRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self, new: NewInterview, within: Within[InterviewRecord] | None = None
    ) -> InterviewRecord:
        """The candidate's user found by e-mail (or created without a usable token), then
        the interview, then ``within`` (relay.db.within); one transaction. Raises
        ``CandidateInactive``."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record:
            async with conn.transaction():
                existing = await conn.fetchrow(_BY_ID, new.interview_id)
                if existing is not None:  # an earlier attempt of this very call committed
                    return existing
                # The candidate in any case of the address (migration 012), this spelling
                # first; created only when there is none. The insert takes no conflict
                # target: another spelling written meanwhile conflicts on the lower(email)
                # index too, and is then found by the second look.
                find = """SELECT id, active, erase_requested_at FROM users
                          WHERE lower(email) = lower($1)
                          ORDER BY email = $1 DESC, id LIMIT 1"""
                user = await conn.fetchrow(find, new.email)
                if user is None:
                    await conn.execute(
                        """INSERT INTO users (email, token_hash, remaining_seconds)
                           VALUES ($1, $2, 0) ON CONFLICT DO NOTHING""",
                        new.email,
                        new.user_token_hash,
                    )
                    user = await conn.fetchrow(find, new.email)
                assert user is not None
                if user["erase_requested_at"] is not None:
                    raise CandidateErasing(new.email)
                if not user["active"]:
                    raise CandidateInactive(new.email)
                await conn.execute(
                    """INSERT INTO interviews
                           (id, user_id, invite_token_hash, candidate_name, instructions, voice,
                            language, max_duration_s, recording, metadata, expires_at,
                            created_by)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12)""",
                    new.interview_id,
                    user["id"],
                    new.invite_hash,
                    new.name,
                    new.instructions,
                    new.voice,
                    new.language,
                    new.max_duration_s,
                    new.recording,
                    json.dumps(new.metadata),
                    new.expires_at,
                    new.created_by,
                )
                row = await conn.fetchrow(_BY_ID, new.interview_id)
                assert row is not None
                if within is not None:
                    await within(conn, _record(row))
                return row

        return _record(await self._store.run("interview_create", op))

    async def get(self, interview_id: str) -> InterviewRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(_BY_ID, interview_id)

        row = await self._store.run("interview_get", op)
        return _record(row) if row is not None else None

    async def page(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        status: str | None = None,
        email: str | None = None,
        user_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[InterviewRecord]:
        """Newest first; ``limit`` rows after the cursor position ``after``."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""SELECT {_COLUMNS} FROM {_FROM}
                        WHERE i.erase_requested_at IS NULL
                          AND ($2::text IS NULL OR i.status = $2)
                          AND ($3::text IS NULL OR lower(u.email) = lower($3))
                          AND ($4::bigint IS NULL OR i.user_id = $4)
                          AND ($5::timestamptz IS NULL OR i.created_at >= $5)
                          AND ($6::timestamptz IS NULL OR i.created_at < $6)
                          AND ($7::timestamptz IS NULL OR (i.created_at, i.id) < ($7, $8))
                        ORDER BY i.created_at DESC, i.id DESC LIMIT $1""",
                    limit,
                    status,
                    email,
                    user_id,
                    since,
                    until,
                    after[0] if after else None,
                    after[1] if after else None,
                )
            )

        return [_record(r) for r in await self._store.run("interview_page", op)]

    async def cancel(
        self,
        interview_id: str,
        notify: Notify,
        within: Within[tuple[InterviewRecord, bool]] | None = None,
    ) -> tuple[InterviewRecord, bool] | None:
        """Cancel an open interview: its status and event, its pending sessions failed,
        and a command to every member to end its live sessions (reason ``cancelled``; sent
        at commit), in one transaction (``within`` last). Returns the interview and whether
        this call cancelled it (False: it was closed already); None: no such interview."""

        async def op(conn: asyncpg.Connection) -> tuple[asyncpg.Record, bool] | None:
            async with conn.transaction():
                found = await conn.fetchval(
                    """SELECT status FROM interviews
                       WHERE id = $1 AND erase_requested_at IS NULL FOR UPDATE""",
                    interview_id,
                )
                if found is None:
                    return None
                changed = False
                if found in OPEN:
                    await transitions.close(conn, interview_id, "cancelled", "cancelled", extra={})
                    changed = True
                    await end_sessions(conn, interview_id, notify)
                row = await conn.fetchrow(_BY_ID, interview_id)
                assert row is not None
                if within is not None:
                    await within(conn, (_record(row), changed))
                return row, changed

        result = await self._store.run("interview_cancel", op)
        if result is None:
            return None
        return _record(result[0]), result[1]

    async def replace_invite(
        self,
        interview_id: str,
        invite_hash: str,
        within: Within[tuple[InterviewRecord, bool]] | None = None,
    ) -> tuple[InterviewRecord, bool] | None:
        """Give an open interview (scheduled or in progress, before ``expires_at``) a new
        invite: one conditional UPDATE, so the old invite opens nothing from its commit on
        (invites are read from PostgreSQL on every use), and ``within`` in its transaction.
        Returns the interview and whether this call replaced it (False: it is not open);
        None: no such interview. A retry whose first attempt committed writes the same hash
        again."""

        async def op(conn: asyncpg.Connection) -> tuple[asyncpg.Record, bool] | None:
            async with conn.transaction():
                row = await conn.fetchrow(
                    f"""UPDATE interviews i SET invite_token_hash = $2
                        FROM users u
                        WHERE i.id = $1 AND u.id = i.user_id AND i.erase_requested_at IS NULL
                          AND i.status IN ('scheduled', 'in_progress')
                          AND i.expires_at > now()
                        RETURNING {_COLUMNS}""",
                    interview_id,
                    invite_hash,
                )
                replaced = row is not None
                if row is None:
                    row = await conn.fetchrow(_BY_ID, interview_id)
                    if row is None:
                        return None
                if within is not None:
                    await within(conn, (_record(row), replaced))
                return row, replaced

        result = await self._store.run("interview_replace_invite", op)
        if result is None:
            return None
        return _record(result[0]), result[1]

    async def close_due(self, *, rejoin_window_s: int, batch: int = 100) -> list[Closed]:
        """Housekeeping: scheduled interviews past ``expires_at`` → expired; interviews in
        progress with no live session, past ``expires_at`` or idle since their last
        session ended for ``rejoin_window_s`` → failed (the end reason of the last session
        that carried media), or completed when that session ended rather than failed (the
        candidate's connection lost for good: ``transitions.CONNECTION_LOST_REASONS``).
        Each interview is closed by one member (SKIP LOCKED), with its event.

        Every member calls this every few seconds and there is rarely anything to close:
        one statement looks first (the same conditions), and the transaction that locks
        and closes runs only when it finds some."""

        async def op(conn: asyncpg.Connection) -> list[Closed]:
            closed: list[Closed] = []
            due: bool = await conn.fetchval(
                f"""SELECT EXISTS (SELECT 1 FROM interviews i WHERE {_EXPIRED})
                        OR EXISTS (SELECT 1 FROM interviews i WHERE {_ABANDONED})""",
                rejoin_window_s,
            )
            if not due:
                return closed
            async with conn.transaction():
                expired = await conn.fetch(
                    f"""SELECT id, expires_at FROM interviews i WHERE {_EXPIRED}
                        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED""",
                    batch,
                )
                for row in expired:
                    extra = {"expires_at": iso_utc(row["expires_at"])}
                    await transitions.close(conn, row["id"], "expired", "expired", extra=extra)
                    closed.append(Closed(row["id"], "expired"))
                failed = await conn.fetch(
                    f"""SELECT i.id, last.end_reason AS last_reason, last.state AS last_state
                        FROM interviews i
                        LEFT JOIN LATERAL (
                            -- The last session that carried media: one that never did (a
                            -- start the page gave up and hung up, a superseded one) changed
                            -- nothing, and must not turn a failed interview into a
                            -- completed one ("hangup") or name its end.
                            SELECT s.end_reason, s.state FROM interview_sessions s
                            WHERE s.interview_id = i.id AND s.state IN ('ended', 'failed')
                              AND s.connected_at IS NOT NULL
                            ORDER BY s.ended_at DESC NULLS LAST LIMIT 1) last ON true
                        WHERE {_ABANDONED}
                        ORDER BY i.expires_at LIMIT $2 FOR UPDATE OF i SKIP LOCKED""",
                    rejoin_window_s,
                    batch,
                )
                for row in failed:
                    reason = row["last_reason"] or "abandoned"
                    if row["last_state"] == "ended":
                        await transitions.complete(conn, row["id"], reason)
                        closed.append(Closed(row["id"], "completed"))
                        continue
                    await transitions.close(conn, row["id"], "failed", reason, extra={})
                    closed.append(Closed(row["id"], "failed"))
            return closed

        return await self._store.run("interview_close_due", op)
