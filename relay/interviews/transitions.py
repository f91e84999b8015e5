"""An interview's status as its sessions live and end, written in the sessions' own
transactions, with the webhook event of each change in the same transaction
(relay.webhooks.outbox): an event exists if and only if its change committed.

    scheduled ──(a session's media flows)──▶ in_progress
    in_progress ──(a session ends normally, or the budget is spent)──▶ completed
    in_progress ──(a session fails: the candidate may rejoin with the same link within
                   interviews.rejoin_window_s; then housekeeping)──▶ failed
    in_progress ──(the candidate's connection was lost for good: they may rejoin within
                   interviews.rejoin_window_s too; then housekeeping)──▶ completed
    in_progress ──(after either, the candidate ends it instead of rejoining: End while
                   the page rejoins by itself)──▶ completed, end reason hangup
    scheduled ──(expires_at passes; housekeeping)──▶ expired
    scheduled | in_progress ──(cancel)──▶ cancelled

A session that never carried media (refused, superseded, expired before its exchange)
changes nothing: the link still works.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from relay.admission.invites import USED_SECONDS_SQL
from relay.fields import iso_utc, iso_utc_or_none
from relay.webhooks.outbox import enqueue

LIVE_SESSION_STATES = ("pending", "connecting", "active")
# A session ended because the candidate's connection was lost and did not come back
# (``browser_gone`` after the reconnect grace; ``browser_*`` without one). Not the
# candidate's choice: a closed tab, a crashed browser or a long network cut may be followed
# by the candidate opening the link again, which must continue the interview rather than
# find it completed. So the interview stays open for ``interviews.rejoin_window_s``, as
# after a failure; housekeeping then completes it with this reason.
CONNECTION_LOST_REASONS = frozenset(
    {"browser_gone", "browser_disconnected", "browser_failed", "browser_channel_closed"}
)


async def session_started(conn: asyncpg.Connection, interview_id: str, session_id: str) -> None:
    """A session of the interview became active: scheduled → in_progress (once)."""
    started_at = await conn.fetchval(
        """UPDATE interviews SET status = 'in_progress', started_at = now()
           WHERE id = $1 AND status = 'scheduled' RETURNING started_at""",
        interview_id,
    )
    if started_at is not None:
        data = {
            "interview_id": interview_id,
            "session_id": session_id,
            "started_at": iso_utc_or_none(started_at),
        }
        await enqueue(conn, "interview.started", interview_id=interview_id, data=data)


async def session_finished(
    conn: asyncpg.Connection,
    interview_id: str,
    *,
    session_id: str,
    state: str,
    reason: str,
    connected: bool,
    min_remaining_s: int,
) -> None:
    """A session of the interview closed (its row already updated in this transaction)."""
    if not connected:
        return
    row = await conn.fetchrow(
        f"""SELECT i.status, i.max_duration_s - {USED_SECONDS_SQL} AS left_s,
                   EXISTS (SELECT 1 FROM interview_sessions s
                           WHERE s.interview_id = i.id AND s.id <> $2
                             AND s.state IN ('connecting', 'active')) AS others_live
            FROM interviews i WHERE i.id = $1 FOR UPDATE""",
        interview_id,
        session_id,
    )
    if row is None or row["status"] != "in_progress" or row["others_live"]:
        return
    ended = state == "ended" and reason not in CONNECTION_LOST_REASONS
    if ended or float(row["left_s"]) < min_remaining_s:
        await complete(conn, interview_id, reason)


async def hung_up_while_away(conn: asyncpg.Connection, interview_id: str, session_id: str) -> bool:
    """The candidate's End while the interview waits for a rejoin after ``session_id``: the
    candidate's page lost that session to a failure that was not theirs (the interviewer's
    service dropped the call, the relay stopped) or lost its connection, and was rejoining
    by itself when the candidate ended the interview instead. Completed now, end reason
    ``hangup``, rather than failed (or completed ``browser_gone``) once the rejoin window has
    passed with nobody back.

    Only when ``session_id`` is the interview's last session that carried media, no session
    of it is connecting or live, and that session ended so (``failed``, or the connection
    lost): the hang-up of a start given up before any media (the page's clean-up of a
    rejoin attempt that did not come up) changes nothing, as it never did. True: completed."""
    row = await conn.fetchrow(
        """SELECT i.status,
                  EXISTS (SELECT 1 FROM interview_sessions s
                          WHERE s.interview_id = i.id
                            AND s.state IN ('connecting', 'active')) AS others_live,
                  last.id AS last_id, last.state AS last_state, last.end_reason AS last_reason
           FROM interviews i
           LEFT JOIN LATERAL (
               SELECT s.id, s.state, s.end_reason FROM interview_sessions s
               WHERE s.interview_id = i.id AND s.state IN ('ended', 'failed')
                 AND s.connected_at IS NOT NULL
               ORDER BY s.ended_at DESC NULLS LAST LIMIT 1) last ON true
           WHERE i.id = $1 FOR UPDATE OF i""",
        interview_id,
    )
    if row is None or row["status"] != "in_progress" or row["others_live"]:
        return False
    if row["last_id"] != session_id:
        return False
    if row["last_state"] != "failed" and row["last_reason"] not in CONNECTION_LOST_REASONS:
        return False
    await complete(conn, interview_id, "hangup")
    return True


async def complete(conn: asyncpg.Connection, interview_id: str, reason: str) -> None:
    # Ended when its last session that carried media did: housekeeping completes an
    # interview whose candidate's connection was lost only after the rejoin window (a
    # session started meanwhile that never connected changed nothing).
    row = await conn.fetchrow(
        """UPDATE interviews
           SET status = 'completed', end_reason = $2,
               ended_at = COALESCE((SELECT max(s.ended_at) FROM interview_sessions s
                                    WHERE s.interview_id = $1
                                      AND s.connected_at IS NOT NULL), now())
           WHERE id = $1 AND status = 'in_progress'
           RETURNING ended_at,
                     (SELECT COALESCE(SUM(s.duration_seconds), 0) FROM interview_sessions s
                      WHERE s.interview_id = $1) AS duration_s""",
        interview_id,
        reason,
    )
    if row is None:
        return
    data: dict[str, Any] = {
        "interview_id": interview_id,
        "duration_s": round(float(row["duration_s"]), 1),
        "end_reason": reason,
        "ended_at": iso_utc_or_none(row["ended_at"]),
    }
    await enqueue(conn, "interview.completed", interview_id=interview_id, data=data)


async def close(
    conn: asyncpg.Connection, interview_id: str, status: str, reason: str, *, extra: dict[str, Any]
) -> datetime | None:
    """An open interview → ``expired``, ``failed`` or ``cancelled``, with its event; the
    time it ended (None: it was not open)."""
    ended_at: datetime | None = await conn.fetchval(
        """UPDATE interviews SET status = $2, ended_at = now(), end_reason = $3
           WHERE id = $1 AND status IN ('scheduled', 'in_progress') RETURNING ended_at""",
        interview_id,
        status,
        reason,
    )
    if ended_at is None:
        return None
    data = {"interview_id": interview_id, "end_reason": reason, "ended_at": iso_utc(ended_at)}
    await enqueue(conn, f"interview.{status}", interview_id=interview_id, data=data | extra)
    return ended_at
