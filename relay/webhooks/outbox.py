"""The outbox: ``enqueue`` writes an event inside the caller's transaction.

Whoever changes an interview's or a recording's state awaits ``enqueue`` on the same
connection, inside the same transaction, so the event is written if and only if the
change commits (no event for a change rolled back, no change without its event). Delivery
is someone else's job: it reads the rows and never blocks the change. Every delivering
process is woken when an event is written: a trigger (migration 011) sends ``DUE_OP`` on
the cluster's command channel at commit.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import asyncpg

EVENT_TYPES = (
    "interview.started",
    "interview.completed",
    "interview.expired",
    "interview.cancelled",
    "interview.failed",
    # Written when an erased interview's rows are gone (relay.erasure): its id only.
    "interview.deleted",
    "recording.ready",
    "recording.failed",
)
# Sent to one endpoint on request (``POST /api/webhooks/{id}/test``, ``relay webhooks
# test``); never subscribed to, never enqueued.
TEST_EVENT = "webhook.test"


# The cluster command (relay.cluster.bus) that wakes the dispatchers (relay.webhooks.
# dispatcher): sent by ``relay_webhooks_due()``, which the outbox's trigger calls.
DUE_OP = "webhooks_due"


async def notify_due(conn: asyncpg.Connection) -> None:
    """Wake every delivering process (at commit, inside a transaction): something is due."""
    await conn.execute("SELECT relay_webhooks_due()")


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


async def enqueue(
    conn: asyncpg.Connection,
    event_type: str,
    *,
    interview_id: str | None,
    data: dict[str, Any],
) -> str:
    """Write one event on ``conn`` (call it inside the transaction of the change); its id.

    An interview's event is written holding its interview's row: the event's sequence
    number is drawn at the insert, and two transactions writing events of one interview
    (its status changed in one, a recording's in another) could otherwise commit in the
    other order. The fan-out takes the events it sees in sequence order; seeing the later
    one committed and not yet the earlier, it would send them out of order. With the row
    held to commit, an interview's events commit in the order of their numbers.

    The lock is the one an UPDATE of the row takes (``FOR NO KEY UPDATE``): it orders the
    event writers and status changes, and does not hold up a new session of the interview
    (its insert only takes a key-share lock through the foreign key). A status change
    already holds it. A recording's transaction takes recording, session, then interview,
    as closing a session takes session then interview; cancelling takes the interview and
    then its *pending* sessions, and a recorded session has left pending before its
    recorder started, so no cycle."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    if interview_id is not None:
        await conn.execute("SELECT 1 FROM interviews WHERE id = $1 FOR NO KEY UPDATE", interview_id)
    event_id = new_event_id()
    await conn.execute(
        "INSERT INTO webhook_events (id, type, interview_id, data) VALUES ($1, $2, $3, $4)",
        event_id,
        event_type,
        interview_id,
        json.dumps(data),
    )
    return event_id
