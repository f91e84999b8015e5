"""Models of the routes written before the operation registry (relay.web.api): the
candidate's session and exchange, the operator's stats and drain, the recordings, and the
error every route answers with. They are the OpenAPI document's description of those
routes; the schemathesis run (tests/integration/test_openapi_schemathesis.py) checks
every answer against them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relay.web.pagination import Page

# Answers may gain fields: a client ignores what it does not know (no additionalProperties
# false), while requests are strict (extra="forbid" where the handler refuses extras).


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Answer):
    code: str = Field(description="The relay's error code, e.g. database_timeout.")
    message: str
    retryable: bool = Field(description="Whether the same request may succeed later.")


class ErrorBody(_Answer):
    """Every error, whatever the route."""

    error: ErrorDetail
    request_id: str


# ---------------------------------------------------------------------- candidate
class RealtimeSessionRequest(BaseModel):
    recording_notice_shown: bool = Field(
        default=False,
        description="The client showed the candidate the recording notice "
        "(GET /api/recording-notice); required while the interview is recorded.",
    )


class IceServer(_Answer):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class RealtimeSession(_Answer):
    session_id: str = Field(pattern=r"^is_[0-9a-f]{32}$")
    expires_at: str = Field(description="Exchange the offer before this time (ISO 8601).")
    model: str
    ice_servers: list[IceServer]
    max_duration_seconds: int
    simulated: bool = Field(description="The interviewer is the built-in simulator.")
    request_id: str
    processing_time_ms: float


class ExchangeRequest(BaseModel):
    session_id: str = Field(pattern=r"^is_[0-9a-f]{32}$")
    type: Literal["offer"]
    sdp: str = Field(description="The browser's SDP offer (one Opus audio line, a data channel).")


class ExchangeAnswer(_Answer):
    type: Literal["answer"]
    sdp: str
    session_id: str
    request_id: str
    processing_time_ms: float
    resume_token: str | None = Field(
        default=None,
        description=(
            "rs_…: resumes this session after a dropped connection or a reload "
            "(POST /api/sessions/{session_id}/resume); absent when resuming is off "
            "(session.reconnect_grace_s = 0)."
        ),
    )
    reconnect_grace_s: float | None = Field(
        default=None,
        description="How long the relay keeps the interview after a drop (with resume_token).",
    )


class ResumeRequest(BaseModel):
    resume_token: str = Field(pattern=r"^rs_[A-Za-z0-9_-]{43}$")
    type: Literal["offer"]
    sdp: str = Field(description="The page's new SDP offer.")


class ResumeAnswer(_Answer):
    type: Literal["answer"]
    sdp: str
    session_id: str
    resume_token: str = Field(description="The next resume token; the one sent is spent.")
    reconnect_grace_s: float = Field(description="How long the relay keeps it after a drop.")
    request_id: str
    processing_time_ms: float


class SessionState(_Answer):
    """A session as its owner (or the management API) sees it: live on this member, or its
    row."""

    session_id: str
    state: Literal["pending", "connecting", "active", "ended", "failed"]
    end_reason: str | None = None
    expires_at: str | None = None
    max_duration_seconds: int | None = None
    active_seconds: float | None = None
    media: dict[str, Any] | None = None
    model: str | None = None
    dialect: str | None = None
    created_at: str | None = None
    parts: int | None = Field(
        default=None,
        description="1, or 2 and more once a member took the interview over from a dead one.",
    )
    connected_at: str | None = None
    ended_at: str | None = None
    duration_seconds: float | None = None
    debited_seconds: int | None = None
    request_id: str


class RecordingNotice(_Answer):
    recording: bool
    notice: str
    simulated: bool = Field(
        description="The interviewer is a simulator: the page shows a practice banner."
    )


# ---------------------------------------------------------------------- operator
class Stats(_Answer):
    """GET /api/stats: this member's view (the dashboard's data; see docs/operations.md),
    or with ``scope=cluster`` every member's ``instances`` and ``sessions``."""

    request_id: str


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scope: Literal["member", "cluster"] | None = Field(
        default=None, description="cluster: every live member's view."
    )


class DrainRequest(BaseModel):
    member: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description='A member id, or "*" for every member.'
    )


class DrainAccepted(_Answer):
    member: str
    all: bool
    request_id: str


# ---------------------------------------------------------------------- recordings
class Recording(_Answer):
    id: str = Field(pattern=r"^rec_[0-9a-f]{16}$")
    session_id: str
    interview_id: str | None = Field(description="The interview it recorded, if any.")
    user_id: int | None = None
    candidate_email: str | None = Field(description="The candidate's e-mail address.")
    status: Literal["recording", "rendering", "ready", "failed", "deleted"]
    status_reason: str | None = None
    format: str
    storage: str
    duration_s: float | None = None
    durations_s: Any = None
    bytes: int | None = None
    sha256: str | None = None
    files: Any = None
    recovered_after_crash: bool
    packets_recorded: Any = None
    packets_dropped: Any = None
    gaps_filled: Any = None
    created_at: str
    finished_at: str | None = None
    deleted_at: str | None = None


class RecordingOne(Recording):
    request_id: str


class RecordingList(Page):
    items: list[Recording]
    total: int = Field(description="Recordings matching the filters.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The next page by offset (older clients).")
    request_id: str
