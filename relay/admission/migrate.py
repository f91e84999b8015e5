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


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    out = []
    for entry in resources.files("relay.admission").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            out.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply pending migrations; return the ones applied now."""
    applied_now: list[Migration] = []
    # Reading the package's SQL files is file I/O: keep it off the event loop.
    migrations = await asyncio.to_thread(available_migrations)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            log.info("applied migration %03d_%s", migration.version, migration.name)
            applied_now.append(migration)
    return applied_now
