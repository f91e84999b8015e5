"""PostgreSQL access: a warmed asyncpg pool, per-query timeouts, retries with backoff.

Every statement goes through ``run(query, op)``: it acquires a pooled connection and runs
``op`` on it within ``database.query_timeout_s``; on a connection error or a timeout it
retries ``database.retries`` times with exponential backoff and full jitter (the
``backoff`` package), then raises ``DatabaseUnavailable`` (the web layer answers 503
with Retry-After). Errors that retrying cannot fix (constraint violations, SQL errors)
propagate at once.

The store knows no table: each domain keeps its own statements beside it and runs them
through ``run`` (users in relay.admission.users, sessions in relay.sessions.rows and
relay.sessions.shared_state, members in relay.cluster.members, recordings in
relay.recording.rows).

The pool is created empty and warmed in the background (``warm``), so a database that
is down at start-up does not stop the relay from starting; ``/readyz`` says so and
the pool connects as soon as the database is back. A keep-warm task pings idle
connections so that a restarted database is noticed before a candidate's request is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import backoff

from relay.config import DatabaseConfig
from relay.db.migrate import migrate
from relay.observability.metrics import DATABASE_BUCKETS, MetricsRegistry
from relay.observability.request_context import record_stage
from relay.tasks import TaskGroup, idle

log = logging.getLogger("relay.db")

T = TypeVar("T")

# Errors a retry can fix: the server is unreachable, restarting, overloaded or slow.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # connection refused / reset (ConnectionError is a subclass)
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,  # incl. ConnectionDoesNotExistError (closed underneath)
    asyncpg.CannotConnectNowError,  # server starting up or shutting down
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,  # statement_timeout on the server side
)


def _lost_in_transaction(exc: asyncpg.InterfaceError) -> BaseException | None:
    """The connection error a transaction's exit hid, if that is what ``exc`` is.

    A connection lost in the middle of ``async with conn.transaction()`` raises the
    statement's connection error; the block's exit then finds the connection closed and
    raises ``InterfaceError`` ("the underlying connection is closed") in its place. The
    transaction did not commit (its COMMIT was never sent): retryable, as the error it hid.
    """
    cause = exc.__context__
    if isinstance(cause, RETRYABLE_ERRORS) and "connection is closed" in str(exc):
        return cause
    return None


class DatabaseUnavailable(Exception):
    """The database did not answer after all retries (``code``: database_timeout or
    database_unavailable)."""

    def __init__(
        self, code: str, attempts: int, cause: BaseException, detail: str | None = None
    ) -> None:
        tries = f"{attempts} attempt" + ("" if attempts == 1 else "s")
        super().__init__(f"{code} after {tries}: {detail or type(cause).__name__}")
        self.code = code
        self.attempts = attempts


def no_answer(config: DatabaseConfig) -> str:
    """What a timeout while connecting means (SIGSTOPped or hung server, dropped packets):
    not a lock or a slow migration."""
    return (
        "the database did not answer within database.connect_timeout_s = "
        f"{config.connect_timeout_s:g} s"
    )


def connection_failure(exc: BaseException, config: DatabaseConfig) -> DatabaseUnavailable:
    """A failed connection (``RETRYABLE_ERRORS``) outside ``run``, as ``DatabaseUnavailable``
    with what went wrong in one line (the management commands print it and exit 3)."""
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailable("database_timeout", 1, exc, no_answer(config))
    return DatabaseUnavailable("database_unavailable", 1, exc, f"{type(exc).__name__}: {exc}")


# How long after the relay's own query timeout the server ends a statement by itself
# (``Store.open``'s ``init``): the client's timeout normally comes first, as before.
SERVER_STATEMENT_GRACE_S = 0.5


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to do.

    asyncpg's default reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release, one more round trip after each statement. The relay leaves
    none of that on a pooled connection: its advisory locks are taken per transaction
    (``pg_advisory_xact_lock``), its LISTENs run on connections of their own, the one
    session variable it sets is the same on every connection (``statement_timeout``, set
    once when the pool opens the connection) and it opens no cursor. asyncpg still does
    its own part before calling this (a transaction left open is rolled back, listeners
    are dropped)."""


class Store:
    def __init__(self, dsn: str, config: DatabaseConfig, metrics: MetricsRegistry) -> None:
        self._dsn = dsn
        self._config = config
        self._pool: asyncpg.Pool | None = None
        # Statements need the schema: until migrations ran, they fail fast as unavailable
        # (503 + Retry-After) instead of as SQL errors.
        self._schema_ready = asyncio.Event()
        self._tasks = TaskGroup("database", log=log, metrics=metrics)
        self._attempts = metrics.counter(
            "relay_db_attempts_total",
            "Database statement attempts by query and outcome",
            ["query", "outcome"],
        )
        self._queries = metrics.counter(
            "relay_db_queries_total", "Database statements started (before retries)", ["query"]
        )
        self._retries = metrics.counter("relay_db_retries_total", "Database retries", ["query"])
        self._latency = metrics.histogram(
            "relay_db_query_duration_seconds",
            "Database statement latency incl. retries, by query name",
            ["query"],
            buckets=DATABASE_BUCKETS,
        )
        self._pool_warm = metrics.gauge("relay_db_pool_warm_connections", "Idle warm connections")
        # /readyz's migrations_pending, for Prometheus: 1 until ``migrate`` has run.
        self._migrations_pending = metrics.gauge(
            "relay_db_migrations_pending",
            "1 until this process has brought the database schema to its version, 0 after",
        )
        self._migrations_pending.set(1)

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Create the pool without connecting (start-up never blocks on the database)."""
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._config.pool_max_size,
            timeout=self._config.connect_timeout_s,
            command_timeout=self._config.query_timeout_s,
            # Warm connections stay warm: the keep-warm task, not idleness, retires them.
            max_inactive_connection_lifetime=0,
            reset=keep_session,
            init=self._bound_statements,
        )
        self._tasks.spawn(self._keep_warm(), name="db-keep-warm")

    async def _bound_statements(self, conn: asyncpg.Connection) -> None:
        """The server ends a statement by itself shortly after the relay's query timeout.

        On a timeout asyncpg sends a cancel request on a connection of its own, and
        PostgreSQL drops one that arrives before the statement has started (a loaded
        server): the statement then went on after the relay had given up and retried, a
        lock wait for as long as the lock was held, an UPDATE applied once more when it
        got the lock. Set per connection rather than in the start-up packet
        (``server_settings``), which a connection pooler in session mode refuses.
        Migrations set their own limits per transaction (relay.db.migrate)."""
        limit_ms = int((self._config.query_timeout_s + SERVER_STATEMENT_GRACE_S) * 1000)
        await conn.execute(
            "SELECT set_config('statement_timeout', $1, false)",
            f"{limit_ms}ms",
            timeout=self._config.connect_timeout_s,
        )

    async def close(self) -> None:
        await self._tasks.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                self._pool.terminate()
            self._pool = None

    async def warm(self) -> int:
        """Open ``pool_min_size`` connections and prove each with SELECT 1; return how many."""
        pool = self._require_pool()
        wanted = self._config.pool_min_size
        conns: list[asyncpg.Connection] = []
        try:
            for _ in range(wanted):
                conn = await pool.acquire(timeout=self._config.connect_timeout_s)
                conns.append(conn)
                await conn.fetchval("SELECT 1", timeout=self._config.query_timeout_s)
        finally:
            for conn in conns:
                await pool.release(conn)
        self._pool_warm.set(len(conns))
        return len(conns)

    async def migrate(self) -> None:
        pool = self._require_pool()
        async with pool.acquire(timeout=self._config.connect_timeout_s) as conn:
            await migrate(conn, timeout_s=self._config.migration_timeout_s)
        self._schema_ready.set()
        self._migrations_pending.set(0)

    @property
    def schema_ready(self) -> bool:
        return self._schema_ready.is_set()

    async def wait_schema_ready(self) -> None:
        await self._schema_ready.wait()

    async def ping(self, timeout_s: float = 1.0) -> None:
        """One SELECT 1 without retries (readiness); raises on failure."""
        pool = self._require_pool()
        async with pool.acquire(timeout=timeout_s) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout_s)

    async def _keep_warm(self) -> None:
        while True:
            await idle(self._config.keepalive_interval_s)
            try:
                await self.warm()
            except RETRYABLE_ERRORS as exc:
                self._pool_warm.set(0)
                log.warning("keep-warm: database unreachable (%s)", type(exc).__name__)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Store.open() was not called")
        return self._pool

    # ------------------------------------------------------------------ statements
    async def run(self, query: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``op`` on a pooled connection with this store's timeouts and retries.

        ``query`` names the statement in the metrics (``relay_db_*{query=...}``). ``op``
        may run more than once (a retry after a lost connection): it must be idempotent,
        or written so that a retry finds what an earlier attempt committed (for an op that
        adds to a value, ``relay.db.landed.landed_once`` asks PostgreSQL).
        """
        pool = self._require_pool()
        config = self._config
        self._queries.inc(query=query)
        if not self.schema_ready:
            raise DatabaseUnavailable(
                "database_unavailable", 0, RuntimeError("schema migrations have not run yet")
            )
        attempts = 0

        def _on_backoff(details: Any) -> None:
            self._retries.inc(query=query)
            log.warning(
                "DATABASE_RETRY %s attempt %d failed (%s); retrying in %.0fms",
                query,
                details["tries"],
                type(details["exception"]).__name__,
                details["wait"] * 1000,
            )

        @backoff.on_exception(
            backoff.expo,
            RETRYABLE_ERRORS,
            max_tries=config.retries + 1,
            base=2,
            factor=config.backoff_base_s,
            max_value=config.backoff_max_s,
            jitter=backoff.full_jitter,
            on_backoff=_on_backoff,
            logger=None,
        )
        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            try:
                async with pool.acquire(timeout=config.connect_timeout_s) as conn:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a
                    # cancellation that arrives as the query completes, and the caller's
                    # task (a heartbeat, a background loop) would not stop when cancelled.
                    async with asyncio.timeout(config.query_timeout_s):
                        result = await op(conn)
            except asyncpg.InterfaceError as exc:
                lost = _lost_in_transaction(exc)
                if lost is None:
                    raise
                self._attempts.inc(query=query, outcome="connection_error")
                raise lost from None
            except RETRYABLE_ERRORS as exc:
                outcome = "timeout" if isinstance(exc, TimeoutError) else "connection_error"
                self._attempts.inc(query=query, outcome=outcome)
                raise
            self._attempts.inc(query=query, outcome="ok")
            return result

        started = time.perf_counter()
        try:
            return await attempt()
        except RETRYABLE_ERRORS as exc:
            code = "database_timeout" if isinstance(exc, TimeoutError) else "database_unavailable"
            raise DatabaseUnavailable(code, attempts, exc) from exc
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._latency.observe(elapsed_ms / 1000, query=query)
            record_stage("db", elapsed_ms)

    @property
    def dsn(self) -> str:
        return self._dsn
