"""The bridge's contract: its settings, the session layer's hooks, end states, errors.

(Its states and their transitions are in ``state``.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal, Protocol

from relay.config import EventsConfig, IceConfig, MediaConfig, SessionConfig
from relay.media.capabilities import MediaCapabilities, probe
from relay.media.conversation import TranscriptItem
from relay.media.peers import IceGatherTimeout
from relay.media.port_range import NoMediaPorts
from relay.media.sdp import InvalidOffer
from relay.upstream.base import UpstreamError, UpstreamTimeout

EndState = Literal["ended", "failed"]


@dataclass(frozen=True)
class BridgeSettings:
    session: SessionConfig
    media: MediaConfig
    events: EventsConfig
    ice: IceConfig
    # Which aiortc/aioice adaptations this installation allows (checked at start by the
    # manager; checked now when not given).
    capabilities: MediaCapabilities = field(default_factory=probe)


class BridgeHooks(Protocol):
    """What the session layer does at the bridge's milestones."""

    async def on_connecting(self) -> None: ...

    async def on_active(self, upstream_call_id: str | None) -> None: ...

    async def on_finished(self, state: EndState, reason: str, duration_s: float) -> None: ...


class ContinuityHooks(Protocol):
    """What the session layer keeps as the interview goes, for a resume on another member
    (synchronous: each starts a write of its own and returns)."""

    def on_transcript_item(self, item: TranscriptItem) -> None: ...

    def on_progress(self, used_s: float) -> None: ...


@dataclass(frozen=True)
class Seed:
    """A session taken over from a member that died, or a new session of an interview its
    candidate rejoined after an earlier one ended (relay.media.manager.rejoin_seed): what
    its new upstream session and its page are given back."""

    # The conversation so far, in order.
    items: tuple[TranscriptItem, ...]
    # Seconds charged on the members that held it before (0 for a rejoin: the new session
    # has its own budget, what the interview has left).
    charged_s: float
    # How long the candidate was without an interviewer (for relay.session.reconnected).
    gap_s: float


# The refusals a page may retry (503): the others are 409, final for that resume.
RETRYABLE_RESUME_REFUSALS = frozenset({"resume_failed", "resume_unavailable"})


class ResumeRefused(Exception):
    """A resume this bridge cannot serve: ``code`` is ``resume_in_progress``,
    ``session_not_resumable`` (not live yet, or resuming is switched off),
    ``resume_failed`` (the new leg failed while its offer was being answered) or
    ``resume_unavailable`` (the upstream's leg is being replaced: try again)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UpstreamAnswerInvalid(Exception):
    """The upstream answered with SDP aiortc could not apply."""


class BridgeClosed(Exception):
    """The bridge was ended (hang-up, shutdown) while it was still negotiating."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """The end reason recorded when ``start`` fails with ``exc``."""
    if isinstance(exc, InvalidOffer):
        return "invalid_offer"
    if isinstance(exc, UpstreamTimeout):
        return "upstream_timeout"
    if isinstance(exc, UpstreamError):
        return "upstream_error"
    if isinstance(exc, UpstreamAnswerInvalid):
        return "upstream_answer_invalid"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, IceGatherTimeout):
        return "ice_gather_timeout"
    if isinstance(exc, NoMediaPorts):
        return "no_media_ports"
    return "internal_error"
