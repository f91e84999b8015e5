"""The relay's own client secrets: the ``ek_…`` keys of the OpenAI-compatible endpoints.

``POST /v1/realtime/client_secrets`` (a candidate's user token or invite) admits the
candidate and creates a pending session, as ``POST /api/realtime-session`` does; the
answer's ``value`` is a new ``ek_`` key (32 random bytes) for that one session, never the
upstream's secret. The ``realtime_client_secrets`` table (migration 010) keeps its SHA-256
with the session and the SHA-256 of the candidate's credential: ``POST /v1/realtime/calls``
with the key authenticates that credential again (a user revoked since, an interview
closed since, cannot start the call) and exchanges the session's offer once, on any
member. The key opens the call until ``expires_at`` (at most the session's own expiry),
and hangs up its own call while the call lasts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relay.db import Store

CLIENT_SECRET_PREFIX = "ek_"


def new_client_secret() -> str:
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ClientSecretGrant:
    """What a client secret opens: one session, for the candidate credential that asked."""

    session_id: str
    credential_hash: str
    # The credential is an interview's invite (ri_…), not a user token.
    invite: bool
    expires_at: datetime
    expired: bool


class ClientSecretRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def save(
        self,
        secret_hash: str,
        *,
        session_id: str,
        credential_hash: str,
        invite: bool,
        expires_at: datetime,
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """INSERT INTO realtime_client_secrets
                       (secret_hash, session_id, credential_hash, invite, expires_at)
                   VALUES ($1, $2, $3, $4, $5)""",
                secret_hash,
                session_id,
                credential_hash,
                invite,
                expires_at,
            )

        await self._store.run("client_secret_save", op)

    async def find(self, secret_hash: str) -> ClientSecretGrant | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                """SELECT session_id, credential_hash, invite, expires_at,
                          expires_at <= now() AS expired
                   FROM realtime_client_secrets WHERE secret_hash = $1""",
                secret_hash,
            )

        row = await self._store.run("client_secret_find", op)
        if row is None:
            return None
        return ClientSecretGrant(
            session_id=row["session_id"],
            credential_hash=row["credential_hash"],
            invite=row["invite"],
            expires_at=row["expires_at"],
            expired=row["expired"],
        )


async def purge(store: Store) -> int:
    """Delete the secrets of closed sessions past their expiry (their call is over: there
    is nothing left for them to open or hang up); how many."""

    async def op(conn: asyncpg.Connection) -> str:
        status: str = await conn.execute(
            """DELETE FROM realtime_client_secrets c USING interview_sessions s
               WHERE c.session_id = s.id AND c.expires_at < now()
                 AND s.state IN ('ended', 'failed')"""
        )
        return status

    return int((await store.run("client_secret_purge", op)).split()[-1])
