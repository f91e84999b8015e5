"""Interviews (design.md §10): create (with the candidate link), list, read, cancel.

POST /api/interviews                     admin   201 Interview with candidate_url (once)
GET  /api/interviews?status=&email=&…    read    newest first, cursor pagination
GET  /api/interviews/{interview_id}      read    with its sessions and recordings
POST /api/interviews/{interview_id}/cancel admin its live sessions end (reason cancelled);
                                                 no body, or {} (a field: 400, as elsewhere)
POST /api/interviews/{interview_id}/invite admin a new candidate link; the old one stops
DELETE /api/interviews/{interview_id}    admin   erase it and everything of it (204)
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import Field

from relay.errors import ApiError
from relay.fields import Email, UtcDatetime
from relay.interviews.models import (
    CREATE_BODY_MAX_BYTES,
    INTERVIEW_ID_PATTERN,
    Interview,
    InterviewCreate,
    Status,
)
from relay.interviews.rows import CandidateErasing, CandidateInactive, InterviewRecord
from relay.interviews.service import effective_status, view
from relay.services import SERVICES
from relay.web.api import Api, Call, NoFields, Operation, PathParam, Reply, Response
from relay.web.forwarded import forwarded_over_tls
from relay.web.pagination import Page, PageQuery, decode_cursor, page_of

_ID = re.compile(INTERVIEW_ID_PATTERN)
_NOT_FOUND = ("interview_not_found",)


class InterviewQuery(PageQuery):
    status: Status | None = None
    email: Email | None = Field(default=None, description="The candidate's e-mail.")
    user_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    since: UtcDatetime | None = Field(default=None, description="Created at or after.")
    until: UtcDatetime | None = Field(default=None, description="Created before.")


class InterviewList(Page):
    items: list[Interview]


def public_base(request: web.Request) -> str:
    """Where candidates reach this relay: ``server.public_url``, else the origin of this
    request (its scheme as a trusted proxy reports it)."""
    services = request.app[SERVICES]
    configured = services.settings.server.public_url
    if configured:
        return configured
    proxies = services.settings.server.trusted_proxies
    over_tls = request.secure or forwarded_over_tls(
        request.remote, request.headers.getall("X-Forwarded-Proto", []), proxies
    )
    return f"{'https' if over_tls else 'http'}://{request.host}"


def _interview_id(call: Call) -> str:
    value = call.path("interview_id")
    if not _ID.fullmatch(value):
        raise ApiError(404, "interview_not_found", "No such interview.")
    return value


async def create_interview(call: Call) -> Reply:
    spec = call.body(InterviewCreate)
    principal = call.require_principal()

    def answer(created: tuple[InterviewRecord, str]) -> Reply:
        record, url = created
        return Reply(201, view(record, url=url, sessions=[], recordings=[]))

    try:
        created = await call.services.interviews.create(
            spec,
            created_by=principal.id,
            base_url=public_base(call.request),
            within=call.answer_within(answer),
        )
    except CandidateErasing:
        raise ApiError(
            409,
            "user_being_erased",
            "The candidate's user is being erased (DELETE /api/users/{id}); once it is gone, "
            "the address can be invited again.",
            retryable=True,
        ) from None
    except CandidateInactive:
        raise ApiError(
            409,
            "user_inactive",
            "The candidate's user is deactivated; reactivate it (PATCH /api/users/{id}) first.",
        ) from None
    return answer(created)


async def list_interviews(call: Call) -> Reply:
    query = call.query(InterviewQuery)
    rows = await call.services.interviews.rows.page(
        limit=query.limit + 1,
        after=decode_cursor(query.cursor),
        status=query.status,
        email=query.email,
        user_id=query.user_id,
        since=query.since,
        until=query.until,
    )
    items, cursor = page_of(rows, query.limit, _position)
    return Reply(200, InterviewList(items=[view(r) for r in items], next_cursor=cursor))


def _position(record: InterviewRecord) -> tuple[datetime, str]:
    assert record.created_at is not None
    return record.created_at, record.id


async def get_interview(call: Call) -> Reply:
    interview_id = _interview_id(call)
    found = await call.services.interviews.detail(interview_id)
    if found is None:
        raise ApiError(404, "interview_not_found", "No such interview.")
    return Reply(200, found)


async def cancel_interview(call: Call) -> Reply:
    interview_id = _interview_id(call)

    def answer(found: tuple[InterviewRecord, bool]) -> Reply | None:
        # Only a cancelled interview is a success (closed otherwise: 409, below).
        return Reply(200, view(found[0])) if found[0].status == "cancelled" else None

    result = await call.services.interviews.cancel(interview_id, within=call.answer_within(answer))
    if result is None:
        raise ApiError(404, "interview_not_found", "No such interview.")
    record, _ = result
    if record.status != "cancelled":
        raise ApiError(
            409,
            "interview_not_cancellable",
            f"This interview is {record.status}; only a scheduled or in-progress one cancels.",
            details={"interview_status": record.status},
        )
    return Reply(200, view(record))


async def new_invite(call: Call) -> Reply:
    interview_id = _interview_id(call)

    def answer(found: tuple[InterviewRecord, str | None]) -> Reply | None:
        record, url = found
        return None if url is None else Reply(200, view(record, url=url))

    result = await call.services.interviews.new_link(
        interview_id, base_url=public_base(call.request), within=call.answer_within(answer)
    )
    if result is None:
        raise ApiError(404, "interview_not_found", "No such interview.")
    record, url = result
    if url is None:
        status = effective_status(record)
        raise ApiError(
            409,
            "interview_not_open",
            f"This interview is {status}; only a scheduled or in-progress one before its "
            "expires_at gets a new link.",
            details={"interview_status": status},
        )
    return Reply(200, view(record, url=url))


async def delete_interview(call: Call) -> Reply:
    interview_id = _interview_id(call)
    if not await call.services.erasure.request_interview(interview_id):
        raise ApiError(404, "interview_not_found", "No such interview.")
    return Reply(204)


_INTERVIEW_ID = PathParam("interview_id", "The interview's id.", INTERVIEW_ID_PATTERN)


def register(api: Api) -> None:
    api.add(
        Operation(
            "POST",
            "/api/interviews",
            "createInterview",
            "Create an interview: its interviewer, budget and the candidate's link",
            auth="admin",
            tag="interviews",
            run=create_interview,
            body=InterviewCreate,
            body_floor_bytes=CREATE_BODY_MAX_BYTES,
            idempotent=True,
            description="The candidate (by e-mail) is found or created. candidate_url carries "
            "the invite, a bearer credential for this interview's candidate endpoints only, "
            "shown in this answer only.",
            responses=(Response(201, "The interview, with candidate_url.", Interview),),
            errors={403: ("insufficient_scope",), 409: ("user_inactive", "user_being_erased")},
        ),
        Operation(
            "GET",
            "/api/interviews",
            "listInterviews",
            "Interviews, newest first",
            auth="read",
            tag="interviews",
            run=list_interviews,
            query=InterviewQuery,
            responses=(Response(200, "A page of interviews.", InterviewList),),
            errors={400: ("invalid_cursor",)},
        ),
        Operation(
            "GET",
            "/api/interviews/{interview_id}",
            "getInterview",
            "One interview, with its sessions and recordings",
            auth="read",
            tag="interviews",
            run=get_interview,
            path_params=(_INTERVIEW_ID,),
            responses=(Response(200, "The interview.", Interview),),
            errors={404: _NOT_FOUND},
        ),
        Operation(
            "POST",
            "/api/interviews/{interview_id}/cancel",
            "cancelInterview",
            "Cancel an interview; its live sessions end (reason cancelled) wherever they are",
            auth="admin",
            tag="interviews",
            run=cancel_interview,
            path_params=(_INTERVIEW_ID,),
            body=NoFields,
            body_optional=True,
            idempotent=True,
            responses=(Response(200, "The interview, cancelled.", Interview),),
            errors={
                403: ("insufficient_scope",),
                404: _NOT_FOUND,
                409: ("interview_not_cancellable",),
            },
        ),
        Operation(
            "POST",
            "/api/interviews/{interview_id}/invite",
            "replaceInterviewInvite",
            "A new candidate link for an open interview; the old link stops working at once",
            auth="admin",
            tag="interviews",
            run=new_invite,
            path_params=(_INTERVIEW_ID,),
            body=NoFields,
            body_optional=True,
            idempotent=True,
            description="For a candidate who lost the link, or a link that leaked. The "
            "interview must be scheduled or in progress and before its expires_at. From this "
            "answer on, the old invite opens nothing (401 invalid_token, as any unknown "
            "token), resuming a dropped session included; a session already live keeps "
            "running. candidate_url carries the new invite, shown in this answer only "
            "(again with the same Idempotency-Key).",
            responses=(Response(200, "The interview, with its new candidate_url.", Interview),),
            errors={
                403: ("insufficient_scope",),
                404: _NOT_FOUND,
                409: ("interview_not_open",),
            },
        ),
        Operation(
            "DELETE",
            "/api/interviews/{interview_id}",
            "deleteInterview",
            "Erase an interview and everything of it: sessions, transcripts, recordings",
            auth="admin",
            tag="interviews",
            run=delete_interview,
            path_params=(_INTERVIEW_ID,),
            description="From this answer on the interview is gone for the API (404 "
            "interview_not_found, a second DELETE too) and its candidate link opens nothing. "
            "A live session of it ends first, on whichever member holds it (reason "
            "cancelled). Its sessions, their conversation's text, its recordings (files and "
            "rows) and its stored webhook events (with their deliveries and delivery log) are "
            "deleted at once when nothing is in the way, else as soon as it is (the session "
            "has ended and its recording is finalised, an object store that did not answer "
            "answers again): files first, rows last. Then the webhook event "
            "interview.deleted {interview_id, deleted_at} says it is done. The candidate's "
            "user stays (DELETE /api/users/{user_id} erases it).",
            responses=(Response(204, "Erased, or being erased (see the description)."),),
            errors={403: ("insufficient_scope",), 404: _NOT_FOUND},
        ),
    )
