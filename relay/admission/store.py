"""PostgreSQL access: a warmed asyncpg pool, per-query timeouts, retries with backoff.

Every statement goes through ``_run``: it acquires a pooled connection and runs the
statement with ``database.query_timeout_s``; on a connection error or a timeout it
retries ``database.retries`` times with exponential backoff and full jitter (the
``backoff`` package), then raises ``DatabaseUnavailable`` (the web layer answers 503
with Retry-After). Errors that retrying cannot fix (constraint violations, SQL errors)
propagate at once.

The pool is created empty and warmed in the background (``warm``), so a database that
is down at start-up does not stop the relay from starting; ``/readyz`` says so and
the pool connects as soon as the database is back. A keep-warm task pings idle
connections so that a restarted database is noticed before a candidate's request is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
import backoff

from relay.admission.migrate import migrate
from relay.config import DatabaseConfig
from relay.observability.metrics import FAST_BUCKETS, MetricsRegistry
from relay.observability.request_context import record_stage
from relay.tasks import cancel_and_wait, spawn

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

SessionState = Literal["pending", "connecting", "active", "ended", "failed"]


class DatabaseUnavailable(Exception):
    """The database did not answer after all retries (``code``: database_timeout or
    database_unavailable)."""

    def __init__(self, code: str, attempts: int, cause: BaseException) -> None:
        super().__init__(f"{code} after {attempts} attempts: {type(cause).__name__}")
        self.code = code
        self.attempts = attempts


class UserExists(Exception):
    """``create_user`` without ``replace``: that email (or token) is already taken."""


class UsersExist(Exception):
    """``create_users``: these emails (or their tokens) are already taken; nothing was added."""

    def __init__(self, emails: list[str]) -> None:
        super().__init__(f"{len(emails)} email(s) already taken")
        self.emails = emails


@dataclass(frozen=True)
class UserRecord:
    id: int
    email: str
    active: bool
    remaining_seconds: int

    def to_cache(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "active": self.active,
            "remaining_seconds": self.remaining_seconds,
        }

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> UserRecord:
        return cls(
            id=int(data["id"]),
            email=str(data["email"]),
            active=bool(data["active"]),
            remaining_seconds=int(data["remaining_seconds"]),
        )


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_id: int
    request_id: str
    state: SessionState
    model: str
    dialect: str
    upstream_call_id: str | None
    created_at: datetime
    expires_at: datetime
    connected_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    duration_seconds: float | None
    debited_seconds: int | None

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "session_id": self.id,
            "state": self.state,
            "model": self.model,
            "dialect": self.dialect,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "connected_at": iso(self.connected_at),
            "ended_at": iso(self.ended_at),
            "end_reason": self.end_reason,
            "duration_seconds": self.duration_seconds,
            "debited_seconds": self.debited_seconds,
        }


class Store:
    def __init__(self, dsn: str, config: DatabaseConfig, metrics: MetricsRegistry) -> None:
        self._dsn = dsn
        self._config = config
        self._pool: asyncpg.Pool | None = None
        # Statements need the schema: until migrations ran, they fail fast as unavailable
        # (503 + Retry-After) instead of as SQL errors.
        self._schema_ready = asyncio.Event()
        self._keepalive: asyncio.Task[None] | None = None
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
            buckets=FAST_BUCKETS,
        )
        self._pool_warm = metrics.gauge("relay_db_pool_warm_connections", "Idle warm connections")

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
        )
        self._keepalive = spawn(self._keep_warm(), name="db-keep-warm", log=log)

    async def close(self) -> None:
        keepalive, self._keepalive = self._keepalive, None
        await cancel_and_wait(keepalive)
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
            await asyncio.sleep(self._config.keepalive_interval_s)
            try:
                await self.warm()
            except RETRYABLE_ERRORS as exc:
                self._pool_warm.set(0)
                log.warning("keep-warm: database unreachable (%s)", type(exc).__name__)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Store.open() was not called")
        return self._pool

    # ------------------------------------------------------------------ core
    async def _run(self, query: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
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

    async def run(self, query: str, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``op`` on a pooled connection with this store's timeouts and retries.

        For modules that own their SQL (relay.cluster, relay.sessions.shared_state).
        """
        return await self._run(query, op)

    @property
    def dsn(self) -> str:
        return self._dsn

    # ------------------------------------------------------------------ users
    async def find_user_by_token_hash(self, token_hash: str) -> UserRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT id, email, active, remaining_seconds FROM users WHERE token_hash = $1",
                token_hash,
            )

        row = await self._run("user_by_token", op)
        return _user(row) if row else None

    async def create_user(
        self, email: str, token_hash: str, seconds: int, *, replace: bool = False
    ) -> UserRecord:
        """Insert a user. With ``replace``, an existing user of that email gets this token,
        these seconds and is re-activated instead (the demo user on every start)."""
        conflict = (
            """ON CONFLICT (email) DO UPDATE SET token_hash = EXCLUDED.token_hash,
                   remaining_seconds = EXCLUDED.remaining_seconds, active = TRUE,
                   revoked_at = NULL"""
            if replace
            else "ON CONFLICT DO NOTHING"
        )

        async def op(conn: asyncpg.Connection) -> asyncpg.Record:
            row: asyncpg.Record | None = await conn.fetchrow(
                f"""INSERT INTO users (email, token_hash, remaining_seconds) VALUES ($1, $2, $3)
                    {conflict} RETURNING id, email, active, remaining_seconds""",
                email,
                token_hash,
                seconds,
            )
            if row is not None:
                return row
            # Nothing inserted. A retry whose first attempt committed finds its own row
            # (same email and token hash): that is success, not a duplicate.
            row = await conn.fetchrow(
                """SELECT id, email, active, remaining_seconds FROM users
                   WHERE email = $1 AND token_hash = $2""",
                email,
                token_hash,
            )
            if row is None:
                raise UserExists(email)
            return row

        return _user(await self._run("create_user", op))

    async def create_users(self, users: Sequence[tuple[str, str, int]]) -> int:
        """Insert many users ``(email, token_hash, seconds)`` in one transaction: all or
        none. Returns how many rows are in place; raises ``UsersExist`` (nothing added)
        when any email or token hash is taken by another user."""
        if not users:
            return 0
        emails = [u[0] for u in users]
        hashes = [u[1] for u in users]
        seconds = [u[2] for u in users]

        async def op(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                inserted = await conn.fetch(
                    """INSERT INTO users (email, token_hash, remaining_seconds)
                       SELECT * FROM unnest($1::text[], $2::text[], $3::int[])
                       ON CONFLICT DO NOTHING RETURNING email""",
                    emails,
                    hashes,
                    seconds,
                )
                if len(inserted) == len(users):
                    return len(inserted)
                # A retry whose first attempt committed finds its own rows (same email
                # and token hash): those are success, anything else is taken.
                own = await conn.fetch(
                    """SELECT u.email FROM users u
                       JOIN unnest($1::text[], $2::text[]) AS t(email, token_hash)
                         ON u.email = t.email AND u.token_hash = t.token_hash""",
                    emails,
                    hashes,
                )
                present = {r["email"] for r in inserted} | {r["email"] for r in own}
                taken = [e for e in emails if e not in present]
                if taken:
                    raise UsersExist(taken)  # leaving the block rolls the inserts back
                return len(users)

        return await self._run("create_users", op)

    async def revoke_user(self, email: str) -> str | None:
        """Deactivate a user; return its token hash (to evict caches) or None if unknown."""

        async def op(conn: asyncpg.Connection) -> str | None:
            token_hash: str | None = await conn.fetchval(
                """UPDATE users SET active = FALSE, revoked_at = now() WHERE email = $1
                   RETURNING token_hash""",
                email,
            )
            return token_hash

        return await self._run("revoke_user", op)

    async def find_user_by_email(self, email: str) -> UserRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT id, email, active, remaining_seconds FROM users WHERE email = $1", email
            )

        row = await self._run("user_by_email", op)
        return _user(row) if row else None

    # ------------------------------------------------------------------ sessions
    async def create_session(
        self,
        *,
        session_id: str,
        user_id: int,
        request_id: str,
        model: str,
        dialect: str,
        relay_instance: str,
        expires_at: datetime,
    ) -> None:
        """Insert the session's row; idempotent for the same session id and user.

        The id is generated by the relay before the first attempt, so a retry whose
        first attempt committed (only the reply was lost) finds its own row and succeeds,
        instead of failing on the primary key and leaving that row orphaned.
        """

        async def op(conn: asyncpg.Connection) -> None:
            owner = await conn.fetchval(
                """WITH inserted AS (
                       INSERT INTO interview_sessions
                       (id, user_id, request_id, state, model, dialect, relay_instance,
                        expires_at)
                       VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7)
                       ON CONFLICT (id) DO NOTHING
                       RETURNING user_id)
                   SELECT user_id FROM inserted
                   UNION ALL
                   SELECT user_id FROM interview_sessions WHERE id = $1
                   LIMIT 1""",
                session_id,
                user_id,
                request_id,
                model,
                dialect,
                relay_instance,
                expires_at,
            )
            if owner is None:
                # The conflicting row was committed by an earlier attempt still in flight:
                # ON CONFLICT waited for it, but this statement's snapshot predates it, so
                # the SELECT above cannot see it. A new statement has a new snapshot.
                owner = await conn.fetchval(
                    "SELECT user_id FROM interview_sessions WHERE id = $1", session_id
                )
            if owner is not None and owner != user_id:
                # 128 random bits make this a bug, not a collision: never adopt the row.
                raise RuntimeError(f"session id {session_id} belongs to another user")

        await self._run("create_session", op)

    async def set_session_state(
        self,
        session_id: str,
        state: SessionState,
        *,
        upstream_session_id: str | None = None,
        upstream_call_id: str | None = None,
    ) -> None:
        """Move a live session to pending/connecting/active (``active`` stamps connected_at)."""

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """UPDATE interview_sessions
                   SET state = $2,
                       upstream_session_id = COALESCE($3, upstream_session_id),
                       upstream_call_id = COALESCE($4, upstream_call_id),
                       connected_at = CASE WHEN $2 = 'active' THEN COALESCE(connected_at, now())
                                           ELSE connected_at END
                   WHERE id = $1 AND state NOT IN ('ended', 'failed')""",
                session_id,
                state,
                upstream_session_id,
                upstream_call_id,
            )

        await self._run("set_session_state", op)

    async def finish_session(
        self,
        session_id: str,
        *,
        state: Literal["ended", "failed"],
        end_reason: str,
        duration_seconds: float,
        only_if_pending: bool = False,
        claim_token: str | None = None,
    ) -> int | None:
        """Close the row and debit the user's credit by the whole seconds used, atomically.

        Idempotent: a row already closed is left alone (nothing debited again) and None is
        returned, except when it was closed exactly so (same state, reason, duration and
        debit: in practice an earlier attempt of this very call whose reply was lost after
        its COMMIT went through): then the user's remaining seconds are returned, as that
        attempt would have answered.
        Otherwise returns the user's remaining seconds after the debit.
        ``only_if_pending``: close it only if no member has claimed it
        (relay.sessions.shared_state). ``claim_token``: a claimed row is closed only while
        it holds that claim (a row another claim took is not this finish's to close).
        """
        debit = debit_seconds(duration_seconds)

        async def op(conn: asyncpg.Connection) -> int | None:
            async with conn.transaction():
                user_id = await conn.fetchval(
                    """UPDATE interview_sessions
                       SET state = $2, end_reason = $3, ended_at = now(),
                           duration_seconds = $4, debited_seconds = $5
                       WHERE id = $1 AND (state = 'pending'
                             OR (NOT $6 AND state IN ('connecting', 'active')
                                 AND ($7::text IS NULL OR claim_token = $7)))
                       RETURNING user_id""",
                    session_id,
                    state,
                    end_reason,
                    duration_seconds,
                    debit,
                    only_if_pending,
                    claim_token,
                )
                if user_id is None:
                    # Already closed. By this finish (state, reason and duration match)?
                    same: int | None = await conn.fetchval(
                        """SELECT u.remaining_seconds
                           FROM interview_sessions s JOIN users u ON u.id = s.user_id
                           WHERE s.id = $1 AND s.state = $2 AND s.end_reason = $3
                             AND s.duration_seconds = $4 AND s.debited_seconds = $5""",
                        session_id,
                        state,
                        end_reason,
                        duration_seconds,
                        debit,
                    )
                    return same
                remaining: int = await conn.fetchval(
                    """UPDATE users SET remaining_seconds = GREATEST(0, remaining_seconds - $2)
                       WHERE id = $1 RETURNING remaining_seconds""",
                    user_id,
                    debit,
                )
                return remaining

        return await self._run("finish_session", op)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                """SELECT id, user_id, request_id, state, model, dialect, upstream_call_id,
                          created_at, expires_at, connected_at, ended_at, end_reason,
                          duration_seconds, debited_seconds
                   FROM interview_sessions WHERE id = $1""",
                session_id,
            )

        row = await self._run("get_session", op)
        if row is None:
            return None
        return SessionRecord(**dict(row))

    async def recover_abandoned_sessions(
        self, relay_instance: str, *, started_before: datetime, stale_after_s: float
    ) -> int:
        """Close rows left live by a relay that stopped without draining.

        Two kinds: this instance's rows created before this process started (a crash and
        restart under the same instance id), and anyone's rows live for longer than any
        session can last (an instance that never came back, e.g. a container whose
        hostname changed). Their true duration is unknown, so nothing is debited.
        """

        async def op(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute(
                """UPDATE interview_sessions
                   SET state = 'failed', end_reason = 'relay_restarted', ended_at = now(),
                       debited_seconds = 0
                   WHERE state IN ('pending', 'connecting', 'active')
                     AND ((relay_instance = $1 AND created_at < $2)
                          OR created_at < now() - make_interval(secs => $3))""",
                relay_instance,
                started_before,
                stale_after_s,
            )
            return status

        status = await self._run("recover_sessions", op)
        return int(status.split()[-1])


def debit_seconds(duration_seconds: float) -> int:
    """Whole seconds debited for a session of this length (started seconds count)."""
    return max(0, int(-(-duration_seconds // 1)))  # ceil without float surprises


def _user(row: asyncpg.Record) -> UserRecord:
    return UserRecord(
        id=row["id"],
        email=row["email"],
        active=row["active"],
        remaining_seconds=row["remaining_seconds"],
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
