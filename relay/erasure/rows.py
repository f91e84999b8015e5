"""The statements of erasure (migration 017).

* ``mark_interview`` / ``mark_user``: one transaction that makes the interview (the user
  and all its interviews) gone for the API, ends its live sessions on whichever member
  holds them (a cluster command sent at commit, as a cancel does) and stops its candidate
  link (the user's token) opening anything.
* ``pending``: what of a marked interview (user) is still in the way of deleting its rows:
  live sessions, and recordings whose files have not been removed yet.
* ``finish_interview`` / ``finish_user``: the rows themselves, in one transaction, only
  once ``pending`` finds nothing (checked again under the row's lock): sessions, their
  conversation's text (``session_transcript``) and client secrets (both cascade with the
  session), recordings' rows (files already removed), the webhook events that name them
  (with their deliveries and delivery log), and the interview or the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from relay.admission.tokens import unusable_token_hash
from relay.db import Store, landed_once
from relay.fields import iso_utc
from relay.interviews.rows import Notify, end_sessions
from relay.webhooks.outbox import enqueue

# Sessions that may still change (and hold a member's bridge, a recorder).
_LIVE = "('pending', 'connecting', 'active')"
# The recording columns RecordingService.delete reads.
_RECORDING = """r.id, r.session_id, r.part, r.status, r.storage, r.location,
    r.relay_instance"""


@dataclass(frozen=True)
class Pending:
    """What stops a marked interview's (user's) rows from being deleted yet."""

    live_sessions: int
    # Recordings not yet marked deleted (their files may exist), as asyncpg records with
    # _RECORDING's columns.
    recordings: list[asyncpg.Record] = field(default_factory=list)

    @property
    def clear(self) -> bool:
        return self.live_sessions == 0 and not self.recordings


@dataclass(frozen=True)
class Marked:
    """The interviews and users waiting for their erasure to finish, oldest first."""

    interviews: list[str]
    users: list[int]


async def mark_interview_on(conn: asyncpg.Connection, interview_id: str, notify: Notify) -> bool:
    """Mark one interview, inside the caller's transaction; False: no such interview (or
    marked already). An open one is closed (cancelled, no webhook event: the event that
    tells is ``interview.deleted``, at the end), its pending sessions fail and every
    member holding one of its sessions ends it (reason ``cancelled``, which the candidate's
    page shows). The invite is replaced by a hash of nothing: the candidate link opens
    nothing from the commit on (401, as an unknown token)."""
    status = await conn.fetchval(
        """SELECT status FROM interviews
           WHERE id = $1 AND erase_requested_at IS NULL FOR UPDATE""",
        interview_id,
    )
    if status is None:
        return False
    await conn.execute(
        """UPDATE interviews SET
               status = CASE WHEN status IN ('scheduled', 'in_progress')
                             THEN 'cancelled' ELSE status END,
               end_reason = CASE WHEN status IN ('scheduled', 'in_progress')
                                 THEN 'deleted' ELSE end_reason END,
               ended_at = COALESCE(ended_at, now()),
               invite_token_hash = $2,
               erase_requested_at = now()
           WHERE id = $1""",
        interview_id,
        unusable_token_hash(),
    )
    await end_sessions(conn, interview_id, notify)
    return True


class ErasureRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def mark_interview(self, interview_id: str, notify: Notify) -> bool:
        # A retry whose earlier attempt committed (its reply lost) would find the interview
        # marked, by this very call, and answer "no such interview" (relay.db.landed).
        async def work(conn: asyncpg.Connection) -> bool:
            return await mark_interview_on(conn, interview_id, notify)

        return await self._store.run("erasure_mark_interview", landed_once(work))

    async def mark_user(self, user_id: int, notify: Notify) -> str | None:
        """Mark a user and every interview of theirs; the token hash it had (what caches
        know it by), None: no such user (or marked already). The user is deactivated and
        given a token hash of nothing (its token opens nothing from the commit on; the
        database tells every member's cache), and every member ends its live sessions (as
        ``relay users revoke``)."""

        # Applied once, as in mark_interview.
        async def work(conn: asyncpg.Connection) -> str | None:
            token_hash: str | None = await conn.fetchval(
                """SELECT token_hash FROM users
                   WHERE id = $1 AND erase_requested_at IS NULL FOR UPDATE""",
                user_id,
            )
            if token_hash is None:
                return None
            await conn.execute(
                """UPDATE users SET active = false, token_hash = $2,
                       revoked_at = COALESCE(revoked_at, now()),
                       erase_requested_at = now()
                   WHERE id = $1""",
                user_id,
                unusable_token_hash(),
            )
            await conn.execute(
                """UPDATE interview_sessions
                   SET state = 'failed', end_reason = 'revoked', ended_at = now(),
                       duration_seconds = 0, debited_seconds = 0
                   WHERE user_id = $1 AND interview_id IS NULL AND state = 'pending'""",
                user_id,
            )
            await notify(conn, {"op": "revoke_user", "user_id": user_id, "token_hash": token_hash})
            await _mark_interviews_of(conn, user_id, notify)
            return token_hash

        return await self._store.run("erasure_mark_user", landed_once(work))

    async def marked(self, *, limit: int = 100) -> Marked:
        """What housekeeping has to finish (partial indexes: nothing to read when nothing
        is marked)."""

        async def op(conn: asyncpg.Connection) -> Marked:
            interviews = await conn.fetch(
                """SELECT id FROM interviews WHERE erase_requested_at IS NOT NULL
                   ORDER BY erase_requested_at LIMIT $1""",
                limit,
            )
            users = await conn.fetch(
                """SELECT id FROM users WHERE erase_requested_at IS NOT NULL
                   ORDER BY erase_requested_at LIMIT $1""",
                limit,
            )
            return Marked([str(r["id"]) for r in interviews], [int(r["id"]) for r in users])

        return await self._store.run("erasure_marked", op)

    async def interviews_of(self, user_id: int) -> list[str]:
        """The user's interviews marked for erasure (all of them, once the user is)."""

        async def op(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                """SELECT id FROM interviews
                   WHERE user_id = $1 AND erase_requested_at IS NOT NULL ORDER BY id""",
                user_id,
            )
            return [str(r["id"]) for r in rows]

        return await self._store.run("erasure_interviews_of", op)

    async def pending(
        self, *, interview_id: str | None = None, user_id: int | None = None
    ) -> Pending:
        """What is in the way for an interview's sessions, or (``user_id``) a user's."""
        where = "s.interview_id = $1" if interview_id is not None else "s.user_id = $1"
        key: str | int | None = interview_id if interview_id is not None else user_id

        async def op(conn: asyncpg.Connection) -> Pending:
            live = await conn.fetchval(
                f"SELECT count(*) FROM interview_sessions s WHERE {where} AND s.state IN {_LIVE}",
                key,
            )
            recordings = await conn.fetch(
                f"""SELECT {_RECORDING} FROM recordings r
                    JOIN interview_sessions s ON s.id = r.session_id
                    WHERE {where} AND r.status <> 'deleted'
                    ORDER BY r.created_at, r.id""",
                key,
            )
            return Pending(int(live), list(recordings))

        return await self._store.run("erasure_pending", op)

    async def finish_interview(self, interview_id: str) -> bool:
        """Delete the marked interview's rows if nothing is in the way (under its lock);
        True: it is gone (now or before), False: not yet. Writes ``interview.deleted``."""

        async def op(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                marked = await conn.fetchval(
                    """SELECT true FROM interviews
                       WHERE id = $1 AND erase_requested_at IS NOT NULL FOR UPDATE""",
                    interview_id,
                )
                if not marked:
                    return True  # finished by another member (or never marked: nothing)
                if not await _nothing_left(conn, "s.interview_id = $1", interview_id):
                    return False
                data = {"interview_id": interview_id, "deleted_at": iso_utc(datetime.now(UTC))}
                event_id = await enqueue(
                    conn, "interview.deleted", interview_id=interview_id, data=data
                )
                # Its earlier events (and with them their deliveries, pending or not, and
                # the delivery log, which may quote a receiver's answer): they name its
                # sessions and recordings, which are no more.
                await conn.execute(
                    "DELETE FROM webhook_events WHERE interview_id = $1 AND id <> $2",
                    interview_id,
                    event_id,
                )
                await _delete_sessions(conn, "interview_id = $1", interview_id)
                await conn.execute("DELETE FROM interviews WHERE id = $1", interview_id)
                return True

        return await self._store.run("erasure_finish_interview", op)

    async def finish_user(self, user_id: int, notify: Notify) -> bool:
        """Delete the marked user's row and its sessions of no interview if nothing is in
        the way; True: gone, False: not yet (an interview of theirs is still being erased:
        one created as the user was marked is marked here)."""

        async def op(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                marked = await conn.fetchval(
                    """SELECT true FROM users
                       WHERE id = $1 AND erase_requested_at IS NOT NULL FOR UPDATE""",
                    user_id,
                )
                if not marked:
                    return True
                if await _mark_interviews_of(conn, user_id, notify):
                    return False
                if await conn.fetchval(
                    "SELECT true FROM interviews WHERE user_id = $1 LIMIT 1", user_id
                ):
                    return False
                if not await _nothing_left(conn, "s.user_id = $1", user_id):
                    return False
                # The recording events of its sessions of no interview (interview_id null).
                await conn.execute(
                    """DELETE FROM webhook_events WHERE interview_id IS NULL
                       AND data->>'session_id' IN (
                           SELECT id FROM interview_sessions WHERE user_id = $1)""",
                    user_id,
                )
                await _delete_sessions(conn, "user_id = $1", user_id)
                # Its cache entries go too: the users table's trigger tells every member.
                await conn.execute("DELETE FROM users WHERE id = $1", user_id)
                return True

        return await self._store.run("erasure_finish_user", op)


async def _mark_interviews_of(conn: asyncpg.Connection, user_id: int, notify: Notify) -> int:
    """Mark the user's interviews not marked yet (in id order: two markings never lock
    them in opposite orders); how many."""
    ids = await conn.fetch(
        """SELECT id FROM interviews WHERE user_id = $1 AND erase_requested_at IS NULL
           ORDER BY id""",
        user_id,
    )
    count = 0
    for row in ids:
        count += await mark_interview_on(conn, row["id"], notify)
    return count


async def _nothing_left(conn: asyncpg.Connection, where: str, key: str | int) -> bool:
    """No live session and no recording whose files may still exist."""
    left: bool = await conn.fetchval(
        f"""SELECT EXISTS (SELECT 1 FROM interview_sessions s
                           WHERE {where} AND s.state IN {_LIVE})
                OR EXISTS (SELECT 1 FROM recordings r
                           JOIN interview_sessions s ON s.id = r.session_id
                           WHERE {where} AND r.status <> 'deleted')""",
        key,
    )
    return not left


async def _delete_sessions(conn: asyncpg.Connection, where: str, key: str | int) -> None:
    """The sessions and their recordings' rows (their text and client secrets cascade)."""
    await conn.execute(
        f"""DELETE FROM recordings WHERE session_id IN (
                SELECT id FROM interview_sessions WHERE {where})""",
        key,
    )
    await conn.execute(f"DELETE FROM interview_sessions WHERE {where}", key)
