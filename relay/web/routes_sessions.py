"""GET /api/sessions: every session (the interviews' and the plain tokens'), newest first,
with its candidate; filters by user, e-mail, interview, state and creation time. A
candidate reads its own session at GET /api/sessions/{id} (relay.web.routes_bridge)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from pydantic import BaseModel, Field

from relay.fields import Email, UtcDatetime
from relay.web.api import Api, Call, Operation, Reply, Response
from relay.web.pagination import Page, PageQuery, decode_cursor, page_of

State = Literal["pending", "connecting", "active", "ended", "failed"]


class SessionQuery(PageQuery):
    user_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    email: Email | None = Field(default=None, description="The candidate's e-mail.")
    interview_id: Annotated[str | None, Field(pattern=r"^iv_[0-9a-f]{32}$")] = None
    status: State | None = Field(default=None, description="The session's state.")
    since: UtcDatetime | None = Field(default=None, description="Created at or after.")
    until: UtcDatetime | None = Field(default=None, description="Created before.")


class SessionItem(BaseModel):
    session_id: str
    user_id: int
    candidate_email: str
    interview_id: str | None
    state: State
    model: str
    dialect: str
    relay_instance: str
    created_at: datetime
    connected_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    duration_seconds: float | None
    debited_seconds: int | None
    recording_status: str | None


class SessionList(Page):
    items: list[SessionItem]


def _item(row: asyncpg.Record) -> SessionItem:
    return SessionItem(
        session_id=row["id"],
        user_id=row["user_id"],
        candidate_email=row["email"],
        interview_id=row["interview_id"],
        state=row["state"],
        model=row["model"],
        dialect=row["dialect"],
        relay_instance=row["relay_instance"],
        created_at=row["created_at"],
        connected_at=row["connected_at"],
        ended_at=row["ended_at"],
        end_reason=row["end_reason"],
        duration_seconds=row["duration_seconds"],
        debited_seconds=row["debited_seconds"],
        recording_status=row["recording_status"],
    )


async def list_sessions(call: Call) -> Reply:
    query = call.query(SessionQuery)
    rows = await call.services.session_list.page(
        limit=query.limit + 1,
        after=decode_cursor(query.cursor),
        user_id=query.user_id,
        email=query.email,
        interview_id=query.interview_id,
        state=query.status,
        since=query.since,
        until=query.until,
    )
    items, cursor = page_of(rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return Reply(200, SessionList(items=[_item(r) for r in items], next_cursor=cursor))


def register(api: Api) -> None:
    api.add(
        Operation(
            "GET",
            "/api/sessions",
            "listSessions",
            "Sessions, newest first, with their candidate and interview",
            auth="read",
            tag="sessions",
            run=list_sessions,
            query=SessionQuery,
            responses=(Response(200, "A page of sessions.", SessionList),),
            errors={400: ("invalid_cursor",)},
        )
    )
