"""The ``users`` table's statements: credentials (token hashes) and credit.

Read by admission on a cache miss, written by ``relay users`` and the demo user; every
statement runs through ``Store.run`` (timeouts, retries). Credit is debited by a
session's finish (relay.sessions.rows), revocation is relay.cluster.revoke (it notifies
every member in the same transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from relay.db import Store


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


class UserRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def find_user_by_token_hash(self, token_hash: str) -> UserRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT id, email, active, remaining_seconds FROM users WHERE token_hash = $1",
                token_hash,
            )

        row = await self._store.run("user_by_token", op)
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

        return _user(await self._store.run("create_user", op))

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

        return await self._store.run("create_users", op)

    async def find_user_by_email(self, email: str) -> UserRecord | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT id, email, active, remaining_seconds FROM users WHERE email = $1", email
            )

        row = await self._store.run("user_by_email", op)
        return _user(row) if row else None


def _user(row: asyncpg.Record) -> UserRecord:
    return UserRecord(
        id=row["id"],
        email=row["email"],
        active=row["active"],
        remaining_seconds=row["remaining_seconds"],
    )
