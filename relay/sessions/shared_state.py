"""Pending sessions shared by every member: created on one, exchanged on any.

A session's row in ``interview_sessions`` is its shared state. Once minted, the row
also holds the longest the interview may last and the upstream secret, sealed
(relay.cluster.sealing). ``/api/webrtc-exchange`` claims the row with one transaction
on whichever member it lands: the user's rows are serialised by an advisory lock, the
row must still be ``pending``, unexpired and the user's, the user must still be active
(a revoked user's pending session is refused), and the user's credit is checked against
the seconds promised to their other running sessions on every member. The member that
claims becomes the row's ``relay_instance`` and terminates the media.

Each claim writes a token of its own into the row (``claim_token``), generated before
its first attempt: a retry of a claim whose commit landed but whose reply was lost
finds its own token and carries on, instead of answering 409 for a session it now
holds. The token also makes the claim's undoing conditional: a member closes a claimed
row only while it holds that very claim (``SessionRows.finish_session``). Superseding (a
reloaded page, relay.sessions.service) is the other conditional update on the row: it
closes the row only while it is still pending, so of a supersede and a claim racing on
two members exactly one wins, in the row. The orchestration, with its re-checks of the
local state after every await, is ``SessionService.claim``.

Why PostgreSQL and not Redis for this: the row is written at creation anyway, the claim
must be single-use and durable, and a conditional UPDATE is exactly that; a second copy
in Redis would be a second source of truth to reconcile (and a Redis dump would carry
the sealed secret for nothing).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relay.admission.invites import OPEN_STATUSES, USED_SECONDS_SQL
from relay.cluster.bus import publish
from relay.cluster.sealing import Sealer
from relay.config import LimitsConfig, Settings
from relay.db import DatabaseUnavailable, Store
from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry
from relay.sealing import SealError
from relay.sessions.registry import SessionEntry, credit_refused, superseded_error
from relay.tasks import TaskGroup
from relay.upstream.base import (
    MintedSession,
    SessionOverrides,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger("relay.sessions")

# Advisory lock namespace for "one user's session rows" (first key of the two-int form).
USER_LOCK_NAMESPACE = 0x7E1A_0002


@dataclass(frozen=True)
class Claimed:
    """What a landed claim read from the row."""

    max_duration_s: float
    credit_s: float
    # The member that created the session (None when a retry found its own claim: the
    # row names this member by then).
    created_by: str | None
    request_id: str
    expires_at: datetime
    sealed: bytes | None
    token_hash: str
    # The interview it belongs to, whether it is recorded, and its interviewer (for a
    # re-mint on a member that cannot open the sealed secret).
    interview_id: str | None = None
    recording: bool = True
    overrides: SessionOverrides | None = None


def new_claim_token() -> str:
    return secrets.token_hex(16)


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


async def claim_row(
    store: Store,
    session_id: str,
    user_id: int,
    *,
    instance: str,
    token: str,
    limits: LimitsConfig,
    interview_id: str | None = None,
) -> Claimed:
    """Claim the row for this member with ``token``: one transaction, retried by the store.

    Raises ApiError 403/404/409/410 when the row refuses (the transaction changed
    nothing), DatabaseUnavailable when no attempt answered (one may have landed).
    ``interview_id``: the claimer's interview (an invite's); a session is claimed only
    with the credential kind it was created with. An interview's session needs the
    interview still open, and spends its budget instead of the user's seconds.
    """

    async def op(conn: asyncpg.Connection) -> Claimed | ApiError:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", USER_LOCK_NAMESPACE, user_id & 0x7FFFFFFF
            )
            row = await conn.fetchrow(
                f"""SELECT s.state, s.end_reason, s.expires_at, s.max_duration_s, s.minted_sealed,
                          s.relay_instance, s.request_id, s.claim_token,
                          s.expires_at < now() AS expired,
                          u.active, u.remaining_seconds, u.token_hash,
                          s.interview_id, i.status AS interview_status,
                          i.expires_at < now() AS interview_expired, i.recording,
                          i.instructions, i.voice, i.language,
                          i.max_duration_s - {USED_SECONDS_SQL} AS interview_left_s
                   FROM interview_sessions s JOIN users u ON u.id = s.user_id
                        LEFT JOIN interviews i ON i.id = s.interview_id
                   WHERE s.id = $1 AND s.user_id = $2
                     AND s.interview_id IS NOT DISTINCT FROM $3
                   FOR UPDATE OF s""",
                session_id,
                user_id,
                interview_id,
            )
            if row is None:
                return ApiError(404, "session_not_found", "No such session for this user.")
            if row["state"] == "connecting" and row["claim_token"] == token:
                # An earlier attempt of this very claim committed and its reply was lost.
                # (A revocation since then reaches this member as for any claimed session.)
                return _claimed(row, float(row["max_duration_s"]), created_by=None)
            if not row["active"]:
                return ApiError(403, "user_inactive", "This account is not active.")
            if row["interview_id"] is not None and (
                row["interview_status"] not in OPEN_STATUSES or row["interview_expired"]
            ):
                status = "expired" if row["interview_expired"] else row["interview_status"]
                return ApiError(
                    403,
                    "interview_closed",
                    f"This interview is {status}; its link no longer starts a session.",
                    details={"interview_status": status},
                )
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
            # Seconds promised to the running sessions spending the same credit on every
            # member: this interview's, or this user's own.
            if row["interview_id"] is not None:
                promised = await conn.fetchval(
                    """SELECT COALESCE(SUM(max_duration_s), 0) FROM interview_sessions
                       WHERE interview_id = $1 AND id <> $2
                         AND state IN ('connecting', 'active')""",
                    row["interview_id"],
                    session_id,
                )
                credit = float(row["interview_left_s"])
            else:
                promised = await conn.fetchval(
                    """SELECT COALESCE(SUM(max_duration_s), 0) FROM interview_sessions
                       WHERE user_id = $1 AND id <> $2 AND interview_id IS NULL
                         AND state IN ('connecting', 'active')""",
                    user_id,
                    session_id,
                )
                credit = float(row["remaining_seconds"])
            available = credit - float(promised)
            if available < limits.min_remaining_seconds:
                return credit_refused(credit, limits)
            max_duration = min(float(row["max_duration_s"]), available)
            await conn.execute(
                """UPDATE interview_sessions
                   SET state = 'connecting', relay_instance = $2, max_duration_s = $3,
                       claim_token = $4
                   WHERE id = $1 AND state = 'pending'""",
                session_id,
                instance,
                max_duration,
                token,
            )
            return _claimed(row, max_duration, created_by=row["relay_instance"])

    result = await store.run("claim_session", op)
    if isinstance(result, ApiError):
        raise result
    return result


def _claimed(row: asyncpg.Record, max_duration_s: float, *, created_by: str | None) -> Claimed:
    interview = row["interview_id"] is not None
    return Claimed(
        max_duration_s=max_duration_s,
        credit_s=float(row["interview_left_s"] if interview else row["remaining_seconds"]),
        created_by=created_by,
        request_id=row["request_id"],
        expires_at=row["expires_at"],
        sealed=row["minted_sealed"],
        token_hash=row["token_hash"],
        interview_id=row["interview_id"],
        recording=bool(row["recording"]) if interview else True,
        overrides=SessionOverrides(
            instructions=row["instructions"], voice=row["voice"], language=row["language"]
        )
        if interview
        else None,
    )


class SharedSessions:
    """Publishing pending sessions and the parts of claiming them on any member."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        sealer: Sealer,
        upstream: UpstreamClient,
        instance_id: str,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._sealer = sealer
        self._upstream = upstream
        self._instance_id = instance_id
        self._tasks = TaskGroup("shared-sessions", log=log, metrics=metrics)

    async def close(self) -> None:
        """Stop telling creators of claims still on their way (their heartbeats' reconciliation
        catches what they miss)."""
        await self._tasks.close()

    async def publish(self, entry: SessionEntry) -> None:
        assert entry.minted is not None
        await save_pending(self._store, self._sealer, entry, entry.minted)

    async def claim_row(
        self, session_id: str, user_id: int, token: str, interview_id: str | None = None
    ) -> Claimed:
        return await claim_row(
            self._store,
            session_id,
            user_id,
            instance=self._instance_id,
            token=token,
            limits=self._settings.limits,
            interview_id=interview_id,
        )

    def tell_creator(self, session_id: str) -> None:
        """Tell the member that created an adopted session that it was claimed here, off
        the exchange's path: its heartbeat's reconciliation catches a lost message."""

        async def notify() -> None:
            try:
                message = {"op": "claimed", "session_id": session_id, "by": self._instance_id}
                await publish(self._store, message)
            except DatabaseUnavailable:
                log.warning("session %s: could not tell its creator it was claimed", session_id)

        self._tasks.spawn(notify(), name=f"claimed-{session_id}")

    async def minted(self, session_id: str, claimed: Claimed) -> MintedSession | None:
        """The claimed session's upstream secret: opened from the row, else minted again
        (None when that failed: the exchange answers 409 session_not_ready)."""
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
            return await self._upstream.mint(
                request_id=claimed.request_id, overrides=claimed.overrides
            )
        except (UpstreamTimeout, UpstreamError):
            log.warning("session %s: re-mint failed", session_id)
            return None
