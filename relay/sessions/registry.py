"""The live sessions of this instance: reservation, single-use exchange, limits.

A session is reserved when ``/api/realtime-session`` admits a user (state
``pending``), claimed exactly once by ``/api/webrtc-exchange`` (``connecting``), and
released when it ends. The registry enforces the per-user concurrent-session limit
and the global cap in one place, synchronously (no awaits), so two concurrent
requests can never both take the last slot.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from relay.config import LimitsConfig
from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import MintedSession, SessionOverrides

if TYPE_CHECKING:
    # Only for the annotation: the session layer does not import the media layer.
    from relay.media.bridge import Bridge

LIVE_STATES = ("pending", "connecting", "active")


@dataclass
class SessionEntry:
    session_id: str
    user_id: int
    # SHA-256 of the user's token: the cache key to invalidate when credit changes.
    token_hash: str = field(repr=False)
    request_id: str
    # The longest this interview may last: min(config cap, the user's remaining seconds
    # not promised to their other running sessions); fixed when the session is claimed.
    max_duration_s: float
    expires_at: datetime
    # The user's remaining seconds when admitted.
    credit_s: float = 0.0
    state: str = "pending"
    minted: MintedSession | None = None
    # The media bridge attached at exchange time (relay.media.manager).
    bridge: Bridge | None = None
    created_monotonic: float = field(default_factory=time.monotonic)
    # The user's e-mail, for the operator dashboard (shown masked).
    email: str = field(default="", repr=False)
    # Why it left the registry ("superseded", "operator_hangup", "expired", ...): a
    # request still creating it reports that reason rather than guessing.
    end_reason: str | None = None
    # Whether it may hold a lease in the shared limits (relay.cluster.limits): set when
    # its acquire is sent (an answer lost on the way may still have taken one), so every
    # failure from then on, a refusal included, releases it. The heartbeat renews only
    # these, and only leases that exist. A session claimed from another member holds the
    # lease its creator took.
    lease: bool = False
    # Its create returned it to the page: from then on a reloaded page may supersede it.
    handed_out: bool = False
    # The claim that moved its row to ``connecting`` on this member (relay.sessions.
    # shared_state): the row is closed only while it still holds this very claim.
    claim_token: str | None = field(default=None, repr=False)
    # SHA-256 of its current resume token (relay.sessions.continuity), once exchanged.
    resume_token_hash: str | None = field(default=None, repr=False)
    # 1, or the part a member taking it over from a dead one continues it in.
    part: int = 1
    # The interview it belongs to (started with that interview's invite), whose budget it
    # spends instead of the user's seconds; None: a plain user token's session.
    interview_id: str | None = None
    # Record it (false for an interview created with ``recording: false``).
    recording: bool = True
    # The interviewer it was minted with (an interview's; None: the configured one): a
    # lost upstream leg's new upstream session is minted with it again.
    overrides: SessionOverrides | None = field(default=None, repr=False)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.created_monotonic

    @property
    def expired(self) -> bool:
        return self.state == "pending" and datetime.now(UTC) >= self.expires_at


def new_session_id() -> str:
    return "is_" + secrets.token_hex(16)


_SESSION_ID = re.compile(r"is_[0-9a-f]{32}")


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the form of ``new_session_id()`` (checked before any lookup)."""
    return _SESSION_ID.fullmatch(value) is not None


class SessionRegistry:
    def __init__(self, limits: LimitsConfig, metrics: MetricsRegistry) -> None:
        self._limits = limits
        self._sessions: dict[str, SessionEntry] = {}
        # Sessions whose exchange is claiming them in the database right now: neither
        # superseded nor expired meanwhile (a claimed session is never superseded, and
        # a claim in flight may already have landed), nor claimed a second time here.
        self._claiming: set[str] = set()
        self._live_gauge = metrics.gauge(
            "relay_sessions_live", "Sessions of this instance by state", ["state"]
        )
        self._rejected = metrics.counter(
            "relay_sessions_rejected_total", "Sessions refused by a limit", ["reason"]
        )
        self._rejected.declare(reason=("global_cap", "user_concurrency"))

    def _update_gauge(self) -> None:
        counts = dict.fromkeys(LIVE_STATES, 0)
        for entry in self._sessions.values():
            counts[entry.state] = counts.get(entry.state, 0) + 1
        for state, n in counts.items():
            self._live_gauge.set(n, state=state)

    def check_capacity(self, user_id: int) -> None:
        """Raise 429/503 if this user or this instance is at its limit."""
        if len(self._sessions) >= self._limits.global_max_sessions:
            self._rejected.inc(reason="global_cap")
            raise ApiError(
                503,
                "over_capacity",
                "This relay is at capacity; try again shortly.",
                retryable=True,
                retry_after_s=self._limits.retry_after_s,
            )
        mine = sum(1 for e in self._sessions.values() if e.user_id == user_id)
        if mine >= self._limits.per_user_concurrent_sessions:
            self._rejected.inc(reason="user_concurrency")
            raise ApiError(
                429,
                "too_many_sessions",
                f"At most {self._limits.per_user_concurrent_sessions} concurrent sessions"
                " per user.",
                retryable=True,
                retry_after_s=self._limits.retry_after_s,
            )

    def reserved_seconds(
        self, user_id: int, *, exclude: str | None = None, interview_id: str | None = None
    ) -> float:
        """Seconds promised to the claimed (connecting/active) sessions spending the same
        credit: this interview's (``interview_id``), or this user's own sessions.

        Pending sessions promise nothing yet: a page reload must not lock credit away.
        """
        return sum(
            e.max_duration_s
            for e in self._sessions.values()
            if e.session_id != exclude
            and e.state in ("connecting", "active")
            and e.interview_id == interview_id
            and (interview_id is not None or e.user_id == user_id)
        )

    def supersede_pending(self, user_id: int) -> list[SessionEntry]:
        """Remove this user's oldest never-exchanged sessions so that one more fits.

        A reloaded page asks for a new session while its old one is still pending (it
        would count against the limits until ``pending_ttl_s``); the new request wins.
        Only as many as the per-user and global caps need, and only when that is enough
        to make room: otherwise nothing is touched and ``reserve`` refuses as before.
        Synchronous, like ``reserve``, so the two happen without another request between.
        Sessions still being created (not handed out yet) and sessions an exchange is
        claiming are never superseded. Removing them here is tentative: the caller closes
        their rows only if still pending (reason ``superseded``), and a row claimed on
        another member meanwhile is that member's session (``SessionService.create``).
        """
        mine = [e for e in self._sessions.values() if e.user_id == user_id]
        need = max(
            0,
            len(mine) - self._limits.per_user_concurrent_sessions + 1,
            len(self._sessions) - self._limits.global_max_sessions + 1,
        )
        # Only sessions already handed to their page: requests still being created are not
        # cancelled by each other, so a burst meets the cap (429) instead.
        pending = sorted(
            (
                e
                for e in mine
                if e.state == "pending"
                and e.bridge is None
                and e.handed_out
                and e.session_id not in self._claiming
            ),
            key=lambda e: e.created_monotonic,
        )
        if need == 0 or need > len(pending):
            return []
        victims = pending[:need]
        for entry in victims:
            del self._sessions[entry.session_id]
            entry.state = "superseded"
            entry.end_reason = "superseded"
        self._update_gauge()
        return victims

    def reserve(
        self,
        *,
        user_id: int,
        token_hash: str,
        request_id: str,
        max_duration_s: float,
        credit_s: float,
        pending_ttl_s: float,
        email: str = "",
        interview_id: str | None = None,
        recording: bool = True,
    ) -> SessionEntry:
        self.check_capacity(user_id)
        entry = SessionEntry(
            session_id=new_session_id(),
            user_id=user_id,
            token_hash=token_hash,
            request_id=request_id,
            max_duration_s=max_duration_s,
            credit_s=credit_s,
            expires_at=datetime.now(UTC) + timedelta(seconds=pending_ttl_s),
            email=email,
            interview_id=interview_id,
            recording=recording,
        )
        self._sessions[entry.session_id] = entry
        self._update_gauge()
        return entry

    def adopt(self, entry: SessionEntry) -> SessionEntry:
        """Register a session created on another member and claimed here.

        No capacity check: the cluster's limits admitted it where it was created, and
        its media must terminate where the exchange landed.
        """
        self._sessions[entry.session_id] = entry
        self._update_gauge()
        return entry

    def get(self, session_id: str) -> SessionEntry | None:
        return self._sessions.get(session_id)

    def claim_for_exchange(
        self, session_id: str, user_id: int, interview_id: str | None = None
    ) -> SessionEntry:
        """pending → connecting, once. 404 for unknown, foreign or expired; 409 if used."""
        entry = self._sessions.get(session_id)
        if entry is None or entry.user_id != user_id or entry.interview_id != interview_id:
            # Someone else's session is reported as unknown: no existence oracle.
            raise ApiError(404, "session_not_found", "No such session for this user.")
        if entry.state != "pending":
            raise ApiError(409, "session_already_exchanged", "This session was already used.")
        if entry.expired:
            raise ApiError(404, "session_expired", "This session expired; create a new one.")
        # Two sessions admitted side by side must not both spend the same credit.
        available = entry.credit_s - self.reserved_seconds(
            user_id, exclude=session_id, interview_id=entry.interview_id
        )
        if available < self._limits.min_remaining_seconds:
            raise credit_refused(entry.credit_s, self._limits)
        entry.max_duration_s = min(entry.max_duration_s, available)
        entry.state = "connecting"
        self._update_gauge()
        return entry

    def begin_claim(self, session_id: str) -> bool:
        """Mark an exchange's claim of ``session_id`` in flight; False if one already is."""
        if session_id in self._claiming:
            return False
        self._claiming.add(session_id)
        return True

    def end_claim(self, session_id: str) -> None:
        self._claiming.discard(session_id)

    def set_state(self, session_id: str, state: str) -> None:
        entry = self._sessions.get(session_id)
        if entry is not None:
            entry.state = state
            self._update_gauge()

    def release(self, session_id: str) -> SessionEntry | None:
        entry = self._sessions.pop(session_id, None)
        self._update_gauge()
        return entry

    def expired_pending(self) -> list[SessionEntry]:
        return [
            e for e in self._sessions.values() if e.expired and e.session_id not in self._claiming
        ]

    def leased(self) -> list[tuple[str, int]]:
        """(session id, user id) of the sessions that may hold a shared lease."""
        return [(e.session_id, e.user_id) for e in self._sessions.values() if e.lease]

    def live(self) -> list[SessionEntry]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)


def credit_refused(credit_s: float, limits: LimitsConfig) -> ApiError:
    """The refusal of a session whose credit (``credit_s``: the interview's budget left, or
    the user's seconds) is held by running sessions of the same candidate: 403
    ``no_credit`` if the credit alone is short (nothing will change that), else 409
    ``credit_in_use``, retryable: typically the same interview open in another tab or
    window (or one closed a moment ago, not yet noticed), which frees it when it ends.
    Its Retry-After is ``limits.credit_in_use_retry_after_s``: a page that was closed is
    noticed at once, or after ICE consent fails (about 30 s), and then its grace runs
    (session.reconnect_grace_s)."""
    if credit_s < limits.min_remaining_seconds:
        return ApiError(403, "no_credit", "No interview time left on this account.")
    return ApiError(
        409,
        "credit_in_use",
        "The time left is held by an interview already running (in another tab or window?); "
        "it is free again once that one has ended.",
        retryable=True,
        retry_after_s=limits.credit_in_use_retry_after_s,
    )


def superseded_error() -> ApiError:
    return ApiError(
        410,
        "session_superseded",
        "A newer session was requested (e.g. the page was reloaded); use that one.",
    )
