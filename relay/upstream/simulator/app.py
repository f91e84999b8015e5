"""The simulator's aiohttp application: OpenAI's Realtime HTTP surface under ``/v1`` (GA and
beta) plus ``/_sim/*`` for tests (calls and counters, fault knobs).

Every reply to a ``/v1`` request passes the endpoint's fault gate first (count, latency,
hang, forced status), then authentication, then validation.

Browsers call ``/v1`` as they call OpenAI's API: a page holding an ``ek_`` key posts its offer
to ``/v1/realtime/calls`` from its own origin (the Agents SDK's WebRTC transport does), so
``/v1`` answers CORS preflights from any origin and every ``/v1`` answer allows any origin
and exposes ``Location`` (the call id) and the retry hints. ``/_sim/*`` is not cross-origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from relay.upstream.simulation import SIMULATOR_HEADER
from relay.upstream.simulator.calls import CallManager
from relay.upstream.simulator.errors import (
    SimHttpError,
    beta_disabled,
    call_not_found,
    forced_error,
    invalid_api_key,
    invalid_request,
    missing_parameter,
    model_not_found,
    unsupported_model,
)
from relay.upstream.simulator.faults import Endpoint, FaultError
from relay.upstream.simulator.ids import random_id
from relay.upstream.simulator.keys import EphemeralKey, KeyStore, bearer_token
from relay.upstream.simulator.options import SimulatorOptions
from relay.upstream.simulator.session_config import (
    SESSION_MAX_S,
    Dialect,
    beta_session,
    ga_session,
    in_dialect,
    is_transcription,
    transcription_session,
)
from relay.upstream.simulator.state import SimulatorState
from relay.upstream.simulator.validation import (
    validate_beta_session_request,
    validate_client_secret_request,
    validate_ga_session,
    validate_offer,
)
from relay.upstream.simulator.voice import prepare_voice

log = logging.getLogger("relay.simulator")

SDP_CONTENT_TYPE = "application/sdp"
# What a page's script may read of a /v1 answer beyond the CORS-safelisted headers.
CORS_EXPOSED_HEADERS = (
    "Location, x-request-id, openai-processing-ms, retry-after, retry-after-ms, x-should-retry"
)
CORS_MAX_AGE_S = 86400


class Simulator:
    """Everything one simulator instance owns; reachable as ``app[SIMULATOR_KEY]``."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.state = SimulatorState(
            options.faults.copy(), max_closed_calls=options.max_closed_calls
        )
        self.control_token = options.control_token or secrets.token_urlsafe(24)
        self.keys = KeyStore(
            options.api_keys,
            accept_any_standard=options.accept_any_api_key,
            clock=options.clock,
            max_keys=options.max_ephemeral_keys,
        )
        self.calls = CallManager(self.state, options)
        self.closing = asyncio.Event()
        self.state.on_faults_changed(self.calls.apply_faults)

    def __repr__(self) -> str:
        return f"Simulator(calls={len(self.state.calls)})"

    async def gate(self, endpoint: Endpoint) -> None:
        """Count the request, then apply the endpoint's latency, hang and forced status."""
        self.state.count_request(endpoint)
        fault = self.state.faults.endpoint(endpoint)
        if fault.latency_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), fault.latency_s)
        if fault.hang:
            await self.closing.wait()
        if self.closing.is_set():
            raise SimHttpError(503, "The simulator is shutting down.", code="server_shutdown")
        forced = fault.take_forced()
        if forced is not None:
            status, code = forced
            raise forced_error(status, code, fault.retry_after_s, fault.should_retry)

    async def close(self) -> None:
        self.closing.set()
        await self.calls.close_all()

    def require_standard(self, request: web.Request) -> None:
        """401 unless the request carries a standard key (and keys are not revoked)."""
        token = bearer_token(request.headers.get("Authorization"))
        self.keys.require_standard(token)
        if self.state.faults.reject_api_keys:
            raise invalid_api_key("Incorrect API key provided (sk-…). The key was revoked.")

    def call_credential(self, request: web.Request) -> EphemeralKey | None:
        """A minted ek_ key (returned) or a standard key (None); else 401."""
        key = self.keys.require_call_credential(bearer_token(request.headers.get("Authorization")))
        if key is None and self.state.faults.reject_api_keys:
            raise invalid_api_key("Incorrect API key provided (sk-…). The key was revoked.")
        return key

    def require_model(self, model: str, param: str) -> None:
        if model not in self.state.faults.accepted_models:
            raise unsupported_model(model, param)

    def session_expiry(self) -> int:
        return int(self.options.clock()) + SESSION_MAX_S


SIMULATOR_KEY = web.AppKey("simulator", Simulator)
SIM_STATE_KEY = web.AppKey("simulator_state", SimulatorState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in OpenAI's shape, whatever raised it."""
    try:
        return await handler(request)
    except SimHttpError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return SimHttpError(
            exc.status, exc.reason, code=code.get(exc.status), type_="invalid_request_error"
        ).response()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("simulator: unexpected error on %s %s", request.method, request.path)
        return SimHttpError(
            500, "The simulator failed on this request.", code="server_error"
        ).response()


async def _json_body(request: web.Request) -> Any:
    text = await request.text()
    try:
        return json.loads(text)
    except ValueError:
        raise invalid_request(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None


def _sim(request: web.Request) -> Simulator:
    return request.app[SIMULATOR_KEY]


# ---------------------------------------------------------------------- minting
async def client_secrets(request: web.Request) -> web.Response:
    """GA: ``POST /v1/realtime/client_secrets`` (a realtime or a transcription session)."""
    sim = _sim(request)
    await sim.gate("mint")
    sim.require_standard(request)
    secret_request = validate_client_secret_request(await _json_body(request))
    config = secret_request.session
    if is_transcription(config):
        model = (config.get("audio", {}).get("input", {}).get("transcription") or {}).get("model")
        if model is not None:
            sim.require_model(str(model), "session.audio.input.transcription.model")
        session = transcription_session(
            config, session_id=random_id("sess"), expires_at=sim.session_expiry()
        )
    else:
        session = ga_session(
            config,
            session_id=random_id("sess"),
            default_model=sim.options.default_ga_model,
            expires_at=sim.session_expiry(),
        )
        sim.require_model(str(session["model"]), "session.model")
    sim.state.add_mint("ga", config, str(session["id"]))
    key = sim.keys.mint("ga", session, secret_request.ttl_s)
    return web.json_response({"value": key.value, "expires_at": key.expires_at, "session": session})


async def beta_sessions(request: web.Request) -> web.Response:
    """beta: ``POST /v1/realtime/sessions``."""
    sim = _sim(request)
    await sim.gate("mint")
    if sim.state.faults.beta_disabled:
        raise beta_disabled()
    sim.require_standard(request)
    secret_request = validate_beta_session_request(
        await _json_body(request), sim.options.beta_secret_ttl_s
    )
    session = beta_session(
        secret_request.session,
        session_id=random_id("sess"),
        default_model=sim.options.default_beta_model,
        expires_at=sim.session_expiry(),
    )
    sim.require_model(str(session["model"]), "model")
    sim.state.add_mint("beta", secret_request.session, str(session["id"]))
    key = sim.keys.mint("beta", session, secret_request.ttl_s)
    return web.json_response(
        {**session, "client_secret": {"value": key.value, "expires_at": key.expires_at}}
    )


# ---------------------------------------------------------------------- SDP exchange
async def _read_offer(request: web.Request) -> tuple[str, Any | None]:
    """The offer SDP and the optional ``session`` part (multipart/form-data)."""
    if request.content_type == SDP_CONTENT_TYPE:
        return await request.text(), None
    if request.content_type == "multipart/form-data":
        sdp: str | None = None
        session: Any | None = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "sdp":
                sdp = await part.text()
            elif part.name == "session":
                text = await part.text()
                try:
                    session = json.loads(text)
                except ValueError:
                    raise invalid_request(
                        "The 'session' part is not valid JSON.", code="invalid_json"
                    ) from None
        if sdp is None:
            raise missing_parameter("sdp")
        return sdp, session
    raise invalid_request(
        f"Unsupported Content-Type {request.content_type!r}: send the offer as "
        "application/sdp or as multipart/form-data with an 'sdp' part.",
        code="unsupported_content_type",
    )


async def _answer(
    sim: Simulator, dialect: Dialect, session: dict[str, Any], offer: str
) -> web.Response:
    if not is_transcription(session):
        sim.require_model(str(session.get("model")), "model")
    validate_offer(offer, sim.options.max_offer_bytes)
    call_id, answer = await sim.calls.open_call(dialect=dialect, session=session, offer_sdp=offer)
    headers = {"Location": f"/v1/realtime/calls/{call_id}"} if dialect == "ga" else {}
    return web.Response(status=201, text=answer, content_type=SDP_CONTENT_TYPE, headers=headers)


async def ga_calls(request: web.Request) -> web.Response:
    """GA: ``POST /v1/realtime/calls`` (raw SDP with ek_/sk-, or multipart sdp + session)."""
    sim = _sim(request)
    await sim.gate("calls")
    key = sim.call_credential(request)
    offer, session_config = await _read_offer(request)
    if session_config is not None:
        session = ga_session(
            validate_ga_session(session_config, "session"),
            session_id=random_id("sess"),
            default_model=sim.options.default_ga_model,
            expires_at=sim.session_expiry(),
        )
    elif key is not None:
        session = in_dialect(key.session, key.dialect, "ga")
    else:
        model = request.query.get("model") or sim.options.default_ga_model
        session = ga_session(
            {"type": "realtime", "model": model},
            session_id=random_id("sess"),
            default_model=model,
            expires_at=sim.session_expiry(),
        )
    return await _answer(sim, "ga", session, offer)


async def beta_calls(request: web.Request) -> web.Response:
    """beta: ``POST /v1/realtime?model=…`` with the raw SDP offer."""
    sim = _sim(request)
    await sim.gate("calls")
    if sim.state.faults.beta_disabled:
        raise beta_disabled()
    key = sim.call_credential(request)
    offer, _ = await _read_offer(request)
    model = request.query.get("model")
    if key is not None:
        if is_transcription(key.session):
            raise invalid_request(
                "A transcription session cannot open a beta call.", code="invalid_value"
            )
        session = in_dialect(key.session, key.dialect, "beta")
    else:
        session = beta_session(
            {},
            session_id=random_id("sess"),
            default_model=sim.options.default_beta_model,
            expires_at=sim.session_expiry(),
        )
    if model:
        session["model"] = model
    return await _answer(sim, "beta", session, offer)


async def hangup(request: web.Request) -> web.Response:
    """GA: ``POST /v1/realtime/calls/{call_id}/hangup`` (standard key)."""
    sim = _sim(request)
    await sim.gate("hangup")
    sim.require_standard(request)
    if not await sim.calls.hangup(request.match_info["call_id"]):
        raise call_not_found()
    return web.Response(status=200)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models`` (standard key): the models the account may use."""
    sim = _sim(request)
    await sim.gate("models")
    sim.require_standard(request)
    data = [_model_object(m) for m in sorted(sim.state.faults.accepted_models)]
    return web.json_response({"object": "list", "data": data})


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1756339200, "owned_by": "system"}


async def retrieve_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}`` (standard key): the model, or 404 model_not_found."""
    sim = _sim(request)
    await sim.gate("models")
    sim.require_standard(request)
    model = request.match_info["model"]
    if model not in sim.state.faults.accepted_models:
        raise model_not_found(model)
    return web.json_response(_model_object(model))


# ---------------------------------------------------------------------- CORS
async def cors_preflight(request: web.Request) -> web.Response:
    """``OPTIONS /v1/...`` from a browser: any origin, the method and headers it asks for
    (no cookies are involved: the key travels in ``Authorization``)."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    headers = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
        "Access-Control-Allow-Headers": asked or "authorization, content-type",
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
    }
    return web.Response(status=200, headers=headers)


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/v1/")


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    if _is_api(request) and request.method != "OPTIONS" and "Origin" in request.headers:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS


# ---------------------------------------------------------------------- test surface


def _control(handler: Handler) -> Handler:
    """``/_sim/*`` needs ``Authorization: Bearer <control token>`` (faults can break calls)."""

    async def checked(request: web.Request) -> web.StreamResponse:
        presented = bearer_token(request.headers.get("Authorization")) or ""
        expected = _sim(request).control_token
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise SimHttpError(
                401, "The simulator's control API needs its control token.", code="invalid_token"
            )
        return await handler(request)

    return checked


async def sim_calls(request: web.Request) -> web.Response:
    sim = _sim(request)
    await sim.calls.refresh_stats()
    return web.json_response(sim.state.to_json())


async def sim_call(request: web.Request) -> web.Response:
    sim = _sim(request)
    record = sim.state.calls.get(request.match_info["call_id"])
    if record is None:
        raise call_not_found()
    await sim.calls.refresh_stats()
    return web.json_response(record.to_json())


async def sim_faults_get(request: web.Request) -> web.Response:
    return web.json_response(_sim(request).state.faults.to_json())


async def sim_faults_post(request: web.Request) -> web.Response:
    sim = _sim(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise invalid_request("Expected a JSON object of fault settings.", code="invalid_faults")
    try:
        await sim.state.update_faults(body)
    except FaultError as exc:
        raise invalid_request(str(exc), code="invalid_faults") from None
    return web.json_response(sim.state.faults.to_json())


async def sim_faults_delete(request: web.Request) -> web.Response:
    sim = _sim(request)
    await sim.state.update_faults(sim.options.faults.to_json())
    return web.json_response(sim.state.faults.to_json())


# ---------------------------------------------------------------------- assembly
def create_simulator_app(options: SimulatorOptions | None = None) -> web.Application:
    """The simulator as an aiohttp app (serve it with any runner or the test client)."""
    sim = Simulator(options or SimulatorOptions())
    app = web.Application(middlewares=[_openai_errors])
    app[SIMULATOR_KEY] = sim
    app[SIM_STATE_KEY] = sim.state
    app.router.add_post("/v1/realtime/client_secrets", client_secrets)
    app.router.add_post("/v1/realtime/sessions", beta_sessions)
    app.router.add_post("/v1/realtime/calls", ga_calls)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup)
    app.router.add_post("/v1/realtime", beta_calls)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    # A preflight on each /v1 path (not one catch-all: an unknown path stays a 404).
    for path in sorted({r.resource.canonical for r in app.router.routes() if r.resource}):
        if path.startswith("/v1/"):
            app.router.add_route("OPTIONS", path, cors_preflight)
    app.router.add_get("/_sim/calls", _control(sim_calls))
    app.router.add_get("/_sim/calls/{call_id}", _control(sim_call))
    app.router.add_get("/_sim/faults", _control(sim_faults_get))
    app.router.add_post("/_sim/faults", _control(sim_faults_post))
    app.router.add_delete("/_sim/faults", _control(sim_faults_delete))

    async def _prepare(_: web.Application) -> None:
        # Synthesise and encode the reply voice once, off the event loop.
        await prepare_voice(sim.options.reply_lines)

    async def _shutdown(_: web.Application) -> None:
        # Release hanging requests and close every peer before the server waits for handlers.
        await sim.close()

    async def _identify(_: web.Request, response: web.StreamResponse) -> None:
        response.headers[SIMULATOR_HEADER] = "1"

    app.on_startup.append(_prepare)
    app.on_shutdown.append(_shutdown)
    app.on_response_prepare.append(_cors_headers)
    if sim.options.identify:
        app.on_response_prepare.append(_identify)
    return app
