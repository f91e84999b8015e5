"""Pending sessions shared by every member: created on one, exchanged on any.

A session's row in ``interview_sessions`` is its shared state. Once minted, the row
also holds the longest the interview may last and the upstream secret, sealed
(relay.cluster.sealing). ``/api/webrtc-exchange`` claims the row with one transaction
on whichever member it lands: the user's rows are serialised by an advisory lock, the
row must still be ``pending``, unexpired and the user's, the user must still be active
(a revoked user's pending session is refused), and the user's credit is checked against
the seconds promised to their other running sessions on every member. The member that
claims becomes the row's ``relay_instance`` and terminates the media.

Why PostgreSQL and not Redis for this: the row is written at creation anyway, the claim
must be single-use and durable, and a conditional UPDATE is exactly that; a second copy
in Redis would be a second source of truth to reconcile (and a Redis dump would carry
the sealed secret for nothing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relay.admission.service import Caller, database_error
from relay.admission.store import DatabaseUnavailable, Store
from relay.cluster.sealing import Sealer, SealError
from relay.config import Settings
from relay.errors import ApiError
from relay.sessions.registry import SessionEntry, SessionRegistry, superseded_error
from relay.upstream.base import MintedSession, UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger("relay.sessions")

# Advisory lock namespace for "one user's session rows" (first key of the two-int form).
USER_LOCK_NAMESPACE = 0x7E1A_0002


@dataclass(frozen=True)
class _Claimed:
    max_duration_s: float
    credit_s: float
    created_by: str
    request_id: str
    expires_at: datetime
    sealed: bytes | None
    token_hash: str


async def save_pending(
    store: Store, sealer: Sealer, entry: SessionEntry, minted: MintedSession
) -> None:
    """Record what another member needs to exchange this session."""
    sealed = sealer.seal(entry.session_id, minted)

    async def op(conn: asyncpg.Connection) -> None:
        await conn.execute(
            """UPDATE interview_sessions
               SET max_duration_s = $2, minted_sealed = $3, minted_expires_at = $4,
                   minted_model = $5, upstream_session_id = $6
               WHERE id = $1""",
            entry.session_id,
            entry.max_duration_s,
            sealed,
            minted.expires_at,
            minted.model,
            minted.upstream_session_id,
        )

    await store.run("save_pending", op)


async def _claim_row(
    store: Store,
    session_id: str,
    user_id: int,
    instance: str,
    min_remaining_s: int,
    retry_after_s: int,
) -> _Claimed:
    async def op(conn: asyncpg.Connection) -> _Claimed | ApiError:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", USER_LOCK_NAMESPACE, user_id & 0x7FFFFFFF
            )
            row = await conn.fetchrow(
                """SELECT s.state, s.end_reason, s.expires_at, s.max_duration_s, s.minted_sealed,
                          s.relay_instance, s.request_id, s.expires_at < now() AS expired,
                          u.active, u.remaining_seconds, u.token_hash
                   FROM interview_sessions s JOIN users u ON u.id = s.user_id
                   WHERE s.id = $1 AND s.user_id = $2
                   FOR UPDATE OF s""",
                session_id,
                user_id,
            )
            if row is None:
                return ApiError(404, "session_not_found", "No such session for this user.")
            if not row["active"]:
                return ApiError(403, "user_inactive", "This account is not active.")
            if row["state"] != "pending":
                if row["end_reason"] == "superseded":  # a reloaded page asked for a newer one
                    return superseded_error()
                if row["state"] == "failed":
                    return ApiError(404, "session_expired", "This session ended; create a new one.")
                return ApiError(409, "session_already_exchanged", "This session was already used.")
            if row["expired"]:
                return ApiError(404, "session_expired", "This session expired; create a new one.")
            if row["max_duration_s"] is None:
                return ApiError(409, "session_not_ready", "This session is not ready for media.")
            # Seconds promised to this user's running sessions on every member.
            promised = await conn.fetchval(
                """SELECT COALESCE(SUM(max_duration_s), 0) FROM interview_sessions
                   WHERE user_id = $1 AND id <> $2 AND state IN ('connecting', 'active')""",
                user_id,
                session_id,
            )
            available = float(row["remaining_seconds"]) - float(promised)
            if available < min_remaining_s:
                return ApiError(
                    403, "no_credit", "No interview time left beyond your running sessions."
                )
            max_duration = min(float(row["max_duration_s"]), available)
            await conn.execute(
                """UPDATE interview_sessions
                   SET state = 'connecting', relay_instance = $2, max_duration_s = $3
                   WHERE id = $1""",
                session_id,
                instance,
                max_duration,
            )
            return _Claimed(
                max_duration_s=max_duration,
                credit_s=float(row["remaining_seconds"]),
                created_by=row["relay_instance"],
                request_id=row["request_id"],
                expires_at=row["expires_at"],
                sealed=row["minted_sealed"],
                token_hash=row["token_hash"],
            )

    try:
        result = await store.run("claim_session", op)
    except DatabaseUnavailable as exc:
        raise database_error(exc, retry_after_s) from exc
    if isinstance(result, ApiError):
        raise result
    return result


class SharedSessions:
    """Publishing pending sessions and claiming them on any member."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        registry: SessionRegistry,
        sealer: Sealer,
        upstream: UpstreamClient,
        instance_id: str,
    ) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._sealer = sealer
        self._upstream = upstream
        self._instance_id = instance_id

    async def publish(self, entry: SessionEntry) -> None:
        assert entry.minted is not None
        await save_pending(self._store, self._sealer, entry, entry.minted)

    async def claim(self, session_id: str, caller: Caller) -> tuple[SessionEntry, bool]:
        """pending → connecting on this member, once across the cluster.

        Returns the local entry and whether it was created elsewhere (adopted here).
        Raises ApiError 403/404/409/503 (and 502/504 if a re-mint was needed and failed).
        """
        user_id = caller.user.id
        local = self._registry.get(session_id)
        if local is not None and local.user_id == user_id and local.state != "pending":
            raise ApiError(409, "session_already_exchanged", "This session was already used.")
        claimed = await _claim_row(
            self._store,
            session_id,
            user_id,
            self._instance_id,
            self._settings.limits.min_remaining_seconds,
            self._settings.database.retry_after_s,
        )
        if local is not None and local.user_id == user_id and local.state == "pending":
            local.max_duration_s = claimed.max_duration_s
            local.state = "connecting"
            self._registry.set_state(session_id, "connecting")
            return local, False
        entry = self._registry.adopt(
            SessionEntry(
                session_id=session_id,
                user_id=user_id,
                token_hash=claimed.token_hash,
                request_id=claimed.request_id,
                max_duration_s=claimed.max_duration_s,
                expires_at=claimed.expires_at,
                credit_s=claimed.credit_s,
                state="connecting",
            )
        )
        entry.minted = await self._minted(session_id, claimed)
        log.info("session %s created on %s, claimed here", session_id, claimed.created_by)
        return entry, True

    async def _minted(self, session_id: str, claimed: _Claimed) -> MintedSession | None:
        if claimed.sealed is not None:
            try:
                return self._sealer.open(session_id, bytes(claimed.sealed))
            except SealError:
                log.warning(
                    "session %s: sealed secret does not open here (another state key?);"
                    " minting again",
                    session_id,
                )
        try:
            return await self._upstream.mint(request_id=claimed.request_id)
        except (UpstreamTimeout, UpstreamError):
            log.warning("session %s: re-mint failed", session_id)
            return None
