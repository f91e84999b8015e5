"""The candidate side in OpenAI's shape: OpenAI's own clients work against the relay by
changing one base URL (docs/openai-compatible.md).

POST /v1/realtime/client_secrets          candidate credential (rt_… or ri_…) → 200
                                          {value: "ek_…", expires_at, session}
POST /v1/realtime/calls                   Bearer ek_…; application/sdp or OpenAI's multipart
                                          form (sdp, session) → 201 SDP answer + Location
POST /v1/realtime/calls/{call_id}/hangup  the call's ek_, its candidate, or the operator → 200

The client secret runs exactly what ``POST /api/realtime-session`` runs (the admission
slot, the credential, the recording-notice rule, admission and the upstream mint:
relay.web.routes_session.admitting / start_session) and answers with the relay's own
``ek_`` for the pending session (relay.admission.client_secrets), never the upstream's
secret. The call is the exchange of ``POST /api/webrtc-exchange``
(relay.web.routes_bridge.open_bridge) for that session; its call id is the session's
(``rtc_<hex>`` for ``is_<hex>``). A ``session`` the client sends, here or later as
``session.update`` on the events channel (relay.media.events), changes nothing the
interview defines. Errors take OpenAI's shape (relay.web.openai_shape).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from relay.admission.client_secrets import ClientSecretRows, new_client_secret
from relay.admission.service import Caller
from relay.admission.tokens import hash_token
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.observability.logging import request_banner, stage
from relay.services import SERVICES, Services
from relay.sessions.registry import SessionEntry
from relay.sessions.service import interview_overrides
from relay.web import idempotency
from relay.web.api import Api, Operation, PathParam, RequestBody, Response
from relay.web.body import read_body, validate_json_object
from relay.web.caller import authenticate_client_secret, call_owner
from relay.web.models_openai import (
    CALL_ID_PATTERN,
    CallForm,
    ClientSecret,
    ClientSecretRequest,
)
from relay.web.openai_session import effective_session
from relay.web.routes_bridge import end_session, open_bridge
from relay.web.routes_session import CANDIDATE_ERRORS, admitting, start_session

log = logging.getLogger("relay.http")

SDP_CONTENT_TYPE = "application/sdp"
CALLS_PATH = "/v1/realtime/calls"
_CALL_ID = re.compile(CALL_ID_PATTERN)


def call_id_of(session_id: str) -> str:
    """The call id of a session (``is_<hex>`` → ``rtc_<hex>``, the shape of OpenAI's)."""
    return "rtc_" + session_id.removeprefix("is_")


def session_id_of(call_id: str) -> str | None:
    """The session of a call id; None for anything not shaped like one."""
    return "is_" + call_id.removeprefix("rtc_") if _CALL_ID.fullmatch(call_id) else None


# ---------------------------------------------------------------------- client secrets
def _invalid(exc: ValidationError) -> ApiError:
    """OpenAI's codes for a bad parameter (``unknown_parameter`` for a field it does not
    take, as OpenAI answers a top-level ``model``), naming it in ``param``."""
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first.get("loc", ())) or None
    kind = first.get("type")
    if kind == "extra_forbidden":
        return ApiError(
            400, "unknown_parameter", f"Unknown parameter: '{param}'.", details={"param": param}
        )
    if kind == "missing":
        return ApiError(
            400,
            "missing_required_parameter",
            f"Missing required parameter: '{param}'.",
            details={"param": param},
        )
    return ApiError(
        400,
        "invalid_value",
        f"Invalid value for '{param}': {first.get('msg', '')}.",
        details={"param": param},
    )


def _client_secret_request(raw: bytes) -> ClientSecretRequest:
    try:
        return validate_json_object(ClientSecretRequest, raw, allow_empty=True)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _secret_expiry(session_expiry: datetime, asked: ClientSecretRequest) -> datetime:
    """The secret opens the call until the session must be exchanged, or sooner if asked."""
    if asked.expires_after is None:
        return session_expiry
    return min(session_expiry, datetime.now(UTC) + timedelta(seconds=asked.expires_after.seconds))


async def _issue(
    services: Services, caller: Caller, entry: SessionEntry, expires_at: datetime
) -> str:
    """A new ek_ for ``entry``, stored hashed; the session is closed if it cannot be."""
    secret = new_client_secret()
    try:
        await ClientSecretRows(services.store).save(
            hash_token(secret),
            session_id=entry.session_id,
            credential_hash=caller.token_hash,
            invite=caller.interview is not None,
            expires_at=expires_at,
        )
    except BaseException as exc:
        reason = exc.code if isinstance(exc, DatabaseUnavailable) else "internal_error"
        await services.sessions.finish(entry, state="failed", reason=reason, duration_s=0.0)
        raise
    return secret


async def create_client_secret(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "REALTIME CLIENT SECRET") as banner:
        async with admitting(request) as caller:
            raw = await read_body(request)
            asked = _client_secret_request(raw)

            async def create() -> tuple[int, dict[str, Any], dict[str, str]]:
                entry = await start_session(services, caller, asked.recording_notice_shown)
                minted = entry.minted
                if minted is None:  # never: create() mints or raises
                    raise ApiError(409, "session_not_ready", "This session is not ready.")
                expires_at = _secret_expiry(services.sessions.expires_at(entry), asked)
                secret = await _issue(services, caller, entry, expires_at)
                session = effective_session(
                    services.settings, minted, interview_overrides(caller.interview)
                )
                # The upstream's answer held the interviewer's configuration; nothing else
                # needs it, so the session does not keep it.
                entry.minted = dataclasses.replace(minted, session=None)
                stage(log, "CLIENT_SECRET_ISSUED")
                answer = {
                    "value": secret,
                    "expires_at": int(expires_at.timestamp()),
                    "session": session,
                }
                return 200, answer, {}

            # A retried request with the same Idempotency-Key gets the same secret.
            response = await idempotency.run(
                request, idempotency.candidate_key(caller.token_hash), raw, create
            )
        banner.status = response.status
        return response


# ---------------------------------------------------------------------- calls
def _part_name(part: EmailMessage) -> str | None:
    name = part.get_param("name", header="content-disposition")
    return name if isinstance(name, str) else None


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body by name (the body is already bounded by
    server.max_body_bytes)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ApiError(400, "invalid_request", "The multipart body could not be read.")
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = _part_name(part) if isinstance(part, EmailMessage) else None
        payload = part.get_payload(decode=True)
        if name is None or not isinstance(payload, bytes):
            raise ApiError(400, "invalid_request", "Every part needs a name.")
        parts[name] = payload
    return parts


def _text(value: bytes, param: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            400, "invalid_offer", "The SDP offer is not UTF-8 text.", details={"param": param}
        ) from None


def read_offer(content_type: str, raw: bytes) -> str:
    """The SDP offer of a call: the body itself (``application/sdp``), or the ``sdp`` part
    of OpenAI's form, whose ``session`` part must be a JSON object and is not applied."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == SDP_CONTENT_TYPE:
        return _text(raw, "sdp")
    if kind != "multipart/form-data":
        raise ApiError(
            400,
            "unsupported_content_type",
            f"Send the offer as {SDP_CONTENT_TYPE}, or as multipart/form-data with an 'sdp' part.",
        )
    parts = _multipart(content_type, raw)
    for name in parts:
        if name not in ("sdp", "session"):
            raise ApiError(
                400, "unknown_parameter", f"Unknown parameter: '{name}'.", details={"param": name}
            )
    if "sdp" not in parts:
        raise ApiError(
            400,
            "missing_required_parameter",
            "Missing required parameter: 'sdp'.",
            details={"param": "sdp"},
        )
    if "session" in parts:
        try:
            session = json.loads(parts["session"])
        except (ValueError, RecursionError):
            session = None
        if not isinstance(session, dict):
            raise ApiError(
                400,
                "invalid_value",
                "The 'session' part must be a JSON object.",
                details={"param": "session"},
            )
    return _text(parts["sdp"], "sdp")


def _sdp_answer(status: int, payload: dict[str, Any] | None, _: Mapping[str, str]) -> web.Response:
    """The call's answer (also when an Idempotency-Key replays it): SDP, and the call's
    address in ``Location`` as OpenAI gives it."""
    if payload is None:
        return web.Response(status=status)
    return web.Response(
        status=status,
        text=str(payload["sdp"]),
        content_type=SDP_CONTENT_TYPE,
        headers={"Location": f"{CALLS_PATH}/{payload['call_id']}"},
    )


async def create_call(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    with request_banner(log, "REALTIME CALL") as banner:
        stage(log, "WEBRTC_EXCHANGE_START")
        grant, caller = await authenticate_client_secret(request)
        raw = await read_body(request)
        offer = read_offer(request.headers.get("Content-Type", ""), raw)

        async def exchange() -> tuple[int, dict[str, Any], dict[str, str]]:
            # An OpenAI-shaped client has no way to resume: a dropped call ends at once
            # instead of waiting session.reconnect_grace_s for a page that never comes.
            bridge, _ = await open_bridge(
                services, grant.session_id, caller, offer, resumable=False
            )
            stage(log, "WEBRTC_EXCHANGE_COMPLETE")
            return 201, {"sdp": bridge.answer, "call_id": call_id_of(grant.session_id)}, {}

        # A retried call with the same Idempotency-Key gets the same answer (the secret
        # opens one call: without the key, a retry gets 409).
        response = await idempotency.run(
            request, idempotency.candidate_key(caller.token_hash), raw, exchange, _sdp_answer
        )
        banner.status = response.status
        return response


async def hangup_call(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    call_id = request.match_info["call_id"]
    session_id = session_id_of(call_id)
    caller, secret_session = await call_owner(request)
    await read_body(request)  # none expected; bounded like every body
    # A client secret hangs up its own call only.
    mine = secret_session is None or secret_session == session_id
    if session_id is None or not mine or not await end_session(services, session_id, caller):
        raise ApiError(
            404,
            "call_id_not_found",
            "No call found for the provided call_id.",
            details={"param": "call_id"},
        )
    return web.Response(status=200)


# ---------------------------------------------------------------------- registry
_CALL = PathParam("call_id", "The call's id (the Location of its creation).", CALL_ID_PATTERN)
_SECRET_ERRORS: dict[int, tuple[str, ...]] = {
    401: ("missing_token", "invalid_token", "client_secret_expired"),
    403: ("user_inactive", "no_credit", "interview_closed"),
}


def register(api: Api) -> None:
    api.add(
        Operation(
            "POST",
            "/v1/realtime/client_secrets",
            "createRealtimeClientSecret",
            "OpenAI-compatible: a client secret (ek_…) for a new session of the candidate",
            auth="candidate",
            tag="openai",
            raw=create_client_secret,
            body=ClientSecretRequest,
            body_optional=True,
            idempotent=True,
            description="What POST /api/realtime-session does (admission, the upstream mint), "
            "answered as OpenAI answers client_secrets: the relay's own ek_ for that one "
            "session and the session the interview defines (no instructions, no tools). "
            "The session asked for is ignored. docs/openai-compatible.md.",
            responses=(
                Response(200, "The client secret and the effective session.", ClientSecret),
            ),
            errors={
                **CANDIDATE_ERRORS,
                400: ("invalid_json", "unknown_parameter", "invalid_value"),
                403: ("user_inactive", "no_credit", "interview_closed"),
                409: (
                    "recording_notice_required",
                    "session_closed",
                    "credit_in_use",
                    "idempotency_key_in_use",
                ),
                410: ("session_superseded",),
                413: ("body_too_large",),
                429: ("too_many_failed_authentications", "rate_limited", "too_many_sessions"),
                502: ("upstream_error",),
                503: ("database_unavailable", "overloaded", "over_capacity", "draining"),
                504: ("upstream_timeout",),
            },
        ),
        Operation(
            "POST",
            CALLS_PATH,
            "createRealtimeCall",
            "OpenAI-compatible: exchange the offer of a client secret's session",
            auth="client_secret",
            tag="openai",
            raw=create_call,
            bodies=(
                RequestBody(SDP_CONTENT_TYPE, None, "The SDP offer."),
                RequestBody(
                    "multipart/form-data", CallForm, "OpenAI's form: sdp, and a session ignored."
                ),
            ),
            idempotent=True,
            description="The exchange of POST /api/webrtc-exchange for the session of the ek_ "
            "(once). 201 with the relay's SDP answer and Location: /v1/realtime/calls/{call_id}.",
            responses=(
                Response(
                    201, "The SDP answer (Location: the call).", content_type=SDP_CONTENT_TYPE
                ),
            ),
            errors={
                **_SECRET_ERRORS,
                400: (
                    "invalid_offer",
                    "invalid_request",
                    "unsupported_content_type",
                    "unknown_parameter",
                    "missing_required_parameter",
                    "invalid_value",
                ),
                404: ("session_not_found", "session_expired"),
                409: (
                    "session_already_exchanged",
                    "session_not_ready",
                    "session_closed",
                    "credit_in_use",
                ),
                410: ("session_superseded",),
                502: ("upstream_error",),
                503: ("draining", "no_media_ports"),
                504: ("upstream_timeout", "ice_gather_timeout"),
            },
        ),
        Operation(
            "POST",
            CALLS_PATH + "/{call_id}/hangup",
            "hangupRealtimeCall",
            "OpenAI-compatible: hang up a call (both legs)",
            auth="client_secret",
            also_auth=("candidate", "operator", "admin"),
            tag="openai",
            raw=hangup_call,
            path_params=(_CALL,),
            idempotent=True,
            description="With the call's ek_ (also once expired: the call outlasts it), the "
            "candidate's credential, or the operator token or an admin API key (a read key: "
            "403 insufficient_scope).",
            responses=(Response(200, "Hung up (or ending where the call is held).", None),),
            errors={**_SECRET_ERRORS, 404: ("call_id_not_found",)},
        ),
    )
