"""Returning a connection to the store's pool costs no round trip, and still leaves the
next user a clean connection (relay.db.store.keep_session), on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.db import DatabaseUnavailable, Store
from relay.observability.metrics import MetricsRegistry
from tests.integration.cluster_helpers import sql
from tests.integration.relay_harness import migrated_store
from tests.support.lost_cancels import cancel_requests_lost

# asyncpg's default reset on release (Connection.get_reset_query) starts with this.
DEFAULT_RESET = "SELECT pg_advisory_unlock_all()"
# An advisory lock only the test below takes.
BLOCKING_LOCK_ID = 0x7E57_0042


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    # One connection: the second statement below gets the connection the first released.
    metrics = MetricsRegistry(process_metrics=False)
    async with migrated_store(database_url, metrics, pool_min_size=1, pool_max_size=1) as opened:
        yield opened


async def _last_statement(dsn: str, pid: int) -> str:
    [row] = await sql(dsn, "SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    query: str = row["query"]
    return query


async def test_a_released_connection_ran_nothing_after_the_statement(
    store: Store, database_url: str
) -> None:
    async def backend(conn: asyncpg.Connection) -> int:
        pid: int = await conn.fetchval("SELECT pg_backend_pid() /* probe */")
        return pid

    pid = await store.run("probe", backend)
    # The server's record of that connection's last statement: the probe, not a reset.
    last = await _last_statement(database_url, pid)
    assert last == "SELECT pg_backend_pid() /* probe */", last
    assert not last.startswith(DEFAULT_RESET)


async def test_a_transaction_left_open_is_rolled_back_before_the_next_user(
    store: Store,
) -> None:
    async def leave_a_failed_transaction(conn: asyncpg.Connection) -> None:
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1 / 0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await store.run("fails", leave_a_failed_transaction)

    async def state(conn: asyncpg.Connection) -> tuple[bool, int]:
        # In the failed transaction still, any statement would be refused.
        return conn.is_in_transaction(), await conn.fetchval("SELECT 1")

    assert await store.run("next", state) == (False, 1)


async def test_a_statement_whose_cancel_is_lost_is_ended_by_the_server(
    database_url: str,
) -> None:
    """The relay gives up on a statement after ``query_timeout_s``; the server ends it by
    itself shortly after, even when asyncpg's cancel request never arrives (PostgreSQL
    drops one that comes before the statement has started). Before, the backend went on
    waiting for the lock for as long as it was held, and then ran the statement."""
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", BLOCKING_LOCK_ID)
        metrics = MetricsRegistry(process_metrics=False)
        async with (
            cancel_requests_lost(database_url) as proxied,
            migrated_store(
                proxied, metrics, pool_min_size=1, pool_max_size=1, query_timeout_s=0.3, retries=0
            ) as store,
        ):

            async def wait_for_the_lock(conn: asyncpg.Connection) -> None:
                await conn.execute("SELECT pg_advisory_lock($1)", BLOCKING_LOCK_ID)

            with pytest.raises(DatabaseUnavailable):
                await store.run("blocked", wait_for_the_lock)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while await blocker.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                assert loop.time() < deadline, "the backend still waits for the lock"
                await asyncio.sleep(0.05)  # polling for a condition, with a deadline
    finally:
        await blocker.close()
