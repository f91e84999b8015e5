"""POST /api/realtime-session: admission, then the upstream mint; 201 with the session."""

from __future__ import annotations

import logging

from aiohttp import web

from relay.media.ice import browser_ice_servers
from relay.observability.logging import request_banner
from relay.observability.request_context import current, current_request_id
from relay.recording.consent import recording_notice_shown
from relay.services import SERVICES
from relay.web.body import read_json_object
from relay.web.caller import authenticate

log = logging.getLogger("relay.http")


async def create_realtime_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "REALTIME SESSION") as banner:
        # The body is optional; when present it must be a JSON object.
        fields = await read_json_object(
            request, services.settings.server.max_body_bytes, allow_empty=True
        )
        notice_shown = recording_notice_shown(fields)
        services.sessions.refuse_if_draining()
        caller = await authenticate(request)
        entry = await services.sessions.create(caller)
        if notice_shown and services.recordings is not None:
            await services.recordings.note_consent(entry.session_id)
        ctx = current()
        body = {
            "session_id": entry.session_id,
            "expires_at": services.sessions.expires_at(entry).isoformat(),
            "model": entry.minted.model if entry.minted else services.upstream.model,
            "ice_servers": browser_ice_servers(services.settings.ice, entry.session_id),
            "max_duration_seconds": int(entry.max_duration_s),
            # The candidate is told when the interviewer is the built-in simulator.
            "simulated": services.simulator is not None,
            "request_id": current_request_id(),
            "processing_time_ms": round(ctx.elapsed_ms(), 1) if ctx else 0.0,
        }
        banner.status = 201
        return web.json_response(body, status=201)


def register(app: web.Application) -> None:
    app.router.add_post("/api/realtime-session", create_realtime_session)
