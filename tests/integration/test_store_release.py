"""Returning a connection to the store's pool costs no round trip, and still leaves the
next user a clean connection (relay.db.store.keep_session), on a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.db import Store
from relay.observability.metrics import MetricsRegistry
from tests.integration.cluster_helpers import sql
from tests.integration.relay_harness import migrated_store

# asyncpg's default reset on release (Connection.get_reset_query) starts with this.
DEFAULT_RESET = "SELECT pg_advisory_unlock_all()"


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
