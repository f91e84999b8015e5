"""POST /api/realtime-session: admission, then the upstream mint; 201 with the session.
GET /api/recording-notice: what the page shows before Start (relay.recording.consent).

Creations pass the admission gate (relay.admission.gate): at most
``limits.max_inflight_admissions`` run at once, the rest wait briefly for a slot or get 503
``overloaded`` with Retry-After before they cost the database anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from relay.admission.gate import AdmissionGate
from relay.admission.service import Caller
from relay.admission.tokens import INVITE_PREFIX, bearer_token
from relay.config import LimitsConfig
from relay.errors import ApiError
from relay.fields import iso_utc
from relay.media.ice import browser_ice_servers
from relay.observability.logging import request_banner
from relay.observability.metrics import MetricsRegistry
from relay.observability.request_context import current, current_request_id
from relay.recording.consent import recording_notice_shown, require_notice_shown
from relay.services import SERVICES, Services
from relay.sessions.registry import SessionEntry
from relay.web import idempotency
from relay.web.api import Api, Operation, Response
from relay.web.body import parse_json_object, read_body
from relay.web.caller import authenticate
from relay.web.schemas import RealtimeSession, RealtimeSessionRequest, RecordingNotice

log = logging.getLogger("relay.http")

ADMISSION_GATE = web.AppKey("admission_gate", AdmissionGate)


def client_gone(request: web.Request) -> bool:
    """The client closed its connection (aiohttp drops the transport when it does)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@asynccontextmanager
async def admitting(request: web.Request) -> AsyncIterator[Caller]:
    """The start of every session creation (here and the OpenAI-compatible client secret):
    not while draining, within an admission slot, the caller authenticated (its body is
    read only then)."""
    services = request.app[SERVICES]
    gate = request.app[ADMISSION_GATE]
    services.sessions.refuse_if_draining()
    async with gate.slot():
        if client_gone(request):
            # It waited for a slot longer than its client did: nobody reads the answer,
            # so the slot goes to the next request before this one costs anything.
            gate.shed_client_gone()
            log.info("[%s] client gone before admission", current_request_id())
            raise ApiError(499, "client_closed_request", "The client closed the request.")
        yield await authenticate(request)


async def start_session(services: Services, caller: Caller, notice_shown: bool) -> SessionEntry:
    """A new pending session for ``caller``: the recording-notice rule, admission and the
    upstream mint (relay.sessions.service), the candidate's consent noted."""
    # A closed interview's link, an inactive account: 403 before asking for the notice.
    services.admission.check_standing(caller)
    require_notice_shown(
        services.settings.recording,
        notice_shown,
        recorded=caller.interview.recording if caller.interview else True,
    )
    entry = await services.sessions.create(caller)
    if notice_shown:
        await services.recordings.note_consent(entry.session_id)
    return entry


async def create_realtime_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "REALTIME SESSION") as banner:
        async with admitting(request) as caller:
            # Only a known caller's body is read. It is optional; when present it must be a
            # JSON object.
            raw = await read_body(request)
            fields = parse_json_object(raw, allow_empty=True)
            notice_shown = recording_notice_shown(fields)

            async def create() -> tuple[int, dict[str, object], dict[str, str]]:
                entry = await start_session(services, caller, notice_shown)
                ctx = current()
                body: dict[str, object] = {
                    "session_id": entry.session_id,
                    "expires_at": iso_utc(services.sessions.expires_at(entry)),
                    "model": entry.minted.model if entry.minted else services.upstream.model,
                    "ice_servers": browser_ice_servers(services.settings.ice, entry.session_id),
                    "max_duration_seconds": int(entry.max_duration_s),
                    # The candidate is told when the interviewer is a simulator (built-in or
                    # shared).
                    "simulated": services.simulated,
                    "request_id": current_request_id(),
                    "processing_time_ms": round(ctx.elapsed_ms(), 1) if ctx else 0.0,
                }
                return 201, body, {}

            # A retried request with the same Idempotency-Key gets the same session.
            response = await idempotency.run(
                request, idempotency.candidate_key(caller.token_hash), raw, create
            )
        banner.status = response.status
        return response


async def recording_notice(request: web.Request) -> web.Response:
    """GET /api/recording-notice (public): what the page shows before Start (the notice,
    and the practice banner when the interviewer is a simulator). With an interview's
    invite, that interview's answer (one created with ``recording: false`` records
    nothing)."""
    services = request.app[SERVICES]
    config = services.settings.recording
    recorded = config.enabled
    token = bearer_token(request.headers.get("Authorization"))
    if token is not None and token.startswith(INVITE_PREFIX):
        caller = await authenticate(request)
        if caller.interview is not None:
            recorded = recorded and caller.interview.recording
    return web.json_response(
        {
            "recording": recorded,
            "notice": config.notice_text if recorded else "",
            "simulated": services.simulated,
        }
    )


CANDIDATE_ERRORS: dict[int, tuple[str, ...]] = {
    401: ("missing_token", "invalid_token"),
    429: ("too_many_failed_authentications",),
    503: ("database_unavailable", "database_timeout"),
}


def register(
    api: Api, app: web.Application, limits: LimitsConfig, metrics: MetricsRegistry
) -> None:
    app[ADMISSION_GATE] = AdmissionGate(
        max_inflight=limits.max_inflight_admissions,
        queue_timeout_s=limits.admission_queue_timeout_s,
        retry_after_s=limits.retry_after_s,
        metrics=metrics,
    )
    api.add(
        Operation(
            "POST",
            "/api/realtime-session",
            "createRealtimeSession",
            "Start an interview session: admission, then the upstream mint",
            auth="candidate",
            tag="candidate",
            raw=create_realtime_session,
            body=RealtimeSessionRequest,
            body_optional=True,
            idempotent=True,
            description="With an invite (ri_…) the session is that interview's: its "
            "interviewer, its budget. A plain user token gets the configured interviewer "
            "and the user's seconds.",
            responses=(Response(201, "The session; exchange its offer next.", RealtimeSession),),
            errors={
                **CANDIDATE_ERRORS,
                400: ("invalid_json", "invalid_field", "invalid_idempotency_key"),
                403: ("user_inactive", "no_credit", "interview_closed"),
                409: (
                    "recording_notice_required",
                    "session_closed",
                    "credit_in_use",
                    "idempotency_key_in_use",
                ),
                410: ("session_superseded",),
                413: ("body_too_large",),
                422: ("idempotency_key_reused",),
                429: ("too_many_failed_authentications", "rate_limited", "too_many_sessions"),
                502: ("upstream_error",),
                503: ("database_unavailable", "overloaded", "over_capacity", "draining"),
                504: ("upstream_timeout",),
            },
        ),
        Operation(
            "GET",
            "/api/recording-notice",
            "getRecordingNotice",
            "The recording notice the candidate page shows before Start",
            auth="anyone",
            tag="candidate",
            raw=recording_notice,
            description="Public; with an interview's invite (optional), the answer for that "
            "interview.",
            errors=CANDIDATE_ERRORS,
            responses=(
                Response(200, "Whether interviews are recorded, and the notice.", RecordingNotice),
            ),
        ),
    )
