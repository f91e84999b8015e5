"""Fanning out the webhooks' outbox (relay.webhooks.deliveries.DeliveryRows) on a real
PostgreSQL while another transaction holds the oldest event, as another instance's fan-out
in progress does, or while two transactions write events of one interview: an interview's
events still reach the endpoint in order."""

from __future__ import annotations

import asyncio

import asyncpg

from relay.interviews import transitions
from relay.observability.metrics import MetricsRegistry
from relay.webhooks.deliveries import DeliveryRows
from relay.webhooks.endpoints import new_endpoint_id
from relay.webhooks.outbox import enqueue
from tests.integration.cluster_helpers import poll, sql
from tests.integration.relay_harness import migrated_store


async def add_endpoint(conn: asyncpg.Connection) -> None:
    """An endpoint of every event (its sealed secret is not read here)."""
    await conn.execute(
        "INSERT INTO webhook_endpoints (id, url, events, secret_sealed, enabled,"
        " created_by) VALUES ($1, 'http://127.0.0.1:9/', ARRAY['*'], $2, TRUE, 'test')",
        new_endpoint_id(),
        b"sealed",
    )


async def test_a_fan_out_waits_for_an_earlier_event_another_holds(database_url: str) -> None:
    async with migrated_store(database_url, MetricsRegistry()) as store:
        rows = DeliveryRows(store)
        writer = await asyncpg.connect(database_url)
        holder = await asyncpg.connect(database_url)
        fan_out: asyncio.Task[int] | None = None
        try:
            await add_endpoint(writer)
            ids = []
            for n in range(3):
                async with writer.transaction():
                    event = await enqueue(
                        writer, "interview.started", interview_id="iv_1", data={"n": n}
                    )
                    ids.append(event)
            # Another fan-out holds the oldest event, not yet committed.
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT 1 FROM webhook_events WHERE id = $1 FOR UPDATE", ids[0])
            fan_out = asyncio.create_task(rows.fan_out(limit=100, retry_for_s=3600))

            async def waiting_or_done() -> bool:
                waiting = await writer.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
                return fan_out.done() or waiting > 0

            await poll(waiting_or_done, 10, "the fan-out to wait for the held event, or end")
            # Nothing of the interview may be claimed ahead of its first event.
            ahead = await rows.claim(instance="test", limit=10, lease_s=30)
            assert [c.event_id for c in ahead] == []

            await held.rollback()
            assert await fan_out == 3
            first = await rows.claim(instance="test", limit=10, lease_s=30)
            assert [c.event_id for c in first] == [ids[0]]
        finally:
            if fan_out is not None and not fan_out.done():
                fan_out.cancel()
            await holder.close()
            await writer.close()


INTERVIEW_ID = "iv_" + "7" * 32


async def test_an_interviews_events_commit_in_the_order_of_their_numbers(
    database_url: str,
) -> None:
    """Its status completed in one transaction, not yet committed, and a recording of it
    ready in another: the second waits for the first, so the fan-out never sees the later
    event without the earlier one (it would send them out of order)."""
    async with migrated_store(database_url, MetricsRegistry()) as store:
        rows = DeliveryRows(store)
        status_conn = await asyncpg.connect(database_url)
        recording_conn = await asyncpg.connect(database_url)
        recording: asyncio.Task[str] | None = None
        try:
            await add_endpoint(status_conn)
            await status_conn.execute(
                """WITH u AS (
                       INSERT INTO users (email, token_hash) VALUES ('order@example.com', $2)
                       RETURNING id)
                   INSERT INTO interviews (id, user_id, invite_token_hash, instructions,
                                           max_duration_s, expires_at, status, created_by)
                   SELECT $1, u.id, $3, 'Ask.', 600, now() + interval '1 hour',
                          'in_progress', 'test' FROM u""",
                INTERVIEW_ID,
                "1" * 64,
                "2" * 64,
            )
            completing = status_conn.transaction()
            await completing.start()
            await transitions.complete(status_conn, INTERVIEW_ID, "hangup")

            async def recording_ready() -> str:
                async with recording_conn.transaction():
                    return await enqueue(
                        recording_conn,
                        "recording.ready",
                        interview_id=INTERVIEW_ID,
                        data={"interview_id": INTERVIEW_ID},
                    )

            recording = asyncio.create_task(recording_ready())

            async def waiting_or_done() -> bool:
                waiting = await sql(
                    database_url,
                    "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                    recording_conn.get_server_pid(),
                )
                return recording.done() or bool(waiting)

            await poll(waiting_or_done, 10, "the recording's event to wait, or be written")
            # Whatever the fan-out sees now, it must not send the later event first.
            assert await rows.fan_out(limit=100, retry_for_s=3600) == 0
            assert not recording.done()

            await completing.commit()
            ready_id = await recording
            assert await rows.fan_out(limit=100, retry_for_s=3600) == 2
            events = await status_conn.fetch(
                "SELECT id, type FROM webhook_events WHERE interview_id = $1 ORDER BY seq",
                INTERVIEW_ID,
            )
            assert [e["type"] for e in events] == ["interview.completed", "recording.ready"]
            assert events[1]["id"] == ready_id
            first = await rows.claim(instance="test", limit=10, lease_s=30)
            assert [c.event_id for c in first] == [events[0]["id"]]
        finally:
            if recording is not None and not recording.done():
                recording.cancel()
            await recording_conn.close()
            await status_conn.close()
