"""The ``webhook_deliveries`` and ``webhook_attempts`` tables (migration 008).

* ``fan_out``: each outbox event not yet dispatched becomes one delivery per enabled
  endpoint subscribed to its type, and is marked dispatched, in one statement; a delivery
  is unique per (endpoint, event), so an event is never fanned out twice. The oldest events
  are locked ``FOR UPDATE`` and waited for, never skipped: an instance that skipped the
  events another was fanning out could commit later events' deliveries first, and those
  would be the heads of their interviews' queues (``claim``) before the earlier events'
  deliveries existed. Waiting, it finds them dispatched when the other commits (and fans
  out nothing this pass); the locks are taken in ``seq`` order, so two never deadlock.
* ``claim``: due deliveries, each taken by one instance (``FOR UPDATE SKIP LOCKED``) under
  a lease (``claimed_until``): an instance that dies mid-attempt lets go when its lease
  ends, and another attempts the delivery again (at least once). Only the head of each
  (endpoint, interview) queue can be claimed: a delivery waits while an earlier one (a
  lower ``seq``) of the same interview to the same endpoint is pending, so an interview's
  events reach an endpoint in order, retries included. Events of no interview are not
  ordered among themselves.
* ``record``: an attempt's outcome, in the log, and the delivery's next state: delivered;
  or pending again after the backoff; or failed once ``give_up_at`` has passed.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from relay.db import Store, landed_once
from relay.webhooks.outbox import TEST_EVENT, new_event_id, notify_due

STATUSES = ("pending", "delivered", "failed")
# Attempts listed with each delivery of the log (the newest; the count says how many).
ATTEMPTS_SHOWN = 20
RETENTION_BATCH = 1000


def new_delivery_id() -> str:
    return "whd_" + secrets.token_hex(16)


@dataclass(frozen=True)
class Claimed:
    """A delivery this instance holds the lease of, with what its attempt needs."""

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    event_created_at: datetime
    data: dict[str, Any]
    url: str
    secret_sealed: bytes
    # The secret a rotation replaced, while its overlap lasts (by the database's clock at
    # the claim); None otherwise.
    previous_secret_sealed: bytes | None
    attempts: int


@dataclass(frozen=True)
class OutboxState:
    # Events not yet fanned out; deliveries not yet delivered nor given up.
    events: int
    deliveries: int
    # Seconds until the next delivery a claim could take (<= 0: now); None: none pending.
    due_in_s: float | None


@dataclass(frozen=True)
class AttemptRecord:
    outcome: str
    status_code: int | None
    duration_ms: int
    error: str | None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


_CLAIMED = """d.id, d.endpoint_id, d.event_id, d.attempts, e.type, e.data,
    e.created_at AS event_created_at, w.url, w.secret_sealed,
    CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret_sealed END
        AS previous_secret_sealed"""


def _claimed(row: asyncpg.Record) -> Claimed:
    return Claimed(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_id=row["event_id"],
        event_type=row["type"],
        event_created_at=row["event_created_at"],
        data=_json(row["data"]),
        url=row["url"],
        secret_sealed=row["secret_sealed"],
        previous_secret_sealed=row["previous_secret_sealed"],
        attempts=row["attempts"],
    )


class DeliveryRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def fan_out(self, *, limit: int, retry_for_s: float) -> int:
        """Dispatch up to ``limit`` outbox events (oldest first); how many."""

        async def op(conn: asyncpg.Connection) -> int:
            count: int = await conn.fetchval(
                """WITH events AS (
                       SELECT id, type, interview_id, seq, created_at FROM webhook_events
                       WHERE dispatched_at IS NULL
                       ORDER BY seq LIMIT $1
                       FOR UPDATE
                   ), made AS (
                       INSERT INTO webhook_deliveries
                           (id, endpoint_id, event_id, seq, interview_id, give_up_at)
                       SELECT 'whd_' || replace(gen_random_uuid()::text, '-', ''),
                              w.id, e.id, e.seq, e.interview_id,
                              e.created_at + make_interval(secs => $2)
                       FROM events e
                       JOIN webhook_endpoints w
                         ON w.enabled AND (e.type = ANY (w.events) OR '*' = ANY (w.events))
                       ON CONFLICT (endpoint_id, event_id) DO NOTHING
                       RETURNING 1
                   ), marked AS (
                       UPDATE webhook_events SET dispatched_at = now()
                       WHERE id IN (SELECT id FROM events)
                       RETURNING 1
                   )
                   SELECT count(*) FROM marked""",
                limit,
                retry_for_s,
            )
            return count

        return await self._store.run("webhook_fan_out", op)

    async def claim(self, *, instance: str, limit: int, lease_s: float) -> list[Claimed]:
        """Take up to ``limit`` due deliveries for ``lease_s`` seconds."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""WITH due AS (
                            SELECT d.id FROM webhook_deliveries d
                            JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled
                            WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                              AND (d.claimed_until IS NULL OR d.claimed_until < now())
                              AND NOT EXISTS (
                                  SELECT 1 FROM webhook_deliveries p
                                  WHERE p.endpoint_id = d.endpoint_id
                                    AND p.interview_id = d.interview_id
                                    AND p.status = 'pending' AND p.seq < d.seq)
                            ORDER BY d.next_attempt_at, d.seq
                            LIMIT $2
                            FOR UPDATE OF d SKIP LOCKED
                        )
                        UPDATE webhook_deliveries d
                        SET claimed_by = $1,
                            claimed_until = now() + make_interval(secs => $3)
                        FROM due, webhook_events e, webhook_endpoints w
                        WHERE d.id = due.id AND e.id = d.event_id AND w.id = d.endpoint_id
                        RETURNING {_CLAIMED}""",
                    instance,
                    limit,
                    lease_s,
                )
            )

        return [_claimed(r) for r in await self._store.run("webhook_claim", op)]

    async def record(
        self,
        delivery_id: str,
        *,
        instance: str,
        attempt: AttemptRecord,
        retry_in_s: float | None,
    ) -> str | None:
        """Log ``attempt`` and move the delivery on: delivered; pending again in
        ``retry_in_s`` (None: no retry, failed); failed once its ``give_up_at`` has passed.
        Its status now, or None when this instance no longer held its lease (another took
        it over: the attempt is logged, its outcome is the other's to write) or the delivery
        is gone (its endpoint was deleted while the attempt ran: nothing is logged)."""
        delivered = attempt.outcome == "delivered"

        # A retry whose earlier attempt committed (its reply lost) answers that attempt's
        # status, and logs the attempt once (relay.db.landed).
        async def work(conn: asyncpg.Connection) -> str | None:
            # Held until commit, so that a DELETE of the endpoint waits for the log
            # line instead of removing the delivery between this check and its insert
            # (the attempt log's foreign key would fail the insert).
            exists = await conn.fetchval(
                "SELECT true FROM webhook_deliveries WHERE id = $1 FOR KEY SHARE",
                delivery_id,
            )
            if not exists:
                return None
            await conn.execute(
                """INSERT INTO webhook_attempts
                       (delivery_id, outcome, status_code, duration_ms, error, instance)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                delivery_id,
                attempt.outcome,
                attempt.status_code,
                attempt.duration_ms,
                attempt.error,
                instance,
            )
            status: str | None = await conn.fetchval(
                """UPDATE webhook_deliveries SET
                       attempts = attempts + 1,
                       last_attempt_at = now(),
                       last_status_code = $3,
                       last_error = $4,
                       status = CASE
                           WHEN $5 THEN 'delivered'
                           WHEN $6::float8 IS NULL OR now() >= give_up_at THEN 'failed'
                           ELSE 'pending' END,
                       delivered_at = CASE WHEN $5 THEN now() ELSE delivered_at END,
                       next_attempt_at = CASE WHEN $5 OR $6::float8 IS NULL
                           THEN next_attempt_at
                           ELSE now() + make_interval(secs => $6::float8) END,
                       claimed_by = NULL,
                       claimed_until = NULL
                   WHERE id = $1 AND claimed_by = $2
                   RETURNING status""",
                delivery_id,
                instance,
                attempt.status_code,
                attempt.error,
                delivered,
                retry_in_s,
            )
            return status

        return await self._store.run("webhook_record", landed_once(work))

    async def release(self, instance: str) -> int:
        """Let go of every lease ``instance`` holds (its shut-down, or its start after a
        crash): those deliveries are due again at once."""

        async def op(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(
                """UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL
                   WHERE claimed_by = $1""",
                instance,
            )
            return int(status.split()[-1])

        return await self._store.run("webhook_release", op)

    async def create_test(self, *, endpoint_id: str, instance: str, lease_s: float) -> Claimed:
        """A ``webhook.test`` event for one endpoint and its delivery, claimed by
        ``instance`` to be attempted at once (it never goes through the fan-out)."""
        event_id = new_event_id()
        delivery_id = new_delivery_id()

        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            async with conn.transaction():
                exists = await conn.fetchval(
                    "SELECT true FROM webhook_endpoints WHERE id = $1 FOR SHARE", endpoint_id
                )
                if not exists:
                    return None
                # Dispatched already: the fan-out never sends it to other endpoints. (DO
                # UPDATE, not NOTHING: a retry after a lost connection gets the row back.)
                event = await conn.fetchrow(
                    """INSERT INTO webhook_events (id, type, interview_id, data, dispatched_at)
                       VALUES ($1, $2, NULL, $3, now())
                       ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id
                       RETURNING seq""",
                    event_id,
                    TEST_EVENT,
                    json.dumps({"endpoint_id": endpoint_id}),
                )
                await conn.execute(
                    """INSERT INTO webhook_deliveries
                           (id, endpoint_id, event_id, seq, interview_id, give_up_at,
                            claimed_by, claimed_until)
                       VALUES ($1, $2, $3, $4, NULL, now(), $5,
                               now() + make_interval(secs => $6))
                       ON CONFLICT (id) DO NOTHING""",
                    delivery_id,
                    endpoint_id,
                    event_id,
                    event["seq"],
                    instance,
                    lease_s,
                )
                row: asyncpg.Record = await conn.fetchrow(
                    f"""SELECT {_CLAIMED} FROM webhook_deliveries d
                        JOIN webhook_events e ON e.id = d.event_id
                        JOIN webhook_endpoints w ON w.id = d.endpoint_id
                        WHERE d.id = $1""",
                    delivery_id,
                )
                return row

        row = await self._store.run("webhook_test", op)
        if row is None:
            raise LookupError(endpoint_id)
        return _claimed(row)

    async def redeliver(
        self, *, endpoint_id: str, delivery_id: str, retry_for_s: float
    ) -> asyncpg.Record | None:
        """Make a delivery due now, with a fresh ``retry_for_s`` to succeed in (the same
        event, the same ``webhook-id``). None: no such delivery of that endpoint. A
        delivery being attempted right now is left as it is (its status says so)."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            async with conn.transaction():
                status: str = await conn.execute(
                    """UPDATE webhook_deliveries SET
                           status = 'pending', next_attempt_at = now(),
                           give_up_at = now() + make_interval(secs => $3)
                       WHERE id = $1 AND endpoint_id = $2
                         AND (claimed_until IS NULL OR claimed_until < now())""",
                    delivery_id,
                    endpoint_id,
                    retry_for_s,
                )
                if status != "UPDATE 0":
                    # Whichever instance delivers (this one may not: webhooks.deliver).
                    await notify_due(conn)
                # Read before the commit: the row as this call left it (in flight only if
                # an attempt was running, and so left be), not already claimed by the
                # dispatcher that the notification wakes at the commit.
                rows = await _deliveries(
                    conn, "d.id = $1 AND d.endpoint_id = $2", delivery_id, endpoint_id
                )
            return rows[0] if rows else None

        return await self._store.run("webhook_redeliver", op)

    async def get(self, *, endpoint_id: str, delivery_id: str) -> asyncpg.Record | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            rows = await _deliveries(
                conn, "d.id = $1 AND d.endpoint_id = $2", delivery_id, endpoint_id
            )
            return rows[0] if rows else None

        return await self._store.run("webhook_delivery_get", op)

    async def page(
        self,
        *,
        endpoint_id: str,
        limit: int,
        status: str | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[asyncpg.Record]:
        """The endpoint's delivery log, newest first, each with its attempts."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            where = ["d.endpoint_id = $1", "($2::text IS NULL OR d.status = $2)"]
            args: list[Any] = [endpoint_id, status]
            if before is not None:
                where.append("(d.created_at, d.id) < ($3, $4)")
                args += [before[0], before[1]]
            return await _deliveries(conn, " AND ".join(where), *args, limit=limit)

        return await self._store.run("webhook_delivery_page", op)

    async def state(self) -> OutboxState:
        """What waits in the outbox, and in how long the next delivery is due (by the
        database's clock): one statement, read after each dispatch pass and between."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record:
            row: asyncpg.Record = await conn.fetchrow(
                """SELECT
                       (SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL) AS e,
                       (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS d,
                       -- Only what a claim could take then: the head of its queue, to an
                       -- enabled endpoint, once its retry time and any lease have passed.
                       (SELECT EXTRACT(EPOCH FROM min(GREATEST(
                                   d.next_attempt_at,
                                   COALESCE(d.claimed_until, '-infinity'))) - now())::float8
                        FROM webhook_deliveries d
                        JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled
                        WHERE d.status = 'pending'
                          AND NOT EXISTS (
                              SELECT 1 FROM webhook_deliveries p
                              WHERE p.endpoint_id = d.endpoint_id
                                AND p.interview_id = d.interview_id
                                AND p.status = 'pending' AND p.seq < d.seq)) AS due_in"""
            )
            return row

        row = await self._store.run("webhook_outbox_state", op)
        return OutboxState(int(row["e"]), int(row["d"]), row["due_in"])

    async def forget_older_than(self, cutoff: datetime) -> int:
        """Delete events older than ``cutoff`` with nothing left to deliver, their
        deliveries and attempts with them; how many events."""

        async def op(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(
                """DELETE FROM webhook_events WHERE id IN (
                       SELECT e.id FROM webhook_events e
                       WHERE e.created_at < $1 AND e.dispatched_at IS NOT NULL
                         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                         WHERE d.event_id = e.id AND d.status = 'pending')
                       LIMIT $2)""",
                cutoff,
                RETENTION_BATCH,
            )
            return int(status.split()[-1])

        return await self._store.run("webhook_retention", op)


async def _deliveries(
    conn: asyncpg.Connection, where: str, *args: Any, limit: int = 1
) -> list[asyncpg.Record]:
    """Deliveries matching ``where`` (newest first) with their event and latest attempts
    (``attempt_log``: JSON, newest first)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT d.id, d.endpoint_id, d.event_id, e.type AS event_type, d.interview_id,
                   d.status, d.attempts, d.next_attempt_at, d.give_up_at, d.last_attempt_at,
                   d.last_status_code, d.last_error, d.delivered_at, d.created_at,
                   (d.status = 'pending' AND COALESCE(d.claimed_until > now(), false))
                       AS in_flight,
                   COALESCE((
                       SELECT json_agg(a ORDER BY a.id DESC) FROM (
                           SELECT id, attempted_at, outcome, status_code, duration_ms, error
                           FROM webhook_attempts WHERE delivery_id = d.id
                           ORDER BY id DESC LIMIT {ATTEMPTS_SHOWN}) a
                   ), '[]') AS attempt_log
            FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
            WHERE {where}
            ORDER BY d.created_at DESC, d.id DESC
            LIMIT {int(limit)}""",
        *args,
    )
    return rows
