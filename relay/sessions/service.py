"""Creating and finishing interview sessions: the orchestration above admission.

``create`` runs the policy, reserves a slot, writes the ``interview_sessions`` row and
mints the upstream session; every failure on the way leaves nothing half-open (the
slot is released and the row, if written, is closed as failed with the reason).
``claim`` is the exchange's claim, all or nothing: it returns a session this member
holds, or raises having released whatever the claim took.
``finish`` is the single exit for every session, whoever ends it. A finish is queued
before its row is written, so a write that fails in any way (or is cancelled) is
retried by housekeeping until it lands: credit is always debited eventually.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

import asyncpg

from relay.admission.invites import InterviewGrant
from relay.admission.service import Admission, Caller, check_open, database_error
from relay.config import Settings, model_for
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry
from relay.observability.request_context import bind_session, current_request_id, record_stage
from relay.sessions.drain import DrainState
from relay.sessions.finishes import Finish, FinishQueue, finish_record
from relay.sessions.registry import (
    SessionEntry,
    SessionRegistry,
    credit_refused,
    superseded_error,
)
from relay.sessions.rows import SessionRows
from relay.sessions.shared_state import Claimed, new_claim_token
from relay.tasks import TaskGroup
from relay.upstream.base import (
    SessionOverrides,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from relay.cluster.limits import SharedLimits
    from relay.sessions.shared_state import SharedSessions

log = logging.getLogger("relay.sessions")

# At shut-down, how long closes of superseded sessions already on their way get to land
# before they are cancelled (their finishes stay queued; relay.sessions.finishes).
CLOSE_GRACE_S = 10.0


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


def interview_overrides(grant: InterviewGrant | None) -> SessionOverrides | None:
    """The interviewer an interview's session is minted with (None: the configured one)."""
    if grant is None:
        return None
    return SessionOverrides(
        instructions=grant.instructions, voice=grant.voice, language=grant.language
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
    """What a create (or an exchange's claim) reports when its session was ended before
    it returned."""
    if reason == "superseded":
        return superseded_error()
    if reason == "expired":
        return ApiError(404, "session_expired", "This session expired; create a new one.")
    if reason in ("hangup", "operator_hangup"):
        return ApiError(409, "session_closed", "This session was ended before it started.")
    if reason == "revoked":
        return ApiError(403, "user_inactive", "This account is not active.")
    # Shut-down (finish_all) and anything else the relay itself ended it for.
    return ApiError(
        503,
        "draining",
        "This relay is shutting down; try again.",
        retryable=True,
        retry_after_s=drain_retry_after_s,
    )


def _interrupted_reason(exc: BaseException) -> str:
    """The end reason of a session whose exchange failed with ``exc`` before its bridge."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "internal_error"


class SessionService:
    def __init__(
        self,
        settings: Settings,
        *,
        admission: Admission,
        rows: SessionRows,
        registry: SessionRegistry,
        upstream: UpstreamClient,
        metrics: MetricsRegistry,
        instance_id: str,
        drain: DrainState,
        shared: SharedSessions | None = None,
        limits: SharedLimits | None = None,
    ) -> None:
        """``shared``, ``limits``: the cluster's parts (pending sessions any member can
        claim, limits shared through Redis); without them, this process only."""
        self._settings = settings
        self._admission = admission
        self._rows = rows
        self._registry = registry
        self._upstream = upstream
        self._instance_id = instance_id
        self._drain = drain
        self._ended = metrics.counter(
            "relay_sessions_ended_total",
            "Sessions ended, by final state and reason",
            ["state", "reason"],
        )
        # The most recent ends, newest last, for the operator dashboard (bounded).
        self.recently_ended: deque[EndedSession] = deque(maxlen=RECENTLY_ENDED_MAX)
        # Finishes whose row is not written yet (relay.sessions.finishes).
        self._finishes = FinishQueue(
            rows,
            metrics,
            release_lease=self._release_lease,
            forget_user=admission.forget,
            not_superseded=self._forget_superseded,
        )
        self.shared = shared
        self.limits = limits
        self._tasks = TaskGroup("sessions", log=log, metrics=metrics)
        # session id → (user id, monotonic time to forget it): see SUPERSEDED_REMEMBERED_MAX.
        self._superseded: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def refuse_if_draining(self) -> None:
        if self._drain.draining:
            raise ApiError(
                503,
                "draining",
                "This relay is shutting down; try again.",
                retryable=True,
                retry_after_s=self._settings.server.drain_retry_after_s,
            )

    async def create(self, caller: Caller) -> SessionEntry:
        self.refuse_if_draining()
        self._admission.check_standing(caller)
        settings = self._settings
        grant = caller.interview
        interview_id = grant.id if grant is not None else None
        # Seconds promised to the other live sessions spending the same credit (this
        # user's, or this interview's) are not available again.
        available = caller.credit_s - self._registry.reserved_seconds(
            caller.user.id, interview_id=interview_id
        )
        if available < settings.limits.min_remaining_seconds:
            raise credit_refused(caller.credit_s, settings.limits)
        # After the credit: a page waiting out credit_in_use (every Retry-After) must not
        # run into the rate limit meant for a page that starts sessions in a loop.
        self._admission.check_rate(caller)
        # A reloaded page: its earlier, never-exchanged session gives way to this one.
        # Their rows are closed by an owned task, queued as unwritten finishes before any
        # await (so housekeeping lands them even if this request is cancelled or the
        # write fails). Each close is conditional on the row still being pending: one
        # claimed on another member meanwhile is that member's session, not superseded.
        superseded = self._registry.supersede_pending(caller.user.id)
        for old in superseded:
            self._close_soon(old, state="ended", reason="superseded", duration_s=0.0)
        closing = None
        if superseded:
            ids = [old.session_id for old in superseded]
            closing = self._tasks.spawn(self._finishes.write_queued(ids), name="close-superseded")
        try:
            entry = self._registry.reserve(
                user_id=caller.user.id,
                token_hash=caller.token_hash,
                request_id=current_request_id(),
                max_duration_s=min(settings.session.max_duration_s, available),
                credit_s=caller.credit_s,
                pending_ttl_s=settings.session.pending_ttl_s,
                email=caller.user.email,
                interview_id=interview_id,
                recording=grant.recording if grant is not None else True,
            )
        except ApiError:
            raise  # cannot happen when superseding made room; their closes are queued
        bind_session(entry.session_id)
        try:
            if closing is not None:
                for old in superseded:
                    log.info("session %s superseded by %s", old.session_id, entry.session_id)
                # Their rows first: each closed row gives its shared lease back, so the
                # cluster's per-user cap counts this session instead of them; a row a
                # claim took meanwhile keeps its lease, and the cap refuses this one.
                # Shielded: the closes land even if this request is cancelled.
                await asyncio.shield(closing)
            await self._check_shared_limits(entry)
        except BaseException:
            await self._release(entry)
            raise
        try:
            await self._rows.create_session(
                session_id=entry.session_id,
                user_id=caller.user.id,
                request_id=entry.request_id,
                model=model_for(settings.upstream),
                dialect=settings.upstream.dialect,
                relay_instance=self._instance_id,
                expires_at=entry.expires_at,
                interview_id=interview_id,
            )
        except DatabaseUnavailable as exc:
            await self._release(entry)
            raise database_error(exc, settings.database.retry_after_s) from exc
        except asyncpg.ForeignKeyViolationError:
            # The user's row is gone (erased, on another member) while this member's
            # cache still held its token, the database's notice not here yet: the token
            # opens nothing any more, as it will once the notice arrives.
            await self._release(entry)
            await self._admission.forget(caller.token_hash)
            raise ApiError(401, "invalid_token", "The token is not valid.") from None
        except BaseException:
            await self._release(entry)
            raise

        if self._registry.get(entry.session_id) is not entry:
            await self._abandon_ended(entry)  # while its row was written: do not mint
        # The upstream client logs the OPENAI_SESSION_* stage lines itself.
        started = time.perf_counter()
        entry.overrides = interview_overrides(grant)
        try:
            entry.minted = await self._upstream.mint(
                request_id=entry.request_id, overrides=entry.overrides
            )
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
            except BaseException as exc:
                reason = _interrupted_reason(exc)
                await self.finish(entry, state="failed", reason=reason, duration_s=0.0)
                if isinstance(exc, DatabaseUnavailable):
                    raise database_error(exc, settings.database.retry_after_s) from exc
                raise
            if self._registry.get(entry.session_id) is not entry:
                await self._abandon_ended(entry)  # while its secret was being saved
        # From here on a reloaded page may supersede it (not before: a burst of requests
        # meets the cap instead of cancelling each other's sessions).
        entry.handed_out = True
        return entry

    async def _abandon_ended(self, entry: SessionEntry) -> NoReturn:
        """Report a session that was ended while this request was still creating it."""
        reason = entry.end_reason or "superseded"
        state = "failed" if entry.state == "failed" else "ended"
        # Its row may have been inserted after the end closed it (the UPDATE found
        # nothing then): close it again, with the same reason; finish_session leaves a
        # closed row alone. Nobody else can have claimed it: its id was never handed out.
        await self._finishes.land(finish_record(entry, state, reason, 0.0))
        raise ended_while_creating_error(reason, self._settings.server.drain_retry_after_s)

    async def claim(self, session_id: str, caller: Caller) -> SessionEntry:
        """The exchange's claim (pending → connecting), once across the cluster.

        All or nothing: it returns the session held by this member (its registry entry
        ``connecting``, its row naming this claim, its shared lease renewed here), or
        raises having released what the claim took. A session this instance superseded
        answers 410 from memory first: its row is closed off the request's path, so the
        database may still say pending.
        """
        user_id = caller.user.id
        if self._was_superseded(session_id, user_id):
            raise superseded_error()
        shared = self.shared
        interview_id = caller.interview.id if caller.interview is not None else None
        if caller.interview is not None:
            check_open(caller.interview)
        if shared is None:  # a service without the cluster parts: this process only
            return self._registry.claim_for_exchange(session_id, user_id, interview_id)
        local = self._registry.get(session_id)
        if local is not None and (local.user_id != user_id or local.interview_id != interview_id):
            local = None  # someone else's: the row answers 404, as for an unknown id
        # Synchronous, before the first await: while the claim is in flight its session
        # is neither superseded nor expired here, nor claimed a second time here.
        if (local is not None and local.state != "pending") or not self._registry.begin_claim(
            session_id
        ):
            raise ApiError(409, "session_already_exchanged", "This session was already used.")
        try:
            return await self._claim(shared, session_id, caller, local)
        finally:
            self._registry.end_claim(session_id)

    async def _claim(
        self,
        shared: SharedSessions,
        session_id: str,
        caller: Caller,
        local: SessionEntry | None,
    ) -> SessionEntry:
        token = new_claim_token()
        interview_id = caller.interview.id if caller.interview is not None else None
        try:
            claimed = await shared.claim_row(session_id, caller.user.id, token, interview_id)
        except ApiError:
            raise  # refused by the row: its transaction changed nothing
        except BaseException as exc:
            # No answer (retries exhausted, cancelled, ...): the claim may have landed.
            await self._abandon_claim(session_id, caller, token, local, _interrupted_reason(exc))
            if isinstance(exc, DatabaseUnavailable):
                raise database_error(exc, self._settings.database.retry_after_s) from exc
            raise
        if local is not None:
            return await self._take_local(local, token, claimed)
        return await self._adopt(shared, session_id, caller, token, claimed)

    async def _take_local(self, local: SessionEntry, token: str, claimed: Claimed) -> SessionEntry:
        """A session created here, claimed here: re-checked, as the claim awaited."""
        if self._registry.get(local.session_id) is not local:
            # Ended here while the claim was in flight (hung up, revoked, shut down). That
            # end's close was conditional on the row being pending and found it claimed:
            # the claim is undone here, with that end's reason.
            reason = local.end_reason or "internal_error"
            state = "failed" if local.state == "failed" else "ended"
            await self._finishes.land(finish_record(local, state, reason, 0.0, claim_token=token))
            raise ended_while_creating_error(reason, self._settings.server.drain_retry_after_s)
        local.max_duration_s = claimed.max_duration_s
        local.claim_token = token
        self._registry.set_state(local.session_id, "connecting")
        return local

    async def _adopt(
        self,
        shared: SharedSessions,
        session_id: str,
        caller: Caller,
        token: str,
        claimed: Claimed,
    ) -> SessionEntry:
        """A session created on another member, claimed here: registered, its secret
        opened (or minted again), re-checked after that await."""
        entry = self._registry.adopt(
            SessionEntry(
                session_id=session_id,
                user_id=caller.user.id,
                token_hash=claimed.token_hash,
                request_id=claimed.request_id,
                max_duration_s=claimed.max_duration_s,
                expires_at=claimed.expires_at,
                credit_s=claimed.credit_s,
                state="connecting",
                email=caller.user.email,
                # The lease its creator took is this member's to renew and release now.
                lease=True,
                claim_token=token,
                interview_id=claimed.interview_id,
                recording=claimed.recording,
                overrides=claimed.overrides,
            )
        )
        shared.tell_creator(session_id)
        try:
            entry.minted = await shared.minted(session_id, claimed)
        except BaseException as exc:
            reason = _interrupted_reason(exc)
            await self.finish(entry, state="failed", reason=reason, duration_s=0.0)
            raise
        if self._registry.get(session_id) is not entry:
            # Ended while its secret was minted again (revoked, hung up, shut down); that
            # end closed it (it was this member's claim by then).
            reason = entry.end_reason or "internal_error"
            raise ended_while_creating_error(reason, self._settings.server.drain_retry_after_s)
        log.info("session %s created on %s, claimed here", session_id, claimed.created_by or "?")
        return entry

    async def _abandon_claim(
        self,
        session_id: str,
        caller: Caller,
        token: str,
        local: SessionEntry | None,
        reason: str,
    ) -> None:
        """A claim with no answer: end the session, whether the claim landed or not.

        Its row is closed if still pending or held by this very claim (never if another
        claim took it); a local entry goes at once; the lease goes if the row was closed
        here. The page gives up on a failed exchange anyway (it hangs up)."""
        state = "failed"
        if local is not None:
            if self._registry.release(session_id) is local:
                self._record_end(local, state, reason, 0.0)
            elif local.end_reason is not None:
                # Ended here while the claim was in flight: that end's reason.
                reason = local.end_reason
                state = "failed" if local.state == "failed" else "ended"
        log.warning("session %s: the claim got no answer (%s); ending it", session_id, reason)
        finish = Finish(
            session_id=session_id,
            state="ended" if state == "ended" else "failed",
            reason=reason,
            duration_s=0.0,
            user_id=caller.user.id,
            token_hash=caller.token_hash,
            claim_token=token,
            held=False,
        )
        await self._finishes.land(finish)

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

    def _forget_superseded(self, session_id: str) -> None:
        """A supersede whose close found the row claimed elsewhere: it did not happen."""
        self._superseded.pop(session_id, None)

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
        # From here on the session may hold a lease, even if the answer never arrives, so
        # every failure releases it (a refusal too: nothing is left to chance in Redis),
        # and the heartbeat renews it (only if it exists).
        entry.lease = True
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
        """Give back a reservation that never became a session (no row to close)."""
        self._registry.release(entry.session_id)
        if self.limits is not None and entry.lease:
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
        # Queued before the write: a write that fails, or is cancelled, still lands later.
        return await self._finishes.land(self._record_end(entry, state, reason, duration_s))

    async def close_unheld(self, session_id: str, *, reason: str, duration_s: float) -> None:
        """Close the live row of a session no member holds (hung up while its holder was
        dead: relay.sessions.continuity.HangUpRequested), debiting what was charged
        until the holder was lost, as any end does (the interview's transition included)."""
        closed = await self._rows.finish_session(
            session_id, state="ended", end_reason=reason, duration_seconds=duration_s
        )
        if closed is not None:
            self._ended.inc(state="ended", reason=reason)

    def _close_soon(
        self, entry: SessionEntry, *, state: str, reason: str, duration_s: float
    ) -> None:
        """Like ``finish`` for an entry already out of the registry, without waiting: the
        row's write is queued (written by ``FinishQueue.write_queued`` or, failing that,
        housekeeping's ``retry_unwritten``)."""
        self._finishes.queue(self._record_end(entry, state, reason, duration_s))
        if reason == "superseded":
            self._remember_superseded(entry)

    def _record_end(
        self, entry: SessionEntry, state: str, reason: str, duration_s: float
    ) -> Finish:
        """Everything of an end but the row's write (synchronous)."""
        # Never claimed here: another member may claim it meanwhile; close the row only if
        # it is still pending (relay.sessions.shared_state).
        never_claimed = entry.state in ("pending", "superseded") and self.shared is not None
        claim_token = entry.claim_token
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
        return finish_record(
            entry,
            state,
            reason,
            duration_s,
            only_if_pending=never_claimed,
            claim_token=claim_token,
            # A copy of a session another member took over: the lease is that member's.
            held=not never_claimed and reason != "taken_over",
        )

    async def retry_unwritten(self) -> int:
        """Write the finishes still queued; return how many are still due."""
        return await self._finishes.retry()

    async def _release_lease(self, session_id: str, user_id: int) -> None:
        if self.limits is not None:
            await self.limits.release_session(session_id, user_id)

    async def close(self) -> None:
        """Let the closes of superseded sessions on their way land (``CLOSE_GRACE_S``), then
        cancel them."""
        await self._tasks.close(grace_s=CLOSE_GRACE_S)

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
