"""The request and response bodies of the OpenAI-compatible routes (relay.web.routes_openai),
as pydantic models: the shapes of OpenAI's Realtime API (``ClientSecretCreateParams``,
``ClientSecretCreateResponse``, its error body), with the relay's one addition
(``recording_notice_shown``). The handlers validate with them; the OpenAPI document
describes the routes with them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The relay's own ek_ keys (relay.admission.client_secrets): the prefix OpenAI's Agents SDK
# insists on in a browser, then 32 random bytes.
CLIENT_SECRET_PATTERN = r"^ek_[A-Za-z0-9_-]{43}$"
CALL_ID_PATTERN = r"^rtc_[0-9a-f]{32}$"


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(
        ge=10,
        le=7200,
        description="The secret's lifetime; the relay's is at most the pending session's "
        "(session.pending_ttl_s).",
    )


class ClientSecretRequest(BaseModel):
    """OpenAI's ``ClientSecretCreateParams``: what OpenAI's SDKs send. ``session`` is accepted
    and ignored: the interview defines the session (instructions, tools, model, voice,
    limits)."""

    model_config = ConfigDict(extra="forbid")

    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = Field(
        default=None,
        description="Accepted as OpenAI's clients send it, never applied: the interview "
        "defines the session.",
    )
    recording_notice_shown: bool = Field(
        default=False,
        description="The relay's addition (OpenAI's SDKs: extra_body): the client showed the "
        "candidate the recording notice (GET /api/recording-notice); required while the "
        "interview is recorded, unless recording.require_notice is false.",
    )


class EffectiveSession(BaseModel):
    """The session the interview defines, as the candidate may see it: OpenAI's
    ``RealtimeSessionCreateResponse`` without instructions, tools, prompt or tracing."""

    model_config = ConfigDict(extra="allow")

    type: Literal["realtime"]
    object: Literal["realtime.session"]
    id: str
    model: str | None = None


class ClientSecret(BaseModel):
    """OpenAI's ``ClientSecretCreateResponse``."""

    model_config = ConfigDict(extra="allow")

    value: str = Field(
        pattern=CLIENT_SECRET_PATTERN,
        description="The relay's own ek_ key for this one session (never the upstream's): "
        "Bearer of POST /v1/realtime/calls.",
    )
    expires_at: int = Field(description="Unix seconds: the call must start before then.")
    session: EffectiveSession


class CallForm(BaseModel):
    """OpenAI's multipart form of ``POST /v1/realtime/calls``."""

    sdp: str = Field(description="The SDP offer (one audio line, the oai-events channel).")
    session: str | None = Field(
        default=None,
        description="A session configuration (JSON), accepted and ignored: the interview "
        "defines the session.",
    )


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    message: str
    type: str = Field(description="invalid_request_error, requests (429) or server_error.")
    code: str | None = Field(description="The relay's error code, e.g. client_secret_expired.")
    param: str | None = Field(description="The request field at fault, when there is one.")


class OpenAIErrorBody(BaseModel):
    """Every error of the /v1 routes, in OpenAI's shape (and the relay's request id)."""

    model_config = ConfigDict(extra="allow")

    error: OpenAIErrorDetail
    request_id: str
