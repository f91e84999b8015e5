"""What an interview is made of (``InterviewCreate``, validated the same way by the API and
by ``relay interviews create``) and how it is shown (``Interview``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from relay.fields import Email, Text, UtcDatetime, storable_json

METADATA_MAX_BYTES = 8192
MAX_INSTRUCTIONS_CHARS = 50_000
# The largest interview a client may send, as JSON: every instruction character and
# metadata byte escaped (\uXXXX, six bytes: what Python's json.dumps writes for any
# non-ASCII character of the Basic Multilingual Plane, so 50,000 characters of Japanese
# or Arabic fit), and room for the other fields. server.max_body_bytes (64 KiB) alone would
# cap such instructions near 10,000 characters.
CREATE_BODY_MAX_BYTES = 6 * (MAX_INSTRUCTIONS_CHARS + METADATA_MAX_BYTES) + 16 * 1024
INTERVIEW_ID_PATTERN = r"^iv_[0-9a-f]{32}$"
Status = Literal["scheduled", "in_progress", "completed", "expired", "cancelled", "failed"]


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    storable_json(value)
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > METADATA_MAX_BYTES:
        raise ValueError(f"must be at most {METADATA_MAX_BYTES} bytes as JSON")
    return value


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email = Field(description="The candidate's e-mail: their user, found or created.")
    name: Annotated[Text | None, Field(max_length=200)] = None


class InterviewCreate(BaseModel):
    """``POST /api/interviews``: one candidate's interview."""

    model_config = ConfigDict(extra="forbid")

    candidate: CandidateIn
    instructions: Annotated[Text, Field(min_length=1, max_length=MAX_INSTRUCTIONS_CHARS)] = Field(
        description="The interviewer's instructions: sent to the model, never to the candidate."
    )
    voice: Annotated[str | None, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = Field(
        default=None, description="The interviewer's voice (default: upstream.voice)."
    )
    language: Annotated[str | None, Field(pattern=r"^[a-z]{2}$")] = Field(
        default=None,
        description="ISO 639-1 code: the interview is held in it (the interviewer is told, "
        "and the transcription expects it).",
    )
    max_duration_s: Annotated[int | None, Field(ge=30, le=86400)] = Field(
        default=None,
        description="Seconds of conversation over all its sessions (default: "
        "interviews.default_max_duration_s).",
    )
    recording: bool = Field(default=True, description="Record its sessions.")
    metadata: Annotated[dict[str, Any], AfterValidator(_small_metadata)] = Field(
        default_factory=dict,
        description=f"Yours, returned with the same keys and values (≤ {METADATA_MAX_BYTES} B; "
        "as jsonb: key order is not kept).",
    )
    expires_at: UtcDatetime | None = Field(
        default=None,
        description="The link works until then (default: interviews.default_expires_s from now).",
    )

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(value.tzinfo):
            raise ValueError("must be in the future")
        if value is not None and value.year > 9000:
            raise ValueError("too far in the future")
        return value


class CandidateOut(BaseModel):
    email: str
    name: str | None
    user_id: int


class InterviewSession(BaseModel):
    session_id: str
    state: str
    created_at: datetime
    connected_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    duration_seconds: float | None


class InterviewRecording(BaseModel):
    id: str
    session_id: str
    status: str
    duration_s: float | None
    created_at: datetime
    audio_url: str
    transcript_url: str


class Interview(BaseModel):
    id: str = Field(pattern=INTERVIEW_ID_PATTERN)
    status: Status
    candidate: CandidateOut
    instructions: str
    voice: str | None
    language: str | None
    max_duration_s: int
    used_seconds: int = Field(description="Seconds its sessions have used.")
    remaining_seconds: int = Field(description="What is left of max_duration_s.")
    recording: bool
    metadata: dict[str, Any]
    expires_at: datetime
    end_reason: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    created_by: str
    candidate_url: str | None = Field(
        default=None,
        description="The candidate's link (<public URL>/#invite=ri_…): only in the answer "
        "that created the interview or gave it a new link (the invite is stored hashed).",
    )
    sessions: list[InterviewSession] | None = Field(
        default=None, description="Its sessions, newest first (GET of one interview)."
    )
    recordings: list[InterviewRecording] | None = Field(
        default=None, description="Its sessions' recordings, newest first (GET of one)."
    )
