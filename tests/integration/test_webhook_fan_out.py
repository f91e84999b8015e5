"""Fanning out the webhooks' outbox (relay.webhooks.deliveries.DeliveryRows) on a real
PostgreSQL while another transaction holds the oldest event, as another instance's fan-out
in progress does: an interview's events still reach the endpoint in order."""

from __future__ import annotations

import asyncio

import asyncpg

from relay.observability.metrics import MetricsRegistry
from relay.webhooks.deliveries import DeliveryRows
from relay.webhooks.endpoints import new_endpoint_id
from relay.webhooks.outbox import enqueue
from tests.integration.cluster_helpers import poll
from tests.integration.relay_harness import migrated_store


async def test_a_fan_out_waits_for_an_earlier_event_another_holds(database_url: str) -> None:
    async with migrated_store(database_url, MetricsRegistry()) as store:
        rows = DeliveryRows(store)
        writer = await asyncpg.connect(database_url)
        holder = await asyncpg.connect(database_url)
        fan_out: asyncio.Task[int] | None = None
        try:
            # An endpoint of every event (its sealed secret is not read here).
            await writer.execute(
                "INSERT INTO webhook_endpoints (id, url, events, secret_sealed, enabled,"
                " created_by) VALUES ($1, 'http://127.0.0.1:9/', ARRAY['*'], $2, TRUE, 'test')",
                new_endpoint_id(),
                b"sealed",
            )
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
