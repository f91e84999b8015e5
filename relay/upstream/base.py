"""The contract between the relay and an OpenAI Realtime upstream.

The web layer maps these errors to HTTP: ``UpstreamTimeout`` → 504,
``UpstreamError`` → 502 (keeping the upstream's status and error code).
Secrets (API key, ek_ values) never appear in a message, repr or log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Stage = Literal["mint", "sdp", "hangup"]


@dataclass(frozen=True)
class MintedSession:
    """An upstream session minted for one interview; ``secret`` stays on the server."""

    secret: str = field(repr=False)
    # Unix seconds after which the secret no longer opens a call.
    expires_at: int
    model: str
    # The upstream's own session id (sess_…) when it returns one.
    upstream_session_id: str | None = None
    # The effective session the upstream answered the mint with (GA; None in beta, or
    # once sealed for another member): the interviewer's configuration included, so only
    # ever shown redacted (the OpenAI-compatible client_secrets answer).
    session: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SessionOverrides:
    """One interview's interviewer, in place of the configured one (upstream.*): its
    instructions, voice and language. None keeps the configured value."""

    instructions: str | None = field(default=None, repr=False)
    voice: str | None = None
    # ISO 639-1: the interviewer is told to hold the interview in it, and the input
    # transcription expects it.
    language: str | None = None


@dataclass(frozen=True)
class SdpAnswer:
    sdp: str
    # rtc_… from the Location header (GA); None when the dialect has no call id.
    call_id: str | None = None


class UpstreamFailure(Exception):
    """Base for failures talking to the upstream."""

    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


class UpstreamTimeout(UpstreamFailure):
    """The upstream did not answer within the configured timeout (→ 504)."""


class UpstreamError(UpstreamFailure):
    """The upstream answered with an error or could not be reached (→ 502).

    ``status`` is the upstream HTTP status (None when unreachable); ``code`` is the
    upstream ``error.code`` (or a relay code such as ``upstream_unreachable``).
    """

    def __init__(self, stage: Stage, message: str, *, status: int | None, code: str | None) -> None:
        super().__init__(stage, message)
        self.status = status
        self.code = code


class UpstreamClient(Protocol):
    """One OpenAI Realtime dialect (ga or beta), or the simulator behind the same HTTP."""

    @property
    def dialect(self) -> str: ...

    @property
    def model(self) -> str: ...

    async def mint(
        self, *, request_id: str, overrides: SessionOverrides | None = None
    ) -> MintedSession:
        """Create the upstream session with the server-owned configuration (an interview's
        ``overrides`` in place of the configured interviewer)."""

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        """Post the relay's own SDP offer; return the upstream's answer."""

    async def hangup(self, call_id: str) -> None:
        """End the upstream call (best effort; errors are logged, not raised)."""

    async def close(self) -> None:
        """Release HTTP resources."""
