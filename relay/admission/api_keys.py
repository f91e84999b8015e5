"""API keys for the management API (``Authorization: Bearer rk_…``) and who a request acts as.

A key is shown once, when created (``relay keys create`` or ``POST /api/keys``); the
``api_keys`` table (migration 007) keeps its SHA-256 only, with its name, its scope
(``admin``: everything; ``read``: reading) and when it was last used and revoked. A
revoked key opens nothing, at once: keys are looked up in PostgreSQL on every request
(no cache to outlive a revocation). The operator token is an admin key whose principal
is ``operator``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from relay.db import Store, Within

Scope = Literal["admin", "read"]
# last_used_at is written at most this often per key (a busy key costs no write per call).
LAST_USED_RESOLUTION_S = 60


@dataclass(frozen=True)
class Principal:
    """Who a management request acts as: an API key, or the operator."""

    kind: Literal["operator", "api_key"]
    id: str
    scope: Scope
    name: str = ""

    @classmethod
    def operator(cls) -> Principal:
        return cls(kind="operator", id="operator", scope="admin", name="operator")

    @property
    def key(self) -> str:
        """A stable name for what this principal owns (its idempotency keys)."""
        return self.id if self.kind == "operator" else f"key:{self.id}"

    def allows(self, needed: Scope) -> bool:
        return self.scope == "admin" or needed == "read"


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_by: str


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


_COLUMNS = "id, name, scope, created_at, last_used_at, revoked_at, created_by"


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        name=row["name"],
        scope=row["scope"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        created_by=row["created_by"],
    )


class ApiKeyRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self,
        *,
        key_id: str,
        name: str,
        scope: Scope,
        key_hash: str,
        created_by: str,
        within: Within[ApiKeyRecord] | None = None,
    ) -> ApiKeyRecord:
        """Insert a key, and ``within`` in its transaction (relay.db.within); ``key_id`` is
        chosen before the first attempt, so a retry whose first attempt committed finds
        its own row (and does not call ``within`` again)."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record:
            async with conn.transaction():
                row: asyncpg.Record | None = await conn.fetchrow(
                    f"""INSERT INTO api_keys (id, name, scope, key_hash, created_by)
                        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING
                        RETURNING {_COLUMNS}""",
                    key_id,
                    name,
                    scope,
                    key_hash,
                    created_by,
                )
                if row is None:
                    found = f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1"
                    row = await conn.fetchrow(found, key_id)
                    assert row is not None
                    return row
                if within is not None:
                    await within(conn, _record(row))
                return row

        return _record(await self._store.run("api_key_create", op))

    async def authenticate(self, key_hash: str) -> Principal | None:
        """The principal of a live key with this hash (and its use noted), or None."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                """SELECT id, name, scope,
                          last_used_at IS NULL
                          OR last_used_at < now() - make_interval(secs => $2) AS stale
                   FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL""",
                key_hash,
                LAST_USED_RESOLUTION_S,
            )
            if row is not None and row["stale"]:
                await conn.execute(
                    "UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"]
                )
            return row

        row = await self._store.run("api_key_authenticate", op)
        if row is None:
            return None
        return Principal(kind="api_key", id=row["id"], scope=row["scope"], name=row["name"])

    async def page(
        self, *, limit: int, after: tuple[datetime, str] | None, include_revoked: bool
    ) -> list[ApiKeyRecord]:
        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""SELECT {_COLUMNS} FROM api_keys
                        WHERE ($2 OR revoked_at IS NULL)
                          AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
                        ORDER BY created_at DESC, id DESC LIMIT $1""",
                    limit,
                    include_revoked,
                    after[0] if after else None,
                    after[1] if after else None,
                )
            )

        return [_record(r) for r in await self._store.run("api_key_page", op)]

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)

        row = await self._store.run("api_key_get", op)
        return _record(row) if row is not None else None

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Revoke (a key revoked already keeps its first revocation time); None: no such key."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"""UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
                    WHERE id = $1 RETURNING {_COLUMNS}""",
                key_id,
            )

        row = await self._store.run("api_key_revoke", op)
        return _record(row) if row is not None else None
