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

from relay.admission.service import database_error
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.media.sdp import InvalidOffer, invalid_offer_error, validate_offer
from relay.observability.logging import request_banner, stage
from relay.observability.request_context import bind_session, current, current_request_id
from relay.services import SERVICES, Services
from relay.sessions.registry import is_session_id
from relay.web.body import read_json_object
from relay.web.caller import authenticate, owner_or_operator

log = logging.getLogger("relay.http")


def _exchange_fields(body: dict[str, Any]) -> tuple[str, str]:
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not is_session_id(session_id):
        raise ApiError(400, "invalid_request", "session_id must be a session id (is_<32 hex>).")
    if body.get("type") != "offer":
        raise ApiError(400, "invalid_request", 'type must be "offer".')
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise ApiError(400, "invalid_offer", "Invalid SDP offer: sdp must be a string.")
    return session_id, sdp


async def webrtc_exchange(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "WEBRTC EXCHANGE") as banner:
        stage(log, "WEBRTC_EXCHANGE_START")
        caller = await authenticate(request)
        body = await read_json_object(request)
        session_id, sdp = _exchange_fields(body)
        services.sessions.refuse_if_draining()
        try:
            validate_offer(sdp, max_bytes=services.settings.session.max_sdp_bytes)
        except InvalidOffer as exc:
            raise invalid_offer_error(exc) from None
        manager = services.bridges
        manager.refuse_if_no_media_ports()
        # Nothing awaits between the claim and the bridge: each of the two releases
        # everything the session holds when it fails (relay.sessions.service,
        # relay.media.manager), and a failure between them would have no owner.
        entry = await services.sessions.claim(session_id, caller)
        bind_session(entry.session_id)
        # Synchronous (its hash is kept on the entry and written with the next state):
        # what the page resumes this session with (POST /api/sessions/{id}/resume).
        resume_token = manager.issue_resume_token(entry)
        bridge = await manager.open(entry, sdp, current_request_id())
        ctx = current()
        banner.status = 201
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
        return web.json_response(answer, status=201)


async def get_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = await authenticate(request)
    session_id = _path_session_id(request)
    entry = services.registry.get(session_id)
    body: dict[str, Any]
    if entry is not None and entry.user_id == caller.user.id:
        body = {
            "session_id": entry.session_id,
            "state": entry.state,
            "end_reason": None,
            "expires_at": services.sessions.expires_at(entry).isoformat(),
            "max_duration_seconds": int(entry.max_duration_s),
            "parts": entry.part,
        }
        bridge = entry.bridge
        if bridge is not None:
            media = bridge.stats()
            body["active_seconds"] = media["active_s"]
            body["media"] = media
    else:
        record = await _session_row(services, session_id)
        if record is None or record.user_id != caller.user.id:
            raise ApiError(404, "session_not_found", "No such session for this user.")
        body = record.to_json()
    body["request_id"] = current_request_id()
    return web.json_response(body)


async def delete_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = await owner_or_operator(request)
    operator = caller is None
    user_id = caller.user.id if caller is not None else None
    session_id = _path_session_id(request)
    entry = services.registry.get(session_id)
    if entry is not None and (operator or entry.user_id == user_id):
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
        return web.Response(status=204)
    record = await _session_row(services, session_id)
    if record is None or not (operator or record.user_id == user_id):
        raise ApiError(404, "session_not_found", "No such session for this user.")
    if record.state in ("pending", "connecting", "active"):
        # Held by another member: it hangs up when the command reaches it.
        reason = "operator_hangup" if operator else "hangup"
        log.info("[%s] SESSION_HANGUP %s (%s, elsewhere)", current_request_id(), session_id, reason)
        await _end_elsewhere(services, session_id, reason)
    return web.Response(status=204)  # over, or ending where it is held


async def _end_elsewhere(services: Services, session_id: str, reason: str) -> None:
    try:
        await services.cluster.publish(
            {"op": "end_session", "session_id": session_id, "reason": reason}
        )
    except DatabaseUnavailable as exc:
        raise database_error(exc, services.settings.database.retry_after_s) from exc


def _path_session_id(request: web.Request) -> str:
    """The path's session id, refused by its form before any lookup.

    A malformed id names no session, so it gets the same 404 as an unknown one (and a
    NUL byte or a 10 kB path never reaches PostgreSQL).
    """
    session_id = request.match_info["session_id"]
    if not is_session_id(session_id):
        raise ApiError(404, "session_not_found", "No such session for this user.")
    return session_id


async def _session_row(services: Services, session_id: str) -> Any:
    try:
        return await services.session_rows.get_session(session_id)
    except DatabaseUnavailable as exc:
        raise database_error(exc, services.settings.database.retry_after_s) from exc


def register(app: web.Application) -> None:
    app.router.add_post("/api/webrtc-exchange", webrtc_exchange)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
