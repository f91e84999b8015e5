"""POST /api/webrtc-exchange, GET and DELETE /api/sessions/{id}.

The exchange answers the browser's SDP offer: the relay terminates the browser's
WebRTC leg itself and does its own SDP exchange with the upstream (relay.media).
A session id is usable once; an invalid offer is refused before the session is
claimed, so the browser can fix its offer and retry with the same session.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from relay.admission.service import Caller, database_error
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.fields import iso_utc
from relay.media.bridge import Bridge
from relay.media.sdp import InvalidOffer, invalid_offer_error, validate_offer
from relay.observability.logging import request_banner, stage
from relay.observability.request_context import bind_session, current, current_request_id
from relay.services import SERVICES, Services
from relay.sessions.registry import is_session_id
from relay.web import idempotency
from relay.web.api import Api, Operation, PathParam, Response
from relay.web.body import parse_json_object, read_body
from relay.web.caller import authenticate, owner_or_operator, owner_or_reader
from relay.web.routes_session import CANDIDATE_ERRORS
from relay.web.schemas import ExchangeAnswer, ExchangeRequest, SessionState

log = logging.getLogger("relay.http")


def _exchange_fields(body: dict[str, Any]) -> tuple[str, str]:
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not is_session_id(session_id):
        raise ApiError(400, "invalid_request", "session_id must be a session id (is_<32 hex>).")
    if body.get("type") != "offer":
        raise ApiError(400, "invalid_request", 'type must be "offer".')
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise invalid_offer_error(InvalidOffer("sdp must be a string."))
    return session_id, sdp


async def open_bridge(
    services: Services, session_id: str, caller: Caller, sdp: str, *, resumable: bool = True
) -> tuple[Bridge, str | None]:
    """The exchange itself (here and the OpenAI-compatible call): the offer checked, the
    session claimed once across the cluster, both legs bridged; ``bridge.answer`` is the
    browser's answer, with the resume token of the session (None: resuming is off, or not
    ``resumable``: a client that cannot resume, whose dropped call then ends at once)."""
    services.sessions.refuse_if_draining()
    try:
        validate_offer(sdp, max_bytes=services.settings.session.max_sdp_bytes)
    except InvalidOffer as exc:
        raise invalid_offer_error(exc) from None
    manager = services.bridges
    manager.refuse_if_no_media_ports()
    seed = None
    if resumable and caller.interview is not None:
        # A rejoin goes on with what the interview's earlier sessions said (the candidate
        # page only: it is told the transcript; an OpenAI-shaped call gets no relay.*).
        try:
            seed = await manager.rejoin_seed(session_id, caller.interview.id)
        except DatabaseUnavailable as exc:
            raise database_error(exc, services.settings.database.retry_after_s) from exc
    # Nothing awaits between the claim and the bridge: each of the two releases
    # everything the session holds when it fails (relay.sessions.service,
    # relay.media.manager), and a failure between them would have no owner.
    entry = await services.sessions.claim(session_id, caller)
    bind_session(entry.session_id)
    # Synchronous (its hash is kept on the entry and written with the next state):
    # what the page resumes this session with (POST /api/sessions/{id}/resume).
    resume_token = manager.issue_resume_token(entry) if resumable else None
    return await manager.open(entry, sdp, current_request_id(), seed=seed), resume_token


async def webrtc_exchange(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "WEBRTC EXCHANGE") as banner:
        stage(log, "WEBRTC_EXCHANGE_START")
        caller = await authenticate(request)
        raw = await read_body(request)
        session_id, sdp = _exchange_fields(parse_json_object(raw))

        async def exchange() -> tuple[int, dict[str, Any], dict[str, str]]:
            bridge, resume_token = await open_bridge(services, session_id, caller, sdp)
            ctx = current()
            stage(log, "WEBRTC_EXCHANGE_COMPLETE")
            answer: dict[str, Any] = {
                "type": "answer",
                "sdp": bridge.answer,
                "session_id": session_id,
                "request_id": current_request_id(),
                "processing_time_ms": round(ctx.elapsed_ms(), 1) if ctx else 0.0,
            }
            if resume_token is not None:
                answer["resume_token"] = resume_token
                # How long the relay keeps this interview after a drop (the page counts it down).
                answer["reconnect_grace_s"] = services.settings.session.reconnect_grace_s
            return 201, answer, {}

        # A retried exchange with the same Idempotency-Key gets the same answer (a
        # session id is usable once: without the key, the retry gets 409).
        response = await idempotency.run(
            request, idempotency.candidate_key(caller.token_hash), raw, exchange
        )
        banner.status = response.status
        return response


async def get_session(request: web.Request) -> web.Response:
    """A session's state: for its candidate, or for the management API (the operator
    token, an API key of either scope: any session). Both get the same body, which holds
    no credential (the resume token is the page's alone and is never in it)."""
    services = request.app[SERVICES]
    caller = await owner_or_reader(request)
    session_id = _path_session_id(request)
    entry = services.registry.get(session_id)
    body: dict[str, Any]
    if entry is not None and (caller is None or caller.owns(entry.user_id, entry.interview_id)):
        body = {
            "session_id": entry.session_id,
            "state": entry.state,
            "end_reason": None,
            "expires_at": iso_utc(services.sessions.expires_at(entry)),
            "max_duration_seconds": int(entry.max_duration_s),
            "parts": entry.part,
        }
        bridge = entry.bridge
        if bridge is not None:
            media = bridge.stats()
            body["active_seconds"] = media["active_s"]
            body["media"] = media
    else:
        record = await services.session_rows.get_session(session_id)
        if record is None or not (
            caller is None or caller.owns(record.user_id, record.interview_id)
        ):
            raise ApiError(404, "session_not_found", "No such session for this user.")
        body = record.to_json()
    body["request_id"] = current_request_id()
    return web.json_response(body)


async def delete_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = await owner_or_operator(request)
    session_id = _path_session_id(request)
    if not await end_session(services, session_id, caller, ends_interview=True):
        raise ApiError(404, "session_not_found", "No such session for this user.")
    return web.Response(status=204)  # over, or ending where it is held


async def end_session(
    services: Services, session_id: str, caller: Caller | None, *, ends_interview: bool = False
) -> bool:
    """Hang up ``session_id`` for its candidate (``caller``) or the operator (None): both
    legs here, or where another member holds it. False: no such session of theirs.

    ``ends_interview``: the candidate page's End (``DELETE /api/sessions/{id}``), which
    also completes an interview waiting for a rejoin after that session (below). Not the
    OpenAI-compatible hang-up: a client's clean-up of a call that failed or lost its
    connection is no candidate's choice, and the interview stays open for a new call
    (docs/openai-compatible.md)."""
    operator = caller is None
    entry = services.registry.get(session_id)
    if entry is not None and (caller is None or caller.owns(entry.user_id, entry.interview_id)):
        bind_session(entry.session_id)
        reason = "operator_hangup" if operator else "hangup"
        log.info("[%s] SESSION_HANGUP %s (%s)", current_request_id(), session_id, reason)
        if entry.bridge is not None:
            await entry.bridge.close(reason)
        else:
            # Minted but never exchanged here: nothing to hang up, nothing used.
            await services.sessions.finish(entry, state="ended", reason=reason, duration_s=0.0)
            # It may have been exchanged on another member a moment ago.
            await _end_elsewhere(services, session_id, reason)
        return True
    record = await services.session_rows.get_session(session_id)
    if record is None or not (caller is None or caller.owns(record.user_id, record.interview_id)):
        return False
    if record.state in ("pending", "connecting", "active"):
        # Held by another member: it hangs up when the command reaches it.
        reason = "operator_hangup" if operator else "hangup"
        log.info("[%s] SESSION_HANGUP %s (%s, elsewhere)", current_request_id(), session_id, reason)
        # Written on the row too: a holder that died takes the command with it, and the
        # page's resume would take the session over and go on (relay.sessions.continuity).
        await services.session_rows.request_hangup(session_id, reason)
        await _end_elsewhere(services, session_id, reason)
    elif (
        ends_interview
        and not operator
        and record.interview_id is not None
        # Over already (the interviewer's service dropped it, the relay stopped, the
        # connection was lost): the candidate's page was rejoining by itself and the
        # candidate pressed End meanwhile. The interview then ends as theirs now, rather
        # than failed when its rejoin window has passed.
        and await services.session_rows.hang_up_interview(session_id)
    ):
        bind_session(session_id)
        log.info(
            "[%s] INTERVIEW_HANGUP %s after %s",
            current_request_id(),
            record.interview_id,
            session_id,
        )
    return True


async def _end_elsewhere(services: Services, session_id: str, reason: str) -> None:
    await services.cluster.publish(
        {"op": "end_session", "session_id": session_id, "reason": reason}
    )


def _path_session_id(request: web.Request) -> str:
    """The path's session id, refused by its form before any lookup.

    A malformed id names no session, so it gets the same 404 as an unknown one (and a
    NUL byte or a 10 kB path never reaches PostgreSQL).
    """
    session_id = request.match_info["session_id"]
    if not is_session_id(session_id):
        raise ApiError(404, "session_not_found", "No such session for this user.")
    return session_id


_SESSION_ID = PathParam("session_id", "The session's id.", r"^is_[0-9a-f]{32}$")


def register(api: Api) -> None:
    api.add(
        Operation(
            "POST",
            "/api/webrtc-exchange",
            "exchangeOffer",
            "Exchange the browser's SDP offer for the relay's answer (once per session)",
            auth="candidate",
            tag="candidate",
            raw=webrtc_exchange,
            body=ExchangeRequest,
            idempotent=True,
            responses=(Response(201, "The relay's SDP answer.", ExchangeAnswer),),
            errors={
                **CANDIDATE_ERRORS,
                400: (
                    "invalid_json",
                    "invalid_request",
                    "invalid_offer",
                    "invalid_idempotency_key",
                ),
                403: ("user_inactive", "no_credit", "interview_closed"),
                404: ("session_not_found", "session_expired"),
                409: (
                    "session_already_exchanged",
                    "session_not_ready",
                    "session_closed",
                    "credit_in_use",
                    "idempotency_key_in_use",
                ),
                410: ("session_superseded",),
                413: ("body_too_large",),
                422: ("idempotency_key_reused",),
                502: ("upstream_error",),
                503: ("database_unavailable", "draining", "no_media_ports"),
                504: ("upstream_timeout", "ice_gather_timeout"),
            },
        ),
        Operation(
            "GET",
            "/api/sessions/{session_id}",
            "getOwnSession",
            "A session's state; its candidate, the operator or an API key",
            auth="candidate",
            also_auth=("read",),
            tag="candidate",
            raw=get_session,
            path_params=(_SESSION_ID,),
            description="The operator token or an API key of either scope reads any "
            "session (the session_id of an interview.started event, say); a candidate reads "
            "its own. The same body for all.",
            responses=(Response(200, "The session's state and end reason.", SessionState),),
            errors={**CANDIDATE_ERRORS, 404: ("session_not_found",)},
        ),
        Operation(
            "DELETE",
            "/api/sessions/{session_id}",
            "endSession",
            "Hang up a session (both legs); its candidate, the operator or an admin key",
            auth="candidate",
            also_auth=("admin",),
            tag="candidate",
            raw=delete_session,
            path_params=(_SESSION_ID,),
            description="The operator token or an admin API key may end any session (end "
            "reason operator_hangup); a read key may not (403 insufficient_scope). A session "
            "already over answers 204 too; its candidate hanging up an interview's session "
            "that failed or lost the candidate's connection (the page was rejoining by "
            "itself) completes the interview with end reason hangup, when that session was "
            "its last that carried media and none of it is live.",
            responses=(
                Response(
                    204,
                    "Both legs hung up (or ending where the session is held), or the "
                    "session was over already.",
                ),
            ),
            errors={
                **CANDIDATE_ERRORS,
                403: ("insufficient_scope",),
                404: ("session_not_found",),
            },
        ),
    )
