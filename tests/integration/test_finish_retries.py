"""A finish is never lost once the registry has let its session go: whatever the database
answers (an outage or any other error), the row's close is queued and housekeeping
retries it until it lands, going on past an entry that still cannot be written.

The database's refusal is real: a trigger that raises on closing the rows listed in a
table (a PostgreSQL error that no retry of the store's fixes).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from relay.sessions.registry import SessionEntry
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness

REFUSE_CLOSING = """
CREATE TABLE refuse_closing (id TEXT PRIMARY KEY);
CREATE FUNCTION refuse_closing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM refuse_closing WHERE id = OLD.id) THEN
        RAISE EXCEPTION 'closing % refused', OLD.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_closing BEFORE UPDATE OF state ON interview_sessions
    FOR EACH ROW WHEN (NEW.state IN ('ended', 'failed')) EXECUTE FUNCTION refuse_closing();
"""


async def execute(dsn: str, statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statements)
    finally:
        await conn.close()


async def relay_refusing_closes(make_relay: MakeRelay, **kwargs: Any) -> RelayHarness:
    relay = await make_relay(**kwargs)
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    await execute(relay.database_url, REFUSE_CLOSING)
    return relay


async def new_session(relay: RelayHarness) -> SessionEntry:
    token = await relay.add_user(seconds=100)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    entry = relay.services.registry.get(body["session_id"])
    assert entry is not None
    return entry


async def closed(relay: RelayHarness, session_id: str) -> tuple[Any, ...]:
    rows = await relay.sql(
        "SELECT s.state, s.end_reason, s.debited_seconds, u.remaining_seconds"
        " FROM interview_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        session_id,
    )
    return tuple(rows[0])


async def test_a_finish_the_database_refuses_with_an_error_is_kept_and_lands_later(
    make_relay: MakeRelay,
) -> None:
    relay = await relay_refusing_closes(make_relay)
    entry = await new_session(relay)
    await relay.sql("INSERT INTO refuse_closing VALUES ($1)", entry.session_id)

    sessions = relay.services.sessions
    remaining = await sessions.finish(entry, state="ended", reason="hangup", duration_s=12.3)
    assert remaining is None  # not written yet
    assert relay.services.registry.get(entry.session_id) is None
    assert relay.counter("relay_sessions_finish_write_failures_total") == 1
    assert await sessions.retry_unwritten() == 1  # still refused
    assert await closed(relay, entry.session_id) == ("pending", None, None, 100)

    await relay.sql("DELETE FROM refuse_closing")
    assert await sessions.retry_unwritten() == 0
    assert await closed(relay, entry.session_id) == ("ended", "hangup", 13, 100 - 13)


async def test_the_retry_goes_on_past_a_finish_that_still_cannot_be_written(
    make_relay: MakeRelay, private_postgres: Any
) -> None:
    relay = await relay_refusing_closes(make_relay, dsn=private_postgres.dsn())
    refused, other = await new_session(relay), await new_session(relay)
    sessions = relay.services.sessions

    await private_postgres.astop()
    for entry in (refused, other):
        await sessions.finish(entry, state="ended", reason="hangup", duration_s=12.3)
    assert await sessions.retry_unwritten() == 2  # the database is down
    await private_postgres.astart()
    await relay.sql("INSERT INTO refuse_closing VALUES ($1)", refused.session_id)

    assert await sessions.retry_unwritten() == 1  # the first is refused, the second lands
    assert await closed(relay, other.session_id) == ("ended", "hangup", 13, 100 - 13)
    assert await closed(relay, refused.session_id) == ("pending", None, None, 100)
    await relay.sql("DELETE FROM refuse_closing")
    assert await sessions.retry_unwritten() == 0
    assert await closed(relay, refused.session_id) == ("ended", "hangup", 13, 100 - 13)
