"""Versioned schema migrations: ``migrations/NNN_name.sql`` applied in order, once.

Applied versions are recorded in ``schema_migrations``. A transaction-scoped advisory
lock serialises concurrent starts (two instances, or ``relay db migrate`` beside ``serve``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger("relay.db")

# An arbitrary constant shared by every relay process: "the migration lock".
MIGRATION_LOCK_ID = 0x7E1A_0001
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# The oldest PostgreSQL the relay runs on: relay.db.landed asks pg_xact_status whether a
# write whose reply was lost committed, and pg_current_xact_id; both came in 13.
MIN_SERVER_MAJOR = 13
# How long past the deadline the client waits for a server that does not answer at all;
# the server's own lock_timeout and statement_timeout end every wait before (migrate()).
CLIENT_GRACE_S = 2.0


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    out = []
    for entry in resources.files("relay.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            out.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: m.version)


def _warn_of_newer(done: set[int], known: list[Migration]) -> None:
    """A schema a newer relay migrated: this one runs on it (every migration so far only
    adds: docs/operations.md, "Upgrades and rollback"), but the operator should know that
    this relay is the older one (a rollback, or one instance left behind)."""
    newest = max((m.version for m in known), default=0)
    newer = sorted(v for v in done if v > newest)
    if newer:
        log.warning(
            "the database has migrations this relay does not know (%s, beyond its %03d):"
            " a newer relay migrated it; this older one runs on it as long as those"
            " migrations only added to the schema",
            ", ".join(f"{v:03d}" for v in newer),
            newest,
        )


class UnsupportedServer(Exception):
    """The database server is older than ``MIN_SERVER_MAJOR``: no retry fixes it."""


def check_server_version(conn: asyncpg.Connection) -> None:
    """Raise ``UnsupportedServer`` naming the server's version when it is too old (asyncpg
    has the version from the connection's start-up: no query)."""
    version = conn.get_server_version()
    if version.major < MIN_SERVER_MAJOR:
        raise UnsupportedServer(
            f"PostgreSQL {version.major}.{version.minor} is older than {MIN_SERVER_MAJOR},"
            " the oldest the relay runs on (docs/deploy.md)"
        )


class MigrationTimeout(TimeoutError):
    """The migrations did not finish within ``database.migration_timeout_s`` (a lock held
    elsewhere, or a slow statement); nothing of them was committed."""


async def migrate(conn: asyncpg.Connection, *, timeout_s: float) -> list[Migration]:
    """Apply pending migrations within ``timeout_s``; return the ones applied now.

    The server bounds every wait itself: before each statement the transaction's
    ``lock_timeout`` and ``statement_timeout`` are set to the time left, so a lock held
    elsewhere or a slow rewrite ends on the server with an error and the transaction rolls
    back cleanly. A client-side timeout alone is not enough: asyncpg then sends a cancel
    request, which PostgreSQL drops when it arrives before the statement has started (a
    loaded server), and the backend went on waiting for the lock after the relay had given
    up (CI saw it). The client-side timeout stays as the backstop for a server that does
    not answer at all (``CLIENT_GRACE_S`` later). The pool's ``command_timeout``, the
    per-query limit, is meant for candidates' queries, not for a lock wait or a rewrite.
    """
    check_server_version(conn)
    applied_now: list[Migration] = []
    # Reading the package's SQL files is file I/O: keep it off the event loop.
    migrations = await asyncio.to_thread(available_migrations)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def left() -> float:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise MigrationTimeout(f"migrations took over {timeout_s:g} s")
        return remaining

    async def bounded(sql: str, *args: object) -> None:
        remaining = left()
        # set_config(..., true) is SET LOCAL: it ends with the transaction. Whole
        # milliseconds, at least 1 (0 would mean "no limit").
        limit = f"{max(1, int(remaining * 1000))}ms"
        await conn.execute(
            "SELECT set_config('lock_timeout', $1, true),"
            " set_config('statement_timeout', $1, true)",
            limit,
            timeout=remaining + CLIENT_GRACE_S,
        )
        await conn.execute(sql, *args, timeout=remaining + CLIENT_GRACE_S)

    try:
        async with conn.transaction():
            await bounded("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            await bounded(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    INTEGER PRIMARY KEY,
                       name       TEXT NOT NULL,
                       applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch(
                "SELECT version FROM schema_migrations", timeout=left() + CLIENT_GRACE_S
            )
            done = {r["version"] for r in rows}
            _warn_of_newer(done, migrations)
            for migration in migrations:
                if migration.version in done:
                    continue
                await bounded(migration.sql)
                await bounded(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                log.info("applied migration %03d_%s", migration.version, migration.name)
                applied_now.append(migration)
    except MigrationTimeout:
        raise
    except (
        TimeoutError,
        # The server's own limits (see the docstring): lock_timeout, statement_timeout.
        asyncpg.LockNotAvailableError,
        asyncpg.QueryCanceledError,
    ) as exc:
        raise MigrationTimeout(f"migrations took over {timeout_s:g} s") from exc
    return applied_now
