"""Fanning out the webhooks' outbox (relay.webhooks.deliveries.DeliveryRows) on a real
PostgreSQL while another transaction holds the oldest event, as another instance's fan-out
in progress does, or while two transactions write events of one interview: an interview's
events still reach the endpoint in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import pytest

from relay.interviews import transitions
from relay.observability.metrics import MetricsRegistry
from relay.webhooks.deliveries import DeliveryRows
from relay.webhooks.endpoints import new_endpoint_id
from relay.webhooks.outbox import enqueue
from tests.integration.cluster_helpers import poll
from tests.integration.relay_harness import migrated_store

T = TypeVar("T")


@dataclass
class Outbox:
    """A migrated database with an endpoint of every event, its delivery rows, and two
    connections of their own for the transactions a test interleaves."""

    rows: DeliveryRows
    first: asyncpg.Connection
    second: asyncpg.Connection
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task the test waits for (cancelled at the end if it has not ended)."""
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    async def blocked_or_ended(self, task: asyncio.Task[Any], what: str) -> None:
        """Wait until ``task`` waits for a lock, or has ended."""

        async def check() -> bool:
            waiting = await self.first.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
            return task.done() or waiting > 0

        await poll(check, 10, what)


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[Outbox]:
    async with migrated_store(database_url, MetricsRegistry()) as store:
        first = await asyncpg.connect(database_url)
        second = await asyncpg.connect(database_url)
        state = Outbox(DeliveryRows(store), first, second)
        try:
            await add_endpoint(first)
            yield state
        finally:
            for task in state.tasks:
                task.cancel()
            await second.close()
            await first.close()


async def add_endpoint(conn: asyncpg.Connection) -> None:
    """An endpoint of every event (its sealed secret is not read here)."""
    await conn.execute(
        "INSERT INTO webhook_endpoints (id, url, events, secret_sealed, enabled,"
        " created_by) VALUES ($1, 'http://127.0.0.1:9/', ARRAY['*'], $2, TRUE, 'test')",
        new_endpoint_id(),
        b"sealed",
    )


async def test_a_fan_out_waits_for_an_earlier_event_another_holds(outbox: Outbox) -> None:
    rows, writer, holder = outbox.rows, outbox.first, outbox.second
    ids = []
    for n in range(3):
        async with writer.transaction():
            ids.append(
                await enqueue(writer, "interview.started", interview_id="iv_1", data={"n": n})
            )
    # Another fan-out holds the oldest event, not yet committed.
    held = holder.transaction()
    await held.start()
    await holder.execute("SELECT 1 FROM webhook_events WHERE id = $1 FOR UPDATE", ids[0])
    fan_out = outbox.start(rows.fan_out(limit=100, retry_for_s=3600))
    await outbox.blocked_or_ended(fan_out, "the fan-out to wait for the held event, or end")
    # Nothing of the interview may be claimed ahead of its first event.
    ahead = await rows.claim(instance="test", limit=10, lease_s=30)
    assert [c.event_id for c in ahead] == []

    await held.rollback()
    assert await fan_out == 3
    first = await rows.claim(instance="test", limit=10, lease_s=30)
    assert [c.event_id for c in first] == [ids[0]]


INTERVIEW_ID = "iv_" + "7" * 32


async def test_an_interviews_events_commit_in_the_order_of_their_numbers(
    outbox: Outbox,
) -> None:
    """Its status completed in one transaction, not yet committed, and a recording of it
    ready in another: the second waits for the first, so the fan-out never sees the later
    event without the earlier one (it would send them out of order)."""
    rows, status_conn, recording_conn = outbox.rows, outbox.first, outbox.second
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

    recording = outbox.start(recording_ready())
    await outbox.blocked_or_ended(recording, "the recording's event to wait, or be written")
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
