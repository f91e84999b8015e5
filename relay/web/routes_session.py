"""POST /api/realtime-session: admission, then the upstream mint; 201 with the session.
GET /api/recording-notice: what the page shows before Start (relay.recording.consent).

Creations pass the admission gate (relay.admission.gate): at most
``limits.max_inflight_admissions`` run at once, the rest wait briefly for a slot or get 503
``overloaded`` with Retry-After before they cost the database anything.
"""

from __future__ import annotations

import logging

from aiohttp import web

from relay.admission.gate import AdmissionGate
from relay.config import LimitsConfig
from relay.errors import ApiError
from relay.media.ice import browser_ice_servers
from relay.observability.logging import request_banner
from relay.observability.metrics import MetricsRegistry
from relay.observability.request_context import current, current_request_id
from relay.recording.consent import recording_notice_shown, require_notice_shown
from relay.services import SERVICES
from relay.web.body import read_json_object
from relay.web.caller import authenticate

log = logging.getLogger("relay.http")

ADMISSION_GATE = web.AppKey("admission_gate", AdmissionGate)


def client_gone(request: web.Request) -> bool:
    """The client closed its connection (aiohttp drops the transport when it does)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def create_realtime_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    gate = request.app[ADMISSION_GATE]
    with request_banner(log, "REALTIME SESSION") as banner:
        services.sessions.refuse_if_draining()
        async with gate.slot():
            if client_gone(request):
                # It waited for a slot longer than its client did: nobody reads the answer,
                # so the slot goes to the next request before this one costs anything.
                gate.shed_client_gone()
                log.info("[%s] client gone before admission", current_request_id())
                raise ApiError(499, "client_closed_request", "The client closed the request.")
            caller = await authenticate(request)
            # Only a known caller's body is read. It is optional; when present it must be a
            # JSON object.
            fields = await read_json_object(request, allow_empty=True)
            notice_shown = recording_notice_shown(fields)
            require_notice_shown(services.settings.recording, notice_shown)
            entry = await services.sessions.create(caller)
            if notice_shown:
                await services.recordings.note_consent(entry.session_id)
        ctx = current()
        body = {
            "session_id": entry.session_id,
            "expires_at": services.sessions.expires_at(entry).isoformat(),
            "model": entry.minted.model if entry.minted else services.upstream.model,
            "ice_servers": browser_ice_servers(services.settings.ice, entry.session_id),
            "max_duration_seconds": int(entry.max_duration_s),
            # The candidate is told when the interviewer is a simulator (built-in or shared).
            "simulated": services.simulated,
            "request_id": current_request_id(),
            "processing_time_ms": round(ctx.elapsed_ms(), 1) if ctx else 0.0,
        }
        banner.status = 201
        return web.json_response(body, status=201)


async def recording_notice(request: web.Request) -> web.Response:
    """GET /api/recording-notice (public): what the page shows before Start (the notice,
    and the practice banner when the interviewer is a simulator)."""
    services = request.app[SERVICES]
    config = services.settings.recording
    return web.json_response(
        {
            "recording": config.enabled,
            "notice": config.notice_text if config.enabled else "",
            "simulated": services.simulated,
        }
    )


def register(app: web.Application, limits: LimitsConfig, metrics: MetricsRegistry) -> None:
    app[ADMISSION_GATE] = AdmissionGate(
        max_inflight=limits.max_inflight_admissions,
        queue_timeout_s=limits.admission_queue_timeout_s,
        retry_after_s=limits.retry_after_s,
        metrics=metrics,
    )
    app.router.add_post("/api/realtime-session", create_realtime_session)
    app.router.add_get("/api/recording-notice", recording_notice)
