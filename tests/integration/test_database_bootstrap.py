"""Start-up's database steps against a real PostgreSQL: the migrations' own time limit, a
bounded number of attempts, and the reason in /readyz and the log when they give up."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.admission.users import UserRows
from relay.db.migrate import MIGRATION_LOCK_ID, MigrationTimeout, migrate
from relay.observability.metrics import MetricsRegistry
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness, migrated_store
from tests.support.lost_cancels import cancel_requests_lost
from tests.support.postgres import PostgresServer
from tests.support.silent_database import silent_database

# Bounds the polling below; the bootstraps under test end within a few seconds.
DEADLINE_S = 30.0


async def _readiness(relay: RelayHarness) -> tuple[int, dict[str, Any]]:
    async with relay.client.get("/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def _liveness(relay: RelayHarness) -> tuple[int, dict[str, Any]]:
    async with relay.client.get("/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def _startup_failed_gauge(relay: RelayHarness) -> float:
    """``relay_startup_failed`` as Prometheus scrapes it (what RelayStartupFailed reads)."""
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with relay.client.get("/metrics", headers=headers) as resp:
        assert resp.status == 200
        text = await resp.text()
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "relay_startup_failed"
    ]
    (sample,) = family.samples
    return float(sample.value)


async def _until_startup_failed(relay: RelayHarness) -> dict[str, Any]:
    """Poll /readyz until it reports a start-up failure (with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        status, body = await _readiness(relay)
        assert status == 503, body
        if "startup" in body["checks"]:
            return body
        assert loop.time() < deadline, body
        await asyncio.sleep(0.05)  # polling for a condition, with a deadline


async def _waiting_for_migration_lock(conn: asyncpg.Connection) -> datetime:
    """When the backend waiting for the migration lock started its statement."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        started: datetime | None = await conn.fetchval(
            """SELECT a.query_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE l.locktype = 'advisory' AND NOT l.granted"""
        )
        if started is not None:
            return started
        assert loop.time() < deadline, "no backend ever waited for the migration lock"
        await asyncio.sleep(0.02)  # polling for a condition, with a deadline


async def test_a_migration_blocked_by_a_lock_times_out_and_readyz_says_why(
    make_relay: MakeRelay, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Another connection holds the migration lock (another instance migrating, or stuck).
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        relay = await make_relay(
            overrides={"database": {"migration_timeout_s": 0.3, "bootstrap_attempts": 2}}
        )
        ready = await _until_startup_failed(relay)
        assert ready["checks"]["startup"] == {
            "ok": False,
            "error": "database_bootstrap: migrate: timeout (gave up after 2 attempts)",
        }
        assert ready["checks"]["database"] == {
            "ok": False,
            "error": "migrations_pending",
            "bootstrap": {"attempts": 2, "max_attempts": 2, "last_error": "migrate: timeout"},
        }
        assert ready["error"]["retryable"] is False
        # The timed-out statements were cancelled on the server: nobody waits for the lock.
        waiting = await blocker.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        assert waiting == 0
    finally:
        await blocker.close()
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "attempt 1/2 failed at migrate" in m and "migration_timeout_s = 0.3" in m for m in retries
    ), retries
    assert any(
        r.levelno == logging.ERROR
        and "database-bootstrap" in r.getMessage()
        and r.exc_info is not None
        and "gave up after 2 attempts" in str(r.exc_info[1])
        for r in caplog.records
    )


async def test_a_migration_lock_wait_ends_on_the_server_when_the_cancel_is_lost(
    database_url: str,
) -> None:
    """The lock wait is bounded by the server's own lock_timeout: the relay does not rely
    on a cancel request, which PostgreSQL drops when it comes before the statement starts
    (CI saw a backend go on waiting for the lock after the relay had given up)."""
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        async with cancel_requests_lost(database_url) as proxied:
            conn = await asyncpg.connect(proxied)
            try:
                async with asyncio.timeout(10):
                    with pytest.raises(MigrationTimeout):
                        await migrate(conn, timeout_s=0.3)
                # The connection is usable: the transaction rolled back on the server.
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                # Not close(): after a lost cancel it would wait for that cancel for ever.
                conn.terminate()
        waiting = await blocker.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        assert waiting == 0
    finally:
        await blocker.close()


async def test_migrations_are_not_cut_by_the_query_timeout(
    make_relay: MakeRelay, database_url: str
) -> None:
    query_timeout_s = 0.3
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        relay = await make_relay(
            overrides={
                "database": {"query_timeout_s": query_timeout_s, "migration_timeout_s": 30.0}
            }
        )
        first_wait = await _waiting_for_migration_lock(blocker)
        # The fault under test: the lock is held for longer than a query may take.
        await asyncio.sleep(3 * query_timeout_s)
        # Still the same statement waiting: it was neither cancelled nor retried.
        assert await _waiting_for_migration_lock(blocker) == first_wait
        await blocker.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        async with asyncio.timeout(DEADLINE_S):
            await relay.services.store.wait_schema_ready()
    finally:
        await blocker.close()
    startup = relay.services.startup
    assert (startup.database_attempts, startup.database_last_error) == (1, None)
    status, body = await _readiness(relay)
    assert status == 200, body


async def test_a_database_that_stays_down_is_retried_a_bounded_number_of_times(
    make_relay: MakeRelay, private_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    await private_postgres.astop()
    relay = await make_relay(
        dsn=private_postgres.dsn(), overrides={"database": {"bootstrap_attempts": 3}}
    )
    ready = await _until_startup_failed(relay)
    error = ready["checks"]["startup"]["error"]
    assert error.startswith("database_bootstrap: migrate: ") and error.endswith(
        "(gave up after 3 attempts)"
    ), error
    bootstrap = ready["checks"]["database"]["bootstrap"]
    assert (bootstrap["attempts"], bootstrap["max_attempts"]) == (3, 3)
    assert bootstrap["last_error"].startswith("migrate: ")
    assert ready["error"]["retryable"] is False
    retries = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "database bootstrap attempt" in r.getMessage()
    ]
    assert [m.split(" failed")[0] for m in retries] == [
        "database bootstrap attempt 1/3",
        "database bootstrap attempt 2/3",
    ]
    # Never ready again without a restart: liveness fails, so an orchestrator restarts it.
    status, alive = await _liveness(relay)
    assert status == 503, alive
    assert alive["error"]["code"] == "startup_failed" and alive["error"]["retryable"] is False
    assert "gave up after 3 attempts" in alive["error"]["message"], alive
    assert alive["request_id"]
    # And Prometheus sees it as a state, not as a one-off count a restart resets.
    assert await _startup_failed_gauge(relay) == 1


async def test_a_relay_still_retrying_its_bootstrap_stays_alive(
    make_relay: MakeRelay, private_postgres: PostgresServer
) -> None:
    """Liveness fails only once start-up gave up: while the bootstrap retries a database
    that is down, a restart would only start the count again."""
    await private_postgres.astop()
    relay = await make_relay(
        dsn=private_postgres.dsn(), overrides={"database": {"bootstrap_attempts": 1000}}
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        status, ready = await _readiness(relay)
        assert status == 503 and "startup" not in ready["checks"], ready
        if ready["checks"]["database"].get("bootstrap", {}).get("attempts", 0) >= 2:
            break
        assert loop.time() < deadline, ready
        await asyncio.sleep(0.05)  # polling for a condition, with a deadline
    status, alive = await _liveness(relay)
    assert status == 200 and alive["status"] == "ok", alive
    assert await _startup_failed_gauge(relay) == 0  # still retrying: not (yet) failed


async def test_a_database_that_does_not_answer_is_named_so_not_a_migration_lock(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that takes the connection and never answers (PostgreSQL stopped with
    SIGSTOP): the log names the connect timeout, not another instance's migration, and
    /readyz names the failing ping, not pending migrations."""
    async with silent_database() as dsn:
        relay = await make_relay(
            dsn=dsn, overrides={"database": {"connect_timeout_s": 0.3, "bootstrap_attempts": 2}}
        )
        ready = await _until_startup_failed(relay)
    database = ready["checks"]["database"]
    assert database["error"] == "TimeoutError", ready
    assert database["bootstrap"]["last_error"] == "migrate: timeout", ready
    retries = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "database bootstrap attempt" in r.getMessage()
    ]
    assert len(retries) == 1, retries
    assert "the database did not answer within database.connect_timeout_s = 0.3 s" in retries[0]
    assert "migration_timeout_s" not in retries[0], retries


async def test_a_database_with_one_address_in_two_cases_migrates_and_finds_the_oldest(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Users made before migration 012 may hold one address in two cases: it cannot take
    the unique index, so it gets a plain one and says so, and lookups take the oldest."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, timeout_s=30)
        await conn.execute("DROP INDEX users_email_any_case")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 12")
        for email, token in (("ana@example.test", "a" * 64), ("Ana@Example.test", "b" * 64)):
            await conn.execute(
                "INSERT INTO users (email, token_hash, remaining_seconds) VALUES ($1, $2, 9)",
                email,
                token,
            )
        warnings: list[str] = []
        conn.add_log_listener(lambda _c, message: warnings.append(str(message)))
        applied = await migrate(conn, timeout_s=30)
        assert [m.version for m in applied] == [12]
        assert any("1 e-mail addresses have users in more than one case" in w for w in warnings)
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'users_email_any_case'"
        )
        assert "UNIQUE" not in index and "lower(email)" in index
    finally:
        await conn.close()
    async with migrated_store(database_url, MetricsRegistry()) as store:
        users = UserRows(store)
        # Another spelling: the oldest; one of the two spellings: that one.
        found = await users.find_user_by_email("ANA@example.TEST")
        assert found is not None and found.email == "ana@example.test"
        found = await users.find_user_by_email("Ana@Example.test")
        assert found is not None and found.email == "Ana@Example.test"
        # Reissued (the demo user's upsert): that spelling's user, nobody new.
        again = await users.create_user("Ana@Example.test", "c" * 64, 30, replace=True)
        assert again.id == found.id and again.remaining_seconds == 30
        assert await store.run("count", lambda c: c.fetchval("SELECT count(*) FROM users")) == 2


async def test_a_schema_a_newer_relay_migrated_is_run_on_with_a_warning(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A rollback: the database was migrated by a newer relay (a version this one lacks).
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, timeout_s=30.0)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (998, 'from_the_future')"
        )
        with caplog.at_level(logging.WARNING, logger="relay.db"):
            assert await migrate(conn, timeout_s=30.0) == []
    finally:
        await conn.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("does not know (998" in m and "newer relay" in m for m in warnings), warnings
