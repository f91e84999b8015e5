"""Creating and finishing interview sessions: the orchestration above admission.

``create`` runs the policy, reserves a slot, writes the ``interview_sessions`` row and
mints the upstream session; every failure on the way leaves nothing half-open (the
slot is released and the row, if written, is closed as failed with the reason).
``finish`` is the single exit for every session, whoever ends it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NoReturn

from relay.admission.service import Admission, Caller, database_error
from relay.admission.store import DatabaseUnavailable, Store, debit_seconds
from relay.config import Settings, model_for
from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry
from relay.observability.request_context import bind_session, current_request_id, record_stage
from relay.sessions.registry import SessionEntry, SessionRegistry, superseded_error
from relay.tasks import spawn
from relay.upstream.base import UpstreamClient, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from relay.cluster.limits import SharedLimits
    from relay.sessions.shared_state import SharedSessions

log = logging.getLogger("relay.sessions")


def upstream_api_error(exc: UpstreamTimeout | UpstreamError) -> ApiError:
    if isinstance(exc, UpstreamTimeout):
        return ApiError(
            504,
            "upstream_timeout",
            f"The realtime service did not answer in time ({exc.stage}).",
            retryable=True,
            details={"stage": exc.stage},
        )
    retryable = exc.status is None or exc.status == 429 or exc.status >= 500
    # The upstream's own message stays in our logs: it can describe the operator's
    # account (quota, organisation, model access), which is not the candidate's business.
    return ApiError(
        502,
        "upstream_error",
        f"The realtime service refused the request ({exc.stage}).",
        retryable=retryable,
        details={"stage": exc.stage, "upstream_status": exc.status, "upstream_code": exc.code},
    )


RECENTLY_ENDED_MAX = 50
# Superseded session ids remembered (for pending_ttl_s) so that a late exchange of one
# gets 410 without a database read; bounded, oldest forgotten first.
SUPERSEDED_REMEMBERED_MAX = 1024


@dataclass(frozen=True)
class EndedSession:
    session_id: str
    email: str = field(repr=False)
    state: str
    reason: str
    duration_s: float
    ended_at: float  # unix seconds


def ended_while_creating_error(reason: str, drain_retry_after_s: int) -> ApiError:
    """What a create reports when its session was ended before the create returned."""
    if reason == "superseded":
        return superseded_error()
    if reason == "expired":
        return ApiError(404, "session_expired", "This session expired; create a new one.")
    if reason in ("hangup", "operator_hangup"):
        return ApiError(409, "session_closed", "This session was ended before it started.")
    # Shut-down (finish_all) and anything else the relay itself ended it for.
    return ApiError(
        503,
        "draining",
        "This relay is shutting down; try again.",
        retryable=True,
        retry_after_s=drain_retry_after_s,
    )


@dataclass(frozen=True)
class _Finish:
    session_id: str
    state: Literal["ended", "failed"]
    reason: str
    duration_s: float
    user_id: int
    token_hash: str = field(repr=False)
    # Never claimed here: close the row only if nobody claimed it elsewhere meanwhile.
    only_if_pending: bool = False


def _finish_record(
    entry: SessionEntry,
    state: str,
    reason: str,
    duration_s: float,
    *,
    only_if_pending: bool = False,
) -> _Finish:
    return _Finish(
        session_id=entry.session_id,
        state="ended" if state == "ended" else "failed",
        reason=reason,
        duration_s=duration_s,
        user_id=entry.user_id,
        token_hash=entry.token_hash,
        only_if_pending=only_if_pending,
    )


class SessionService:
    def __init__(
        self,
        settings: Settings,
        *,
        admission: Admission,
        store: Store,
        registry: SessionRegistry,
        upstream: UpstreamClient,
        metrics: MetricsRegistry,
        instance_id: str,
        is_draining: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._admission = admission
        self._store = store
        self._registry = registry
        self._upstream = upstream
        self._instance_id = instance_id
        self._is_draining = is_draining
        self._ended = metrics.counter(
            "relay_sessions_ended_total",
            "Sessions ended, by final state and reason",
            ["state", "reason"],
        )
        self._finish_failures = metrics.counter(
            "relay_sessions_finish_write_failures_total",
            "Session rows that could not be closed at once (database unavailable)",
        )
        # The most recent ends, newest last, for the operator dashboard (bounded).
        self.recently_ended: deque[EndedSession] = deque(maxlen=RECENTLY_ENDED_MAX)
        # Finishes the database refused; housekeeping retries them until they land, so
        # credit is always debited eventually.
        self._unwritten: dict[str, _Finish] = {}
        # Set by relay.app: pending sessions shared with other members, cluster limits.
        self.shared: SharedSessions | None = None
        self.limits: SharedLimits | None = None
        # session id → (user id, monotonic time to forget it): see SUPERSEDED_REMEMBERED_MAX.
        self._superseded: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def refuse_if_draining(self) -> None:
        if self._is_draining():
            raise ApiError(
                503,
                "draining",
                "This relay is shutting down; try again.",
                retryable=True,
                retry_after_s=self._settings.server.drain_retry_after_s,
            )

    async def create(self, caller: Caller) -> SessionEntry:
        self.refuse_if_draining()
        self._admission.check_policy(caller)
        settings = self._settings
        # Seconds promised to this user's other live sessions are not available again.
        available = caller.user.remaining_seconds - self._registry.reserved_seconds(caller.user.id)
        if available < settings.limits.min_remaining_seconds:
            raise ApiError(403, "no_credit", "No interview time left beyond your running sessions.")
        # A reloaded page: its earlier, never-exchanged session gives way to this one.
        # Their rows are closed off this request's path: queued as unwritten finishes
        # before any await (so housekeeping lands them even if this request is cancelled
        # or the write fails), written at once by an owned task.
        superseded = self._registry.supersede_pending(caller.user.id)
        for old in superseded:
            self._close_soon(old, state="ended", reason="superseded", duration_s=0.0)
        if superseded:
            ids = [old.session_id for old in superseded]
            spawn(self._write_queued(ids), name="close-superseded", log=log)
        try:
            entry = self._registry.reserve(
                user_id=caller.user.id,
                token_hash=caller.token_hash,
                request_id=current_request_id(),
                max_duration_s=min(settings.session.max_duration_s, available),
                credit_s=caller.user.remaining_seconds,
                pending_ttl_s=settings.session.pending_ttl_s,
                email=caller.user.email,
            )
        except ApiError:
            raise  # cannot happen when superseding made room; their closes are queued
        bind_session(entry.session_id)
        try:
            for old in superseded:
                log.info("session %s superseded by %s", old.session_id, entry.session_id)
                # Their shared leases go first, so the cluster's per-user cap counts this
                # session instead of them (a lease left by a cancel expires on its own).
                if self.limits is not None:
                    await self.limits.release_session(old.session_id, old.user_id)
            await self._check_shared_limits(entry)
        except BaseException:
            self._registry.release(entry.session_id)
            raise
        try:
            await self._store.create_session(
                session_id=entry.session_id,
                user_id=caller.user.id,
                request_id=entry.request_id,
                model=model_for(settings.upstream),
                dialect=settings.upstream.dialect,
                relay_instance=self._instance_id,
                expires_at=entry.expires_at,
            )
        except DatabaseUnavailable as exc:
            await self._release(entry)
            raise database_error(exc, settings.database.retry_after_s) from exc
        except BaseException:
            await self._release(entry)
            raise

        if self._registry.get(entry.session_id) is not entry:
            await self._abandon_ended(entry)  # while its row was written: do not mint
        # The upstream client logs the OPENAI_SESSION_* stage lines itself.
        started = time.perf_counter()
        try:
            entry.minted = await self._upstream.mint(request_id=entry.request_id)
        except (UpstreamTimeout, UpstreamError) as exc:
            reason = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
            await self.finish(entry, state="failed", reason=reason, duration_s=0.0)
            raise upstream_api_error(exc) from exc
        except BaseException:
            await self.finish(entry, state="failed", reason="internal_error", duration_s=0.0)
            raise
        finally:
            record_stage("upstream", (time.perf_counter() - started) * 1000)
        if self._registry.get(entry.session_id) is not entry:
            # Ended while its secret was being minted (hung up by the operator, expired,
            # shut down): nobody will use that secret (it expires unused upstream).
            entry.minted = None
            await self._abandon_ended(entry)
        if self.shared is not None:
            try:
                await self.shared.publish(entry)
            except DatabaseUnavailable as exc:
                await self.finish(entry, state="failed", reason=exc.code, duration_s=0.0)
                raise database_error(exc, settings.database.retry_after_s) from exc
        return entry

    async def _abandon_ended(self, entry: SessionEntry) -> NoReturn:
        """Report a session that was ended while this request was still creating it."""
        reason = entry.end_reason or "superseded"
        state = "failed" if entry.state == "failed" else "ended"
        # Its row may have been inserted after the end closed it (the UPDATE found
        # nothing then): close it again, with the same reason; finish_session leaves a
        # closed row alone.
        await self._write(_finish_record(entry, state, reason, 0.0))
        if self.limits is not None:
            await self.limits.release_session(entry.session_id, entry.user_id)
        raise ended_while_creating_error(reason, self._settings.server.drain_retry_after_s)

    async def claim(self, session_id: str, caller: Caller) -> tuple[SessionEntry, bool]:
        """The exchange's claim (pending → connecting), once across the cluster: the local
        entry and whether it was created on another member (adopted here).

        A session this instance superseded answers 410 from memory first: its row is
        closed off the request's path, so the database may still say pending.
        """
        if self._was_superseded(session_id, caller.user.id):
            raise superseded_error()
        if self.shared is None:  # a service without the cluster parts: this process only
            return self._registry.claim_for_exchange(session_id, caller.user.id), False
        return await self.shared.claim(session_id, caller)

    def _was_superseded(self, session_id: str, user_id: int) -> bool:
        """From memory only: an unknown id costs no database read (and no retries in an
        outage). Sessions are superseded by the instance that holds them, so its memory
        knows them all for as long as they could have been exchanged (pending_ttl_s)."""
        remembered = self._superseded.get(session_id)
        if remembered is None:
            return False
        owner, forget_at = remembered
        if time.monotonic() >= forget_at:
            del self._superseded[session_id]
            return False
        return owner == user_id

    def _remember_superseded(self, entry: SessionEntry) -> None:
        now = time.monotonic()
        while self._superseded:
            oldest_id, (_, forget_at) = next(iter(self._superseded.items()))
            if forget_at > now and len(self._superseded) < SUPERSEDED_REMEMBERED_MAX:
                break
            del self._superseded[oldest_id]
        ttl = self._settings.session.pending_ttl_s
        self._superseded[entry.session_id] = (entry.user_id, now + ttl)

    async def _check_shared_limits(self, entry: SessionEntry) -> None:
        """The cluster-wide request rate, per-user cap and cluster cap (Redis).

        Undecided (no Redis, or Redis failing) means the in-process limits, already
        passed, are the answer: see relay.cluster.limits for why this fails open.
        """
        if self.limits is None or not self.limits.enabled:
            return
        from relay.cluster.limits import CLUSTER_CAP, USER_CAP, wait_seconds

        limits = self._settings.limits
        wait = await self.limits.request_rate(entry.user_id)
        if wait:
            raise ApiError(
                429,
                "rate_limited",
                "Too many session requests; slow down.",
                retryable=True,
                retry_after_s=wait_seconds(wait),
            )
        outcome = await self.limits.acquire_session(entry.session_id, entry.user_id)
        if outcome == USER_CAP:
            raise ApiError(
                429,
                "too_many_sessions",
                f"At most {limits.per_user_concurrent_sessions} concurrent sessions per user.",
                retryable=True,
                retry_after_s=limits.retry_after_s,
            )
        if outcome == CLUSTER_CAP:
            raise ApiError(
                503,
                "over_capacity",
                "The service is at capacity; try again shortly.",
                retryable=True,
                retry_after_s=limits.retry_after_s,
            )

    async def _release(self, entry: SessionEntry) -> None:
        self._registry.release(entry.session_id)
        if self.limits is not None:
            await self.limits.release_session(entry.session_id, entry.user_id)

    def expires_at(self, entry: SessionEntry) -> datetime:
        """When the session must have been exchanged: the earlier of ours and the secret's."""
        if entry.minted is None:
            return entry.expires_at
        secret_expiry = datetime.fromtimestamp(entry.minted.expires_at, entry.expires_at.tzinfo)
        return min(entry.expires_at, secret_expiry)

    async def finish(
        self, entry: SessionEntry, *, state: str, reason: str, duration_s: float
    ) -> int | None:
        """Release the slot, close the row and debit credit; idempotent per session."""
        if self._registry.release(entry.session_id) is None:
            return None  # already finished by someone else
        return await self._close(entry, state=state, reason=reason, duration_s=duration_s)

    async def _close(
        self, entry: SessionEntry, *, state: str, reason: str, duration_s: float
    ) -> int | None:
        """Close a session already taken out of the registry (exactly once per session)."""
        finish = self._record_end(entry, state, reason, duration_s)
        remaining = await self._write(finish)
        if self.limits is not None and (remaining is not None or not finish.only_if_pending):
            # A never-claimed session that was not closed here was claimed elsewhere: its
            # shared lease belongs to the claimer now.
            await self.limits.release_session(entry.session_id, entry.user_id)
        return remaining

    def _close_soon(
        self, entry: SessionEntry, *, state: str, reason: str, duration_s: float
    ) -> None:
        """Like ``_close`` without waiting: the row's write is queued as unwritten (for
        ``_write_queued`` or, failing that, housekeeping's ``retry_unwritten``)."""
        finish = self._record_end(entry, state, reason, duration_s)
        self._unwritten[finish.session_id] = finish
        if reason == "superseded":
            self._remember_superseded(entry)

    async def _write_queued(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            finish = self._unwritten.get(session_id)
            if finish is not None:
                await self._write(finish)

    def _record_end(
        self, entry: SessionEntry, state: str, reason: str, duration_s: float
    ) -> _Finish:
        """Everything of an end but the row's write (synchronous)."""
        # Never claimed here: another member may claim it meanwhile; close the row only if
        # it is still pending (relay.sessions.shared_state).
        never_claimed = entry.state in ("pending", "superseded") and self.shared is not None
        entry.state = state
        entry.end_reason = reason
        self._ended.inc(state=state, reason=reason)
        self.recently_ended.append(
            EndedSession(
                session_id=entry.session_id,
                email=entry.email,
                state=state,
                reason=reason,
                duration_s=round(duration_s, 1),
                ended_at=time.time(),
            )
        )
        log.info("session %s %s (%s) after %.1fs", entry.session_id, state, reason, duration_s)
        return _finish_record(entry, state, reason, duration_s, only_if_pending=never_claimed)

    async def _write(self, finish: _Finish) -> int | None:
        try:
            remaining = await self._store.finish_session(
                finish.session_id,
                state=finish.state,
                end_reason=finish.reason,
                duration_seconds=finish.duration_s,
                only_if_pending=finish.only_if_pending,
            )
        except DatabaseUnavailable:
            self._finish_failures.inc()
            log.error(
                "could not close session %s yet: database unavailable; will retry",
                finish.session_id,
            )
            self._unwritten[finish.session_id] = finish
            return None
        self._unwritten.pop(finish.session_id, None)
        # The user's record changes only by a debit: a session that ended without using
        # any time (expired, superseded, failed before it started) leaves the cached
        # record true, and dropping it would send the user's next request to PostgreSQL.
        if debit_seconds(finish.duration_s) > 0:
            await self._admission.forget(finish.token_hash)
        return remaining

    async def retry_unwritten(self) -> int:
        """Write finishes the database refused earlier; return how many are still due."""
        for finish in list(self._unwritten.values()):
            await self._write(finish)
        return len(self._unwritten)

    async def finish_all(self, reason: str) -> int:
        """Close every session still registered (shut-down, after the bridges closed)."""
        entries = self._registry.live()
        for entry in entries:
            duration = 0.0 if entry.state == "pending" else entry.elapsed_s()
            await self.finish(entry, state="failed", reason=reason, duration_s=duration)
        return len(entries)

    async def expire_pending(self) -> int:
        """Fail pending sessions nobody exchanged in time; return how many."""
        expired = self._registry.expired_pending()
        for entry in expired:
            await self.finish(entry, state="failed", reason="expired", duration_s=0.0)
        return len(expired)
