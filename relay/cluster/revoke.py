"""Revoking a user everywhere at once (``relay users revoke``).

One transaction deactivates the user, fails their pending sessions (no member can claim
them any more: the claim also re-checks the user is active) and NOTIFIes every member,
which ends the user's live interviews it holds with reason ``revoked`` and drops the
user from its caches (relay.cluster.runtime). The NOTIFY is sent at commit, so no member
acts on a revocation that did not happen.
"""

from __future__ import annotations

import asyncpg

from relay.cluster.bus import notify
from relay.db import Store


async def revoke_user(store: Store, email: str) -> str | None:
    """Deactivate; return the token hash (to evict caches) or None if no such user."""

    async def op(conn: asyncpg.Connection) -> str | None:
        async with conn.transaction():
            row = await conn.fetchrow(
                """UPDATE users SET active = FALSE, revoked_at = now()
                   WHERE id = (SELECT id FROM users WHERE lower(email) = lower($1)
                               ORDER BY email = $1 DESC, id LIMIT 1)
                   RETURNING id, token_hash""",
                email,
            )
            if row is None:
                return None
            await conn.execute(
                """UPDATE interview_sessions
                   SET state = 'failed', end_reason = 'revoked', ended_at = now(),
                       duration_seconds = 0, debited_seconds = 0
                   WHERE user_id = $1 AND state = 'pending'""",
                row["id"],
            )
            await notify(
                conn, {"op": "revoke_user", "user_id": row["id"], "token_hash": row["token_hash"]}
            )
            token_hash: str = row["token_hash"]
            return token_hash

    return await store.run("revoke_user", op)
