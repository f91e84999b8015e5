"""Membership: every instance and worker registers itself and beats a heartbeat.

Each member upserts its row in ``relay_members`` every ``cluster.heartbeat_interval_s``
with what the cluster view shows (address, version, live sessions and their states,
load). The view lists the members heard from within 3 heartbeats, so a dead member
drops out within 3 heartbeats.

Recovery: a member silent for ``3 heartbeats + cluster.recover_after_s`` is removed by
whichever member notices first, and the rows of its connecting/active sessions are
closed as ``failed`` / ``relay_lost``, debiting the seconds it was known alive (from
connection to its last heartbeat); sessions that can be resumed are closed so only once
``session.reconnect_grace_s`` has passed without a member taking them over. Its pending
sessions stay claimable by any member until they expire (their sealed secret is in the
row); expired pending rows of members that are gone are failed as ``expired``. The grace
keeps a member that lost the database for a few seconds from having its live interviews
closed under it.

Why PostgreSQL rather than Redis: every member always has it (Redis is optional), the
recovery must update the session rows in the same transaction, and a heartbeat every
couple of seconds per member is negligible load for it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from relay.db import Store
from relay.fields import iso_utc

log = logging.getLogger("relay.cluster")

DEAD_AFTER_HEARTBEATS = 3


@dataclass
class MemberState:
    id: str
    address: str
    version: str
    pid: int
    started_at: datetime
    draining: bool = False
    live: int = 0
    load: float = 0.0
    sessions: list[dict[str, Any]] = field(default_factory=list)


async def beat(store: Store, member: MemberState) -> None:
    async def op(conn: asyncpg.Connection) -> None:
        await conn.execute(
            """INSERT INTO relay_members
                 (id, address, version, pid, started_at, heartbeat_at, draining, live, load,
                  sessions)
               VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8, $9::jsonb)
               ON CONFLICT (id) DO UPDATE SET
                 address = EXCLUDED.address, version = EXCLUDED.version, pid = EXCLUDED.pid,
                 started_at = EXCLUDED.started_at, heartbeat_at = now(),
                 draining = EXCLUDED.draining, live = EXCLUDED.live, load = EXCLUDED.load,
                 sessions = EXCLUDED.sessions""",
            member.id,
            member.address,
            member.version,
            member.pid,
            member.started_at,
            member.draining,
            member.live,
            member.load,
            json.dumps(member.sessions),
        )

    await store.run("member_heartbeat", op)


async def leave(store: Store, member_id: str) -> None:
    async def op(conn: asyncpg.Connection) -> None:
        await conn.execute("DELETE FROM relay_members WHERE id = $1", member_id)

    await store.run("member_leave", op)


async def is_live(store: Store, member_id: str, interval_s: float) -> bool:
    """Whether ``member_id`` was heard from within 3 heartbeats (as ``view`` lists it)."""

    async def op(conn: asyncpg.Connection) -> bool:
        found: bool = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM relay_members WHERE id = $1
                              AND heartbeat_at >= now() - make_interval(secs => $2))""",
            member_id,
            interval_s * DEAD_AFTER_HEARTBEATS,
        )
        return found

    return await store.run("member_is_live", op)


async def view(store: Store, interval_s: float) -> list[dict[str, Any]]:
    """The members heard from within 3 heartbeats, oldest first."""

    async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            """SELECT id, address, version, pid, started_at, heartbeat_at, draining, live,
                      load, sessions,
                      -- by the database's clock: the members' and viewers' clocks may differ
                      EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS heartbeat_age
               FROM relay_members
               WHERE heartbeat_at >= now() - make_interval(secs => $1)
               ORDER BY started_at, id""",
            interval_s * DEAD_AFTER_HEARTBEATS,
        )
        return rows

    out = []
    for row in await store.run("member_view", op):
        out.append(
            {
                "id": row["id"],
                "address": row["address"],
                "version": row["version"],
                "pid": row["pid"],
                "started_at": iso_utc(row["started_at"]),
                "heartbeat_at": iso_utc(row["heartbeat_at"]),
                "heartbeat_age_s": round(max(0.0, row["heartbeat_age"]), 2),
                "draining": row["draining"],
                "live_sessions": row["live"],
                "load": row["load"],
                "sessions": json.loads(row["sessions"]),
            }
        )
    return out


@dataclass(frozen=True)
class Recovered:
    members: list[str]
    sessions: int
    expired_pending: int


async def recover_dead(
    store: Store, *, dead_after_s: float, resume_grace_s: float = 0.0
) -> Recovered:
    """Remove members silent for ``dead_after_s`` and close their live sessions' rows.

    A session that can be resumed (it has a resume token, and ``resume_grace_s`` > 0) is
    not closed at once: its row keeps its holder and is marked ``holder_lost_at`` (the
    holder's last heartbeat), so that a resume reaching another member within the grace
    takes it over (relay.cluster.resume); it is closed ``relay_lost`` once the grace has
    passed without one, debited the seconds charged until then (``used_seconds``).

    Every member calls this every heartbeat, and there is almost never anything to do: one
    statement looks first (the same conditions as the work's), and the transaction that
    does the work runs only when it finds some."""

    async def op(conn: asyncpg.Connection) -> Recovered:
        due: bool = await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM relay_members
                              WHERE heartbeat_at < now() - make_interval(secs => $1))
                   OR EXISTS (SELECT 1 FROM interview_sessions
                              WHERE holder_lost_at IS NOT NULL
                                AND state IN ('connecting', 'active')
                                AND holder_lost_at < now() - make_interval(secs => $2))
                   OR EXISTS (SELECT 1 FROM interview_sessions
                              WHERE state = 'pending'
                                AND expires_at < now() - make_interval(secs => $1)
                                AND relay_instance NOT IN (SELECT id FROM relay_members))""",
            dead_after_s,
            resume_grace_s,
        )
        if not due:
            return Recovered([], 0, 0)
        async with conn.transaction():
            dead = await conn.fetch(
                """DELETE FROM relay_members
                   WHERE heartbeat_at < now() - make_interval(secs => $1)
                   RETURNING id, heartbeat_at""",
                dead_after_s,
            )
            closed = 0
            if dead and resume_grace_s > 0:
                await conn.execute(
                    """UPDATE interview_sessions s SET holder_lost_at = d.heartbeat_at
                       FROM unnest($1::text[], $2::timestamptz[]) AS d(id, heartbeat_at)
                       WHERE s.relay_instance = d.id AND s.state IN ('connecting', 'active')
                         AND s.resume_token_hash IS NOT NULL AND s.connected_at IS NOT NULL
                         AND s.holder_lost_at IS NULL""",
                    [r["id"] for r in dead],
                    [r["heartbeat_at"] for r in dead],
                )
            if dead:
                rows = await conn.fetch(
                    """UPDATE interview_sessions s
                       SET state = CASE WHEN s.end_reason IS NULL THEN 'failed' ELSE 'ended' END,
                           -- a hang-up written on the row (request_hangup) is how it ended
                           end_reason = COALESCE(s.end_reason, 'relay_lost'), ended_at = now(),
                           duration_seconds = CASE WHEN s.connected_at IS NULL THEN 0 ELSE
                               GREATEST(0, EXTRACT(EPOCH FROM d.heartbeat_at - s.connected_at))
                               END,
                           debited_seconds = CASE WHEN s.connected_at IS NULL THEN 0 ELSE
                               CEIL(GREATEST(0, EXTRACT(EPOCH FROM
                                    d.heartbeat_at - s.connected_at)))::int END
                       FROM unnest($1::text[], $2::timestamptz[]) AS d(id, heartbeat_at)
                       WHERE s.relay_instance = d.id
                         AND s.state IN ('connecting', 'active')
                         AND s.holder_lost_at IS NULL
                       RETURNING s.user_id, s.debited_seconds, s.interview_id""",
                    [r["id"] for r in dead],
                    [r["heartbeat_at"] for r in dead],
                )
                closed = len(rows)
                await _debit(conn, rows)
            # Resumable sessions of dead members that nobody resumed within the grace.
            rows = await conn.fetch(
                """UPDATE interview_sessions
                   SET state = CASE WHEN end_reason IS NULL THEN 'failed' ELSE 'ended' END,
                       end_reason = COALESCE(end_reason, 'relay_lost'), ended_at = now(),
                       duration_seconds = COALESCE(used_seconds, 0),
                       debited_seconds = CEIL(COALESCE(used_seconds, 0))::int
                   WHERE holder_lost_at IS NOT NULL AND state IN ('connecting', 'active')
                     AND holder_lost_at < now() - make_interval(secs => $1)
                   RETURNING user_id, debited_seconds, interview_id""",
                resume_grace_s,
            )
            closed += len(rows)
            await _debit(conn, rows)
            status: str = await conn.execute(
                """UPDATE interview_sessions
                   SET state = 'failed', end_reason = 'expired', ended_at = now(),
                       duration_seconds = 0, debited_seconds = 0
                   WHERE state = 'pending' AND expires_at < now() - make_interval(secs => $1)
                     AND relay_instance NOT IN (SELECT id FROM relay_members)""",
                dead_after_s,
            )
            return Recovered([r["id"] for r in dead], closed, int(status.split()[-1]))

    return await store.run("recover_dead_members", op)


async def _debit(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
    """Debit each user the seconds of their closed rows (one statement per user); an
    interview's session spends the interview's budget instead (derived from its rows)."""
    debits: dict[int, int] = {}
    for r in rows:
        if r["interview_id"] is not None:
            continue
        debits[r["user_id"]] = debits.get(r["user_id"], 0) + int(r["debited_seconds"])
    for user_id, debit in debits.items():
        await conn.execute(
            """UPDATE users SET remaining_seconds = GREATEST(0, remaining_seconds - $2)
               WHERE id = $1""",
            user_id,
            debit,
        )


async def session_rows(store: Store, session_ids: list[str]) -> list[asyncpg.Record]:
    """State, holder, user status and interview status of these sessions
    (reconciliation)."""

    async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            """SELECT s.id, s.state, s.end_reason, s.relay_instance, u.active,
                      i.status AS interview_status
               FROM interview_sessions s JOIN users u ON u.id = s.user_id
                    LEFT JOIN interviews i ON i.id = s.interview_id
               WHERE s.id = ANY($1::text[])""",
            session_ids,
        )
        return rows

    return await store.run("reconcile_sessions", op)
