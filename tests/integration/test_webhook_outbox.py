"""The webhooks' outbox against a real PostgreSQL: an event is written if and only if the
transaction of the change it reports commits, and events keep their order."""

from __future__ import annotations

import asyncpg
import pytest

from relay.db.migrate import migrate
from relay.webhooks.outbox import enqueue


async def test_an_event_is_written_only_with_the_change_that_commits(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, timeout_s=60)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await enqueue(conn, "interview.cancelled", interview_id="iv_a", data={"n": 1})
                raise RuntimeError("the change fails")
        async with conn.transaction():
            first = await enqueue(conn, "interview.started", interview_id="iv_a", data={"n": 2})
            second = await enqueue(conn, "interview.completed", interview_id="iv_a", data={"n": 3})
        rows = await conn.fetch(
            "SELECT id, type, data FROM webhook_events WHERE interview_id = $1 ORDER BY seq",
            "iv_a",
        )
    finally:
        await conn.close()
    assert [r["id"] for r in rows] == [first, second]
    assert [r["type"] for r in rows] == ["interview.started", "interview.completed"]
    assert [r["data"] for r in rows] == ['{"n": 2}', '{"n": 3}']


async def test_an_unknown_event_type_is_refused_before_anything_is_written(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, timeout_s=60)
        with pytest.raises(ValueError, match="interview.exploded"):
            await enqueue(conn, "interview.exploded", interview_id="iv_b", data={})
        count = await conn.fetchval("SELECT count(*) FROM webhook_events")
    finally:
        await conn.close()
    assert count == 0
