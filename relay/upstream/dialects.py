"""Request building and response parsing for the two OpenAI Realtime dialects (pure).

``ga`` (current): mint with ``POST /realtime/client_secrets`` (session config nested under
``session``), exchange SDP with ``POST /realtime/calls`` (call id in ``Location``), hang up
with ``POST /realtime/calls/{id}/hangup``.
``beta`` (legacy): mint with ``POST /realtime/sessions`` (flat session body), exchange SDP
with ``POST /realtime?model=…``; both carry ``OpenAI-Beta: realtime=v1``; no hang-up call.

Nothing here does I/O. Requests never hold credentials: they name which one the client
must attach (the standard API key or the minted ek_ secret), so a request object can be
logged or compared in tests without leaking anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

from relay.config import UpstreamConfig, voice_for
from relay.upstream.base import MintedSession, SdpAnswer, SessionOverrides
from relay.upstream.retry import header

Credential = Literal["api_key", "secret"]

BETA_HEADERS: Mapping[str, str] = {"OpenAI-Beta": "realtime=v1"}
SDP_CONTENT_TYPE = "application/sdp"
# Upstream error messages are echoed to operators and callers; keep them short.
MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class HttpRequest:
    """One POST to the upstream, relative to the configured base URL."""

    path: str
    credential: Credential
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    json: Mapping[str, Any] | None = None
    text: str | None = None


class Dialect(Protocol):
    name: str

    def mint_request(
        self, config: UpstreamConfig, model: str, overrides: SessionOverrides | None = None
    ) -> HttpRequest: ...

    def parse_mint(self, data: Any, model: str) -> MintedSession: ...

    def sdp_request(self, minted: MintedSession, offer_sdp: str) -> HttpRequest: ...

    def parse_sdp(self, headers: Mapping[str, str], body: str) -> SdpAnswer: ...

    def hangup_request(self, call_id: str) -> HttpRequest | None: ...


def _turn_detection(config: UpstreamConfig) -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": config.vad_threshold,
        "prefix_padding_ms": config.vad_prefix_padding_ms,
        "silence_duration_ms": config.vad_silence_duration_ms,
        "create_response": True,
        "interrupt_response": True,
    }


# Reasoning Realtime models (gpt-realtime-2, -2.1, -2.1-mini and their dated snapshots) take
# ``reasoning.effort``; the others refuse it.
_REASONING_MODEL = re.compile(r"gpt-realtime-2(\.\d+)?(-mini)?(-\d{4}-\d{2}-\d{2})?")


def is_reasoning_model(model: str) -> bool:
    return _REASONING_MODEL.fullmatch(model) is not None


def interviewer(
    config: UpstreamConfig, overrides: SessionOverrides | None
) -> tuple[str, str, str | None]:
    """The instructions, voice and language of this session: an interview's, else the
    configured ones. A language is said in the instructions too: the transcription's
    ``language`` only tells the speech-to-text what to expect, not the model what to speak."""
    o = overrides or SessionOverrides()
    instructions = o.instructions if o.instructions is not None else config.instructions
    if o.language:
        instructions += (
            f"\n\nConduct the whole interview in the language whose ISO 639-1 code is "
            f"'{o.language}'."
        )
    return instructions, o.voice or voice_for(config), o.language


def _transcription(config: UpstreamConfig, language: str | None) -> dict[str, Any]:
    transcription: dict[str, Any] = {"model": config.transcription_model}
    if language:
        transcription["language"] = language
    return transcription


def ga_mint_body(
    config: UpstreamConfig, model: str, overrides: SessionOverrides | None = None
) -> dict[str, Any]:
    """The client_secrets body: only ``expires_after`` and ``session`` at the top level
    (OpenAI answers 400 ``unknown_parameter`` for a top-level ``type`` or ``model``)."""
    instructions, voice, language = interviewer(config, overrides)
    audio_input: dict[str, Any] = {"turn_detection": _turn_detection(config)}
    if config.transcription_model:
        audio_input = {"transcription": _transcription(config, language), **audio_input}
    session: dict[str, Any] = {
        "type": "realtime",
        "model": model,
        "instructions": instructions,
        "audio": {"input": audio_input, "output": {"voice": voice}},
    }
    if config.reasoning_effort and is_reasoning_model(model):
        session["reasoning"] = {"effort": config.reasoning_effort}
    return {
        "expires_after": {"anchor": "created_at", "seconds": config.secret_ttl_s},
        "session": session,
    }


def beta_mint_body(
    config: UpstreamConfig, model: str, overrides: SessionOverrides | None = None
) -> dict[str, Any]:
    """The flat beta /realtime/sessions body."""
    instructions, voice, language = interviewer(config, overrides)
    body: dict[str, Any] = {
        "model": model,
        "modalities": ["audio", "text"],
        "instructions": instructions,
        "voice": voice,
        "turn_detection": _turn_detection(config),
    }
    if config.transcription_model:
        body["input_audio_transcription"] = _transcription(config, language)
    return body


class MalformedResponse(ValueError):
    """A 2xx reply the relay cannot use; the client turns it into an UpstreamError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid_response(what: str) -> MalformedResponse:
    return MalformedResponse("invalid_response", f"unexpected upstream response: {what}")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid_response(f"{what} is not an object")
    return value


def _secret(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid_response(f"{what} missing")
    return value


def _expires_at(value: Any, what: str) -> int:
    # bool is an int subclass; a JSON true is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_response(f"{what} missing or not a number")
    return int(value)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def call_id_from_location(location: str | None) -> str | None:
    """The call id is the last path segment of ``Location`` (``/v1/realtime/calls/rtc_…``)."""
    if not location:
        return None
    path = urlsplit(location.strip()).path.rstrip("/")
    segment = path.rsplit("/", 1)[-1]
    return segment or None


def looks_like_sdp(text: str) -> bool:
    return text.lstrip().startswith("v=0")


def _check_answer(body: str) -> str:
    if not looks_like_sdp(body):
        raise MalformedResponse("invalid_answer", "the upstream answer is not an SDP document")
    return body


class GaDialect:
    name = "ga"

    def mint_request(
        self, config: UpstreamConfig, model: str, overrides: SessionOverrides | None = None
    ) -> HttpRequest:
        return HttpRequest(
            "/realtime/client_secrets", "api_key", json=ga_mint_body(config, model, overrides)
        )

    def parse_mint(self, data: Any, model: str) -> MintedSession:
        body = _mapping(data, "body")
        session = body.get("session")
        session = session if isinstance(session, Mapping) else {}
        return MintedSession(
            secret=_secret(body.get("value"), "value"),
            expires_at=_expires_at(body.get("expires_at"), "expires_at"),
            model=_optional_str(session.get("model")) or model,
            upstream_session_id=_optional_str(session.get("id")),
            session=dict(session) if session else None,
        )

    def sdp_request(self, minted: MintedSession, offer_sdp: str) -> HttpRequest:
        return HttpRequest(
            "/realtime/calls",
            "secret",
            headers={"Content-Type": SDP_CONTENT_TYPE, "Accept": SDP_CONTENT_TYPE},
            text=offer_sdp,
        )

    def parse_sdp(self, headers: Mapping[str, str], body: str) -> SdpAnswer:
        return SdpAnswer(
            sdp=_check_answer(body), call_id=call_id_from_location(header(headers, "Location"))
        )

    def hangup_request(self, call_id: str) -> HttpRequest | None:
        # The id comes from an upstream header: quote it so it stays one path segment.
        return HttpRequest(f"/realtime/calls/{quote(call_id, safe='')}/hangup", "api_key")


class BetaDialect:
    name = "beta"

    def mint_request(
        self, config: UpstreamConfig, model: str, overrides: SessionOverrides | None = None
    ) -> HttpRequest:
        return HttpRequest(
            "/realtime/sessions",
            "api_key",
            headers=dict(BETA_HEADERS),
            json=beta_mint_body(config, model, overrides),
        )

    def parse_mint(self, data: Any, model: str) -> MintedSession:
        body = _mapping(data, "body")
        secret = _mapping(body.get("client_secret"), "client_secret")
        return MintedSession(
            secret=_secret(secret.get("value"), "client_secret.value"),
            expires_at=_expires_at(secret.get("expires_at"), "client_secret.expires_at"),
            model=_optional_str(body.get("model")) or model,
            upstream_session_id=_optional_str(body.get("id")),
        )

    def sdp_request(self, minted: MintedSession, offer_sdp: str) -> HttpRequest:
        return HttpRequest(
            "/realtime",
            "secret",
            headers={
                **BETA_HEADERS,
                "Content-Type": SDP_CONTENT_TYPE,
                "Accept": SDP_CONTENT_TYPE,
            },
            params={"model": minted.model},
            text=offer_sdp,
        )

    def parse_sdp(self, headers: Mapping[str, str], body: str) -> SdpAnswer:
        # The beta answer carries no call id; the call ends when our peer closes.
        return SdpAnswer(sdp=_check_answer(body), call_id=None)

    def hangup_request(self, call_id: str) -> HttpRequest | None:
        return None


DIALECTS: Mapping[str, Dialect] = {"ga": GaDialect(), "beta": BetaDialect()}


def dialect_for(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown upstream dialect {name!r} (expected ga or beta)") from None


# Key-like tokens: OpenAI keys (sk-…, sk-proj-…, masked sk-****abcd), ephemeral ek_…,
# restricted rk-…, and anything after "Bearer".
_KEY_LIKE = re.compile(r"\b(sk|ek|rk)([-_])[A-Za-z0-9*._\-]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+\S+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace exact secret values and any key-like token with a marker."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1 [redacted]", text)
    return _KEY_LIKE.sub(r"\1\2[redacted]", text)


def parse_error(status: int, body: bytes, secrets: Iterable[str] = ()) -> tuple[str, str]:
    """``(code, message)`` of an upstream error reply ``{"error": {"code", "message", …}}``.

    ``code`` falls back to ``http_<status>``; ``message`` to the body text (or a generic
    phrase); the message is redacted and shortened.
    """
    code: str | None = None
    message: str | None = None
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping):
            code = _optional_str(error.get("code"))
            message = _optional_str(error.get("message"))
        elif isinstance(error, str):
            message = error
    if message is None:
        message = " ".join(text.split()) if data is None and text.strip() else ""
    if not message:
        message = f"upstream answered HTTP {status}"
    message = redact(message, secrets)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return code or f"http_{status}", message
