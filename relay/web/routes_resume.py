"""POST /api/sessions/{id}/resume: a dropped or reloaded page takes its interview back.

Body ``{resume_token, type: "offer", sdp}`` with the candidate's credential (the same
as the exchange's): both are needed, neither alone resumes a live session. 201
``{type: "answer", sdp, session_id, resume_token, request_id, processing_time_ms}`` on the
same session (same upstream call and conversation; after a take-over from a dead member,
a new upstream session seeded with the conversation so far). The token in the answer
replaces the one sent, which is spent. Errors: 404 unknown, 410 ``session_ended``,
409 ``resume_token_invalid`` / ``session_not_resumable`` / ``resume_in_progress``, 400
``invalid_offer``, 503 retryable while the session moves between members
(relay.cluster.resume; docs/operations.md, "Continuity").
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from relay.cluster.resume import FORWARD_HOPS_HEADER, FORWARDED_BY_HEADER, Forwarded
from relay.errors import ApiError
from relay.media.sdp import InvalidOffer, invalid_offer_error, validate_offer
from relay.observability.logging import request_banner, stage
from relay.observability.request_context import bind_session, current, current_request_id
from relay.services import SERVICES
from relay.sessions.continuity import is_resume_token
from relay.sessions.registry import is_session_id
from relay.web.body import read_json_object
from relay.web.caller import authenticate

log = logging.getLogger("relay.http")


def _path_session_id(request: web.Request) -> str:
    """Refused by its form before any lookup, with the 404 of an unknown session."""
    session_id = request.match_info["session_id"]
    if not is_session_id(session_id):
        raise ApiError(404, "session_not_found", "No such session for this user.")
    return session_id


def _hops(request: web.Request) -> int:
    """How many times a member forwarded this resume (a client's own value only makes it
    give up sooner)."""
    value = request.headers.get(FORWARD_HOPS_HEADER, "0")
    return int(value) if value.isdigit() and len(value) <= 3 else 0


def _resume_fields(body: dict[str, Any]) -> tuple[str, str]:
    token = body.get("resume_token")
    if not is_resume_token(token):
        raise ApiError(400, "invalid_request", "resume_token must be a resume token (rs_…).")
    assert isinstance(token, str)
    if body.get("type") != "offer":
        raise ApiError(400, "invalid_request", 'type must be "offer".')
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise ApiError(400, "invalid_offer", "Invalid SDP offer: sdp must be a string.")
    return token, sdp


async def resume_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "SESSION RESUME") as banner:
        stage(log, "SESSION_RESUME_START")
        caller = await authenticate(request)
        session_id = _path_session_id(request)
        body = await read_json_object(request)
        token, sdp = _resume_fields(body)
        try:
            validate_offer(sdp, max_bytes=services.settings.session.max_sdp_bytes)
        except InvalidOffer as exc:
            raise invalid_offer_error(exc) from None
        bind_session(session_id)
        result = await services.resume.resume(
            session_id,
            caller,
            token,
            sdp,
            request_id=current_request_id(),
            authorization=request.headers.get("Authorization", ""),
            forwarded_by=request.headers.get(FORWARDED_BY_HEADER),
            hops=_hops(request),
        )
        if isinstance(result, Forwarded):
            banner.status = result.status
            stage(log, "SESSION_RESUME_FORWARDED")
            return web.json_response(result.body, status=result.status)
        ctx = current()
        banner.status = 201
        stage(log, "SESSION_RESUME_COMPLETE")
        return web.json_response(
            {
                "type": "answer",
                "sdp": result.answer_sdp,
                "session_id": session_id,
                "resume_token": result.resume_token,
                "request_id": current_request_id(),
                "processing_time_ms": round(ctx.elapsed_ms(), 1) if ctx else 0.0,
            },
            status=201,
        )


def register(app: web.Application) -> None:
    app.router.add_post("/api/sessions/{session_id}/resume", resume_session)
