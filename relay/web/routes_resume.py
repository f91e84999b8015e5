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
from relay.web import idempotency
from relay.web.api import Api, Operation, PathParam, Response
from relay.web.body import parse_json_object, read_body
from relay.web.caller import authenticate
from relay.web.routes_session import CANDIDATE_ERRORS
from relay.web.schemas import ResumeAnswer, ResumeRequest

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
        raise invalid_offer_error(InvalidOffer("sdp must be a string."))
    return token, sdp


async def resume_session(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    with request_banner(log, "SESSION RESUME") as banner:
        stage(log, "SESSION_RESUME_START")
        caller = await authenticate(request)
        session_id = _path_session_id(request)
        raw = await read_body(request)
        token, sdp = _resume_fields(parse_json_object(raw))

        async def resume() -> tuple[int, dict[str, Any], dict[str, str]]:
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
                stage(log, "SESSION_RESUME_FORWARDED")
                return result.status, result.body, {}
            ctx = current()
            stage(log, "SESSION_RESUME_COMPLETE")
            answer = {
                "type": "answer",
                "sdp": result.answer_sdp,
                "session_id": session_id,
                "resume_token": result.resume_token,
                "reconnect_grace_s": services.settings.session.reconnect_grace_s,
                "request_id": current_request_id(),
                "processing_time_ms": round(ctx.elapsed_ms(), 1) if ctx else 0.0,
            }
            return 201, answer, {}

        # A retried resume with the same Idempotency-Key gets the same answer (its token
        # was spent by the first: without the key, the retry gets 409).
        response = await idempotency.run(
            request, idempotency.candidate_key(caller.token_hash), raw, resume
        )
        banner.status = response.status
        return response


def register(api: Api) -> None:
    api.add(
        Operation(
            "POST",
            "/api/sessions/{session_id}/resume",
            "resumeSession",
            "Take a dropped or reloaded page's interview back (same session and recording)",
            auth="candidate",
            tag="candidate",
            raw=resume_session,
            body=ResumeRequest,
            idempotent=True,
            path_params=(PathParam("session_id", "The session's id.", r"^is_[0-9a-f]{32}$"),),
            description=(
                "Needs both the candidate's credential and the session's current resume "
                "token (from the exchange's or the last resume's answer). The answer's "
                "resume_token replaces the one sent. A resume that reaches another member "
                "is served by the member holding the interview; if that member is gone, "
                "this one takes the interview over (docs/operations.md, 'Continuity')."
            ),
            responses=(
                Response(201, "The relay's SDP answer, on the same session.", ResumeAnswer),
            ),
            errors={
                **CANDIDATE_ERRORS,
                400: (
                    "invalid_json",
                    "invalid_request",
                    "invalid_offer",
                    "invalid_idempotency_key",
                ),
                404: ("session_not_found",),
                409: (
                    "resume_token_invalid",
                    "session_not_resumable",
                    "resume_in_progress",
                    "idempotency_key_in_use",
                ),
                410: ("session_ended",),
                413: ("body_too_large",),
                422: ("idempotency_key_reused",),
                # The member holding the session answered a forwarded resume with no JSON.
                502: ("resume_forward_failed",),
                503: ("resume_unavailable", "resume_failed", "database_unavailable", "draining"),
            },
        )
    )
