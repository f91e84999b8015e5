"""Who is calling, and may they start an interview: token → cache → PostgreSQL → policy."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from relay.admission.cache import UserCache
from relay.admission.invites import InterviewGrant, InviteRows
from relay.admission.rate_limit import SlidingWindowLimiter
from relay.admission.tokens import INVITE_PREFIX, bearer_token, hash_token, plausible_token
from relay.admission.users import UserRecord, UserRows
from relay.config import Settings
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.observability.logging import stage
from relay.observability.metrics import DATABASE_BUCKETS, MetricsRegistry
from relay.observability.request_context import current_request_id

log = logging.getLogger("relay.admission")


@dataclass(frozen=True)
class Caller:
    user: UserRecord
    token_hash: str = field(repr=False)
    # Set when the credential is an interview's invite (ri_…): the session is that
    # interview's (its interviewer, its budget), and the invite opens nothing else.
    interview: InterviewGrant | None = None

    @property
    def credit_s(self) -> float:
        """Seconds this caller may still talk: the interview's budget with an invite, the
        user's seconds with a user token."""
        if self.interview is not None:
            return self.interview.budget_left_s
        return float(self.user.remaining_seconds)

    def owns(self, user_id: int, interview_id: str | None) -> bool:
        """Whether a session of this user (and interview) is this caller's: an invite owns
        its interview's sessions only."""
        if self.interview is not None:
            return interview_id == self.interview.id
        return user_id == self.user.id


def database_error(exc: DatabaseUnavailable, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        exc.code,
        f"The database did not answer after {exc.attempts} attempts; try again shortly.",
        retryable=True,
        retry_after_s=retry_after_s,
    )


class Admission:
    def __init__(
        self,
        settings: Settings,
        users: UserRows,
        cache: UserCache,
        metrics: MetricsRegistry,
        invites: InviteRows | None = None,
    ) -> None:
        self._settings = settings
        self._users = users
        self._invites = invites
        self._cache = cache
        self._limiter = SlidingWindowLimiter(settings.limits.per_user_requests_per_minute)
        self._outcomes = metrics.counter(
            "relay_admission_total", "Admission decisions", ["outcome"]
        )
        self._latency = metrics.histogram(
            "relay_admission_duration_seconds",
            "Credential check latency (cache, then the database on a miss), any outcome",
            buckets=DATABASE_BUCKETS,
        )

    async def authenticate(self, authorization: str | None) -> Caller:
        started = time.perf_counter()
        try:
            return await self._authenticate(authorization)
        finally:
            self._latency.observe(time.perf_counter() - started)

    async def _authenticate(self, authorization: str | None) -> Caller:
        token = bearer_token(authorization)
        if token is None:
            self._outcomes.inc(outcome="missing_token")
            raise ApiError(401, "missing_token", "Send 'Authorization: Bearer <token>'.")
        if not plausible_token(token):
            self._outcomes.inc(outcome="invalid_token")
            raise ApiError(401, "invalid_token", "The token is not valid.")
        return await self._by_hash(hash_token(token), invite=token.startswith(INVITE_PREFIX))

    async def authenticate_hash(self, token_hash: str, *, invite: bool) -> Caller:
        """The candidate of a credential known by its SHA-256 only (the one a client secret
        was asked for with: relay.admission.client_secrets), looked up as ``authenticate``
        looks up the credential itself; 401 when it no longer opens anything."""
        started = time.perf_counter()
        try:
            return await self._by_hash(token_hash, invite=invite)
        finally:
            self._latency.observe(time.perf_counter() - started)

    async def _by_hash(self, token_hash: str, *, invite: bool) -> Caller:
        if invite and self._invites is not None:
            return await self._invite(token_hash)

        started = time.perf_counter()
        cached = await self._cache.get(token_hash)
        if cached is not None:
            ms = (time.perf_counter() - started) * 1000
            if cached.user is not None:
                log.info("[DB Query] Cache hit for user %d - %.0fms", cached.user.id, ms)
                user: UserRecord | None = cached.user
            else:
                log.info("[DB Query] Cache hit for an unknown token - %.0fms", ms)
                user = None
        else:
            stage(log, "DATABASE_QUERY_START")
            db_started = time.perf_counter()
            read_mark = self._cache.mark()
            try:
                user = await self._users.find_user_by_token_hash(token_hash)
            except DatabaseUnavailable as exc:
                self._outcomes.inc(outcome=exc.code)
                log.error("[%s] DATABASE_QUERY_FAILED %s", current_request_id(), exc)
                raise database_error(exc, self._settings.database.retry_after_s) from exc
            stage(log, "DATABASE_QUERY_COMPLETE", (time.perf_counter() - db_started) * 1000)
            await self._cache.put(token_hash, user, read_mark=read_mark)
        if user is None:
            self._outcomes.inc(outcome="invalid_token")
            raise ApiError(401, "invalid_token", "The token is not valid.")
        return Caller(user, token_hash)

    async def _invite(self, token_hash: str) -> Caller:
        """An interview's invite: read from PostgreSQL every time (no cache), so a cancelled
        or completed interview's link stops at once."""
        stage(log, "DATABASE_QUERY_START")
        started = time.perf_counter()
        try:
            found = await self._invites.find(token_hash) if self._invites else None
        except DatabaseUnavailable as exc:
            self._outcomes.inc(outcome=exc.code)
            log.error("[%s] DATABASE_QUERY_FAILED %s", current_request_id(), exc)
            raise database_error(exc, self._settings.database.retry_after_s) from exc
        stage(log, "DATABASE_QUERY_COMPLETE", (time.perf_counter() - started) * 1000)
        if found is None:
            self._outcomes.inc(outcome="invalid_token")
            raise ApiError(401, "invalid_token", "The token is not valid.")
        user, grant = found
        return Caller(user, token_hash, interview=grant)

    def check_rate(self, caller: Caller) -> None:
        """Within the per-user request rate (429 otherwise); the last check of a start, so
        that a start refused for another reason first (``check_standing``, credit held by a
        running session, which a page waits out every few seconds) spends none of it."""
        wait = self._limiter.acquire(caller.user.id)
        if wait is not None:
            self._outcomes.inc(outcome="rate_limited")
            raise ApiError(
                429,
                "rate_limited",
                "Too many session requests; slow down.",
                retryable=True,
                retry_after_s=max(1, math.ceil(wait)),
            )
        self._outcomes.inc(outcome="admitted")

    def check_standing(self, caller: Caller) -> None:
        """The refusals nothing the caller sends can change (403): an inactive account, a
        closed interview, no credit left. Checked before what a request could mend (the
        recording notice), so that a candidate is never told to do what cannot help."""
        user = caller.user
        if not user.active:
            self._outcomes.inc(outcome="user_inactive")
            raise ApiError(403, "user_inactive", "This account is not active.")
        if caller.interview is not None:
            check_open(caller.interview)
        if caller.credit_s < self._settings.limits.min_remaining_seconds:
            self._outcomes.inc(outcome="no_credit")
            raise ApiError(403, "no_credit", "No interview time left on this account.")

    async def forget(self, token_hash: str) -> None:
        """Drop a user's cached record (credit or status changed)."""
        await self._cache.invalidate(token_hash)


def check_open(grant: InterviewGrant) -> None:
    """403 ``interview_closed`` unless the interview may start a session now (scheduled or
    in progress, before its ``expires_at``)."""
    status = grant.effective_status()
    if status not in ("scheduled", "in_progress"):
        raise ApiError(
            403,
            "interview_closed",
            f"This interview is {status}; its link no longer starts a session.",
            details={"interview_status": status},
        )
