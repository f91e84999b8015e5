"""The ``users`` table's statements: credentials (token hashes) and credit.

Read by admission on a cache miss, written by ``relay users`` and the demo user; every
statement runs through ``Store.run`` (timeouts, retries). Credit is debited by a
session's finish (relay.sessions.rows), revocation is relay.cluster.revoke (it notifies
every member in the same transaction).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from relay.db import Store, Within, landed_once

# Sends a cluster command on a connection, inside its transaction (relay.cluster.bus.notify).
Notify = Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[None]]


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

        async def op(conn: asyncpg.Connection) -> asyncpg.Record:
            row: asyncpg.Record | None = None
            if replace:
                # The user of this address in any case (migration 012), this spelling first:
                # an upsert on the email column would miss another spelling and then fail on
                # the lower(email) index.
                row = await conn.fetchrow(
                    """UPDATE users SET token_hash = $2, remaining_seconds = $3, active = TRUE,
                           revoked_at = NULL
                       WHERE id = (SELECT id FROM users WHERE lower(email) = lower($1)
                                   ORDER BY email = $1 DESC, id LIMIT 1)
                       RETURNING id, email, active, remaining_seconds""",
                    email,
                    token_hash,
                    seconds,
                )
            if row is None:
                # No conflict target: another spelling of the address conflicts too.
                row = await conn.fetchrow(
                    """INSERT INTO users (email, token_hash, remaining_seconds)
                       VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
                       RETURNING id, email, active, remaining_seconds""",
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
                """SELECT id, email, active, remaining_seconds FROM users
                   WHERE lower(email) = lower($1) ORDER BY email = $1 DESC, id LIMIT 1""",
                email,
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


@dataclass(frozen=True)
class UserDetail:
    """A user as the management API shows it (never its token)."""

    id: int
    email: str
    active: bool
    remaining_seconds: int
    created_at: datetime
    revoked_at: datetime | None
    interviews: int
    sessions: int


_DETAIL = """u.id, u.email, u.active, u.remaining_seconds, u.created_at, u.revoked_at,
    (SELECT count(*) FROM interviews i WHERE i.user_id = u.id) AS interviews,
    (SELECT count(*) FROM interview_sessions s WHERE s.user_id = u.id) AS sessions"""


def _detail(row: asyncpg.Record) -> UserDetail:
    return UserDetail(
        id=row["id"],
        email=row["email"],
        active=row["active"],
        remaining_seconds=row["remaining_seconds"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        interviews=int(row["interviews"]),
        sessions=int(row["sessions"]),
    )


@dataclass(frozen=True)
class UserChange:
    """The user after a change, and what the change needs to reach every member: the
    token hash its caches know it by (before a reissue) and whether it was deactivated."""

    user: UserDetail
    old_token_hash: str = field(repr=False)
    deactivated: bool


class UserAdmin:
    """The users resource: list, read, change credit and status, reissue a token.

    A change that ends access (deactivation, a reissued token) runs in one transaction
    with ``notify`` (a cluster command, sent at commit: relay.cluster.bus), so every
    member ends the user's live interviews (deactivation) and forgets the old token.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    async def page(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        email: str | None = None,
        active: bool | None = None,
    ) -> list[UserDetail]:
        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""SELECT {_DETAIL} FROM users u
                        WHERE u.erase_requested_at IS NULL
                          AND ($2::text IS NULL OR lower(u.email) = lower($2))
                          AND ($3::boolean IS NULL OR u.active = $3)
                          AND ($4::timestamptz IS NULL OR (u.created_at, u.id) < ($4, $5))
                        ORDER BY u.created_at DESC, u.id DESC LIMIT $1""",
                    limit,
                    email,
                    active,
                    after[0] if after else None,
                    int(after[1]) if after else None,
                )
            )

        return [_detail(r) for r in await self._store.run("user_page", op)]

    async def get(self, user_id: int) -> UserDetail | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"SELECT {_DETAIL} FROM users u WHERE u.id = $1 AND u.erase_requested_at IS NULL",
                user_id,
            )

        row = await self._store.run("user_get", op)
        return _detail(row) if row is not None else None

    async def get_by_email(self, email: str) -> UserDetail | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"""SELECT {_DETAIL} FROM users u
                    WHERE lower(u.email) = lower($1) AND u.erase_requested_at IS NULL
                    ORDER BY u.email = $1 DESC, u.id LIMIT 1""",
                email,
            )

        row = await self._store.run("user_get_by_email", op)
        return _detail(row) if row is not None else None

    async def update(
        self,
        user_id: int,
        notify: Notify,
        *,
        remaining_seconds: int | None = None,
        add_seconds: int | None = None,
        active: bool | None = None,
        token_hash: str | None = None,
        within: Within[UserChange] | None = None,
    ) -> UserChange | None:
        """Change credit (set, or add to), status and/or the token; None: no such user.
        Applied once: a retry whose earlier attempt committed (its reply lost) answers that
        attempt's result instead of adding ``add_seconds`` again (relay.db.landed).
        ``within`` is given the change in its transaction (relay.db.within)."""

        async def work(conn: asyncpg.Connection) -> UserChange | None:
            before = await conn.fetchrow(
                """SELECT active, token_hash FROM users
                   WHERE id = $1 AND erase_requested_at IS NULL FOR UPDATE""",
                user_id,
            )
            if before is None:
                return None
            await conn.execute(
                """UPDATE users SET
                       -- In bigint: the sum may pass the column's integer range,
                       -- which the cap then brings back (integer arithmetic would
                       -- overflow before it).
                       remaining_seconds = LEAST(2147483647, GREATEST(0,
                           COALESCE($2, remaining_seconds)::bigint
                           + COALESCE($3::bigint, 0))),
                       active = COALESCE($4, active),
                       revoked_at = CASE WHEN $4 IS NULL THEN revoked_at
                                         WHEN $4 THEN NULL
                                         ELSE COALESCE(revoked_at, now()) END,
                       token_hash = COALESCE($5, token_hash)
                   WHERE id = $1""",
                user_id,
                remaining_seconds,
                add_seconds,
                active,
                token_hash,
            )
            deactivated = bool(before["active"]) and active is False
            if deactivated:
                # As `relay users revoke`: pending sessions can no longer be claimed.
                await conn.execute(
                    """UPDATE interview_sessions
                       SET state = 'failed', end_reason = 'revoked', ended_at = now(),
                           duration_seconds = 0, debited_seconds = 0
                       WHERE user_id = $1 AND state = 'pending'""",
                    user_id,
                )
                await notify(
                    conn,
                    {
                        "op": "revoke_user",
                        "user_id": user_id,
                        "token_hash": before["token_hash"],
                    },
                )
            row = await conn.fetchrow(f"SELECT {_DETAIL} FROM users u WHERE u.id = $1", user_id)
            assert row is not None
            change = UserChange(_detail(row), before["token_hash"], deactivated)
            if within is not None:
                await within(conn, change)
            return change

        return await self._store.run("user_update", landed_once(work))
