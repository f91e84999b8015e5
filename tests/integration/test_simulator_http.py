"""The simulator's HTTP surface over real loopback HTTP: minting, SDP exchange, hang-up,
errors in OpenAI's shape, and the fault knobs (latency, forced status counts, hangs, ICE
that never completes, the beta shape switched off).

Offers come from real aiortc peers; run inside ``unshare -n`` like every WebRTC test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.config import IceConfig
from relay.media.ice import rtc_configuration
from relay.media.peers import close_peer
from relay.upstream.simulator import (
    SIM_STATE_KEY,
    SimulatorOptions,
    SimulatorState,
    create_simulator_app,
    start_simulator,
)
from relay.upstream.simulator.faults import Faults
from tests.support.openai_oracle import validate_session_config

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-sim-local"
AUTH = {"Authorization": f"Bearer {KEY}"}
SDP = {"Content-Type": "application/sdp"}
CONTROL_TOKEN = "sim-control-test-token"
CONTROL = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
GA_SESSION: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime",
    "audio": {"input": {"transcription": {"model": "whisper-1"}}, "output": {"voice": "marin"}},
}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
) -> MakeClient:
    async def make(**options: Any) -> Client:
        options.setdefault("control_token", CONTROL_TOKEN)
        return await aiohttp_client(create_simulator_app(SimulatorOptions(**options)))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
async def offerer() -> AsyncIterator[RTCPeerConnection]:
    """An aiortc peer with an Opus audio track slot and the ``oai-events`` channel."""
    pc = RTCPeerConnection(rtc_configuration(IceConfig()))
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        yield pc
    finally:
        await close_peer(pc)


def _offer(pc: RTCPeerConnection) -> str:
    sdp: str = pc.localDescription.sdp
    return sdp


def _state(client: Client) -> SimulatorState:
    app = client.app
    assert app is not None
    return app[SIM_STATE_KEY]


async def _error(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


async def _mint(client: Client, session: dict[str, Any] | None = None, **body: Any) -> str:
    response = await client.post(
        "/v1/realtime/client_secrets", json={"session": session or GA_SESSION, **body}, headers=AUTH
    )
    assert response.status == 200, await response.text()
    value: str = (await response.json())["value"]
    return value


# ---------------------------------------------------------------------- GA minting
async def test_client_secret_has_value_expiry_and_effective_session(client: Client) -> None:
    before = int(time.time())
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"expires_after": {"anchor": "created_at", "seconds": 120}, "session": GA_SESSION},
        headers=AUTH,
    )
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"value", "expires_at", "session"}
    assert body["value"].startswith("ek_")
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
    session = body["session"]
    assert session["type"] == "realtime" and session["object"] == "realtime.session"
    assert session["id"].startswith("sess_") and session["model"] == "gpt-realtime"
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 200
    assert "client_secret" not in body


async def test_client_secret_default_lifetime_is_ten_minutes(client: Client) -> None:
    response = await client.post(
        "/v1/realtime/client_secrets", json={"session": {"type": "realtime"}}, headers=AUTH
    )
    body = await response.json()
    assert abs(body["expires_at"] - (time.time() + 600)) <= 2
    assert body["session"]["model"] == "gpt-realtime"


async def test_top_level_model_is_an_unknown_parameter(client: Client) -> None:
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"model": "gpt-realtime", "session": {"type": "realtime"}},
        headers=AUTH,
    )
    error = await _error(response, 400, "unknown_parameter")
    assert error["param"] == "model" and error["type"] == "invalid_request_error"


async def test_invalid_json_and_bad_fields_are_400(client: Client) -> None:
    response = await client.post("/v1/realtime/client_secrets", data="{", headers=AUTH)
    await _error(response, 400, "invalid_json")
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"expires_after": {"anchor": "created_at", "seconds": 5}, "session": GA_SESSION},
        headers=AUTH,
    )
    error = await _error(response, 400, "integer_below_min_value")
    assert error["param"] == "expires_after.seconds"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk-wrong-but-long-secret-123"},
        {"Authorization": "Basic c2stc2ltLWxvY2Fs"},
    ],
)
async def test_minting_needs_a_known_standard_key(client: Client, headers: dict[str, str]) -> None:
    response = await client.post(
        "/v1/realtime/client_secrets", json={"session": GA_SESSION}, headers=headers
    )
    error = await _error(response, 401, "invalid_api_key")
    assert "sk-wrong-but-long-secret-123" not in error["message"]


async def test_an_ephemeral_key_cannot_mint(client: Client) -> None:
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"session": GA_SESSION},
        headers={"Authorization": f"Bearer {secret}"},
    )
    error = await _error(response, 401, "invalid_api_key")
    assert secret not in error["message"]


async def test_accept_any_api_key(make_client: MakeClient) -> None:
    client = await make_client(accept_any_api_key=True)
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"session": GA_SESSION},
        headers={"Authorization": "Bearer sk-anything-0123456789abcdef"},
    )
    assert response.status == 200
    # Clearly not a key: refused even so.
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"session": GA_SESSION},
        headers={"Authorization": "Bearer sk-x"},
    )
    await _error(response, 401, "invalid_api_key")


# ---------------------------------------------------------------------- GA SDP exchange
async def test_calls_with_ephemeral_key_answers_201_with_location(
    client: Client, offerer: RTCPeerConnection
) -> None:
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}", "Accept": "application/sdp"},
    )
    assert response.status == 201, await response.text()
    assert response.content_type == "application/sdp"
    location = response.headers["Location"]
    assert location.startswith("/v1/realtime/calls/rtc_")
    answer = await response.text()
    assert answer.startswith("v=0") and "a=setup:active" in answer
    assert "opus/48000/2" in answer and "webrtc-datachannel" in answer
    call_id = location.rsplit("/", 1)[-1]
    record = _state(client).call(call_id)
    assert (record.dialect, record.model, record.codec) == ("ga", "gpt-realtime", "opus")
    assert _state(client).requests["calls"] == 1

    hangup = await client.post(f"/v1/realtime/calls/{call_id}/hangup", headers=AUTH)
    assert hangup.status == 200
    await _state(client).wait_for(lambda: record.state == "closed", 5)
    assert record.hung_up and record.closed_reason == "hangup"
    again = await client.post(f"/v1/realtime/calls/{call_id}/hangup", headers=AUTH)
    await _error(again, 404, "call_id_not_found")


async def test_unified_multipart_form_with_a_standard_key(
    client: Client, offerer: RTCPeerConnection
) -> None:
    form = aiohttp.FormData()
    form.add_field("sdp", _offer(offerer), content_type="application/sdp")
    form.add_field(
        "session",
        '{"type": "realtime", "model": "gpt-realtime-mini"}',
        content_type="application/json",
    )
    response = await client.post("/v1/realtime/calls", data=form, headers=AUTH)
    assert response.status == 201, await response.text()
    call_id = response.headers["Location"].rsplit("/", 1)[-1]
    assert _state(client).call(call_id).model == "gpt-realtime-mini"


async def test_a_page_on_another_origin_may_post_its_offer_with_an_ephemeral_key(
    client: Client, offerer: RTCPeerConnection
) -> None:
    """What a browser does before and while the Agents SDK posts its offer from a page: a
    CORS preflight (any origin, the headers it names), then the call, whose answer a
    page's script may read, Location included."""
    page = "http://127.0.0.2:8123"
    asked = "authorization,content-type,x-openai-agents-sdk"
    preflight = await client.options(
        "/v1/realtime/calls",
        headers={
            "Origin": page,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert preflight.status == 200, await preflight.text()
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == asked
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}", "Origin": page},
    )
    assert response.status == 201, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"location", "retry-after", "x-should-retry"} <= exposed
    # Errors are readable by the page too (the SDK reports their message).
    refused = await client.post(
        "/v1/realtime/calls",
        data="v=0",
        headers={**SDP, "Authorization": "Bearer ek_x", "Origin": page},
    )
    await _error(refused, 401, "invalid_api_key")
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    # Not the control API, and not a request without an Origin (no browser involved).
    control = await client.get("/_sim/calls", headers={**CONTROL, "Origin": page})
    assert "Access-Control-Allow-Origin" not in control.headers
    plain = await client.post(
        "/v1/realtime/client_secrets", json={"session": GA_SESSION}, headers=AUTH
    )
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_calls_refuses_other_content_types(client: Client) -> None:
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        json={"sdp": "v=0"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    await _error(response, 400, "unsupported_content_type")


async def test_calls_needs_a_valid_unexpired_key(
    make_client: MakeClient, offerer: RTCPeerConnection
) -> None:
    clock = Clock()
    client = await make_client(clock=clock)
    secret = await _mint(client, expires_after={"anchor": "created_at", "seconds": 10})
    for headers in ({}, {"Authorization": "Bearer ek_" + "ab" * 16}):
        response = await client.post(
            "/v1/realtime/calls", data=_offer(offerer), headers={**SDP, **headers}
        )
        await _error(response, 401, "invalid_api_key")
    clock.now += 11
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}"},
    )
    error = await _error(response, 401, "invalid_api_key")
    assert "expired" in error["message"] and secret not in error["message"]
    assert _state(client).calls == {}


async def test_models_the_account_cannot_use_are_refused_with_the_real_codes(
    make_client: MakeClient, offerer: RTCPeerConnection
) -> None:
    client = await make_client()
    secret = await _mint(client, {"type": "realtime", "model": "gpt-realtime-2"})
    response = await client.get("/v1/models/gpt-realtime-2", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["id"] == "gpt-realtime-2"
    await _state(client).update_faults({"accepted_models": ["gpt-realtime-2.1"]})
    # Retrieving the model: 404 model_not_found.
    response = await client.get("/v1/models/gpt-realtime-2", headers=AUTH)
    error = await _error(response, 404, "model_not_found")
    assert "gpt-realtime-2" in error["message"]
    # Minting with it: 400 invalid_value on session.model.
    response = await client.post(
        "/v1/realtime/client_secrets",
        json={"session": {"type": "realtime", "model": "gpt-realtime-2"}},
        headers=AUTH,
    )
    error = await _error(response, 400, "invalid_value")
    assert error["param"] == "session.model"
    # A key minted before: the call is refused the same way.
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}"},
    )
    assert (await _error(response, 400, "invalid_value"))["param"] == "model"
    # Retrieving a model needs a standard key.
    response = await client.get("/v1/models/gpt-realtime-2.1")
    await _error(response, 401, "invalid_api_key")


async def test_revoked_keys_fault_refuses_standard_keys(client: Client) -> None:
    await _state(client).update_faults({"reject_api_keys": True})
    for method, path in (
        ("POST", "/v1/realtime/client_secrets"),
        ("GET", "/v1/models/gpt-realtime-2.1"),
    ):
        response = await client.request(method, path, json={}, headers=AUTH)
        await _error(response, 401, "invalid_api_key")


async def test_sdk_allowed_requests_are_served(client: Client) -> None:
    for body in (
        {},
        {"session": {"type": "transcription"}},
        {
            "session": {
                "type": "realtime",
                "model": "gpt-audio-1.5",
                "audio": {
                    "input": {
                        "noise_reduction": {"type": "near_field"},
                        "transcription": {"model": "gpt-realtime-whisper", "delay": "low"},
                    }
                },
            }
        },
    ):
        response = await client.post("/v1/realtime/client_secrets", json=body, headers=AUTH)
        assert response.status == 200, await response.text()
        reply = await response.json()
        assert reply["value"].startswith("ek_")
        assert reply["session"]["expires_at"] > time.time() + 600
        validate_session_config(
            {k: v for k, v in reply["session"].items() if k not in ("id", "object", "expires_at")}
        )


@pytest.mark.parametrize(
    ("mangle", "detail"),
    [
        (lambda sdp: "hello", "not an SDP document"),
        (lambda sdp: sdp.replace("m=audio", "m=video"), "no audio m-line"),
        (
            lambda sdp: "".join(x for x in sdp.splitlines(True) if "fingerprint" not in x),
            "fingerprint",
        ),
        (
            lambda sdp: "".join(x for x in sdp.splitlines(True) if "ice-ufrag" not in x),
            "ice-ufrag",
        ),
        (lambda sdp: sdp + "a=x-pad:" + "x" * 40000 + "\r\n", "limit"),
    ],
)
async def test_bad_offers_are_400_invalid_offer(
    client: Client,
    offerer: RTCPeerConnection,
    mangle: Callable[[str], str],
    detail: str,
) -> None:
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        data=mangle(_offer(offerer)),
        headers={**SDP, "Authorization": f"Bearer {secret}"},
    )
    error = await _error(response, 400, "invalid_offer")
    assert detail in error["message"]
    assert _state(client).calls == {}


async def test_pcmu_answer_codec(client: Client, offerer: RTCPeerConnection) -> None:
    await _state(client).update_faults({"answer_codec": "pcmu"})
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}"},
    )
    answer = await response.text()
    audio_line = next(x for x in answer.splitlines() if x.startswith("m=audio"))
    assert audio_line.split()[3:] == ["0"]  # PCMU only
    record = _state(client).last_call
    assert record is not None and record.codec == "pcmu"


# ---------------------------------------------------------------------- beta
async def test_beta_mint_and_exchange(make_client: MakeClient, offerer: RTCPeerConnection) -> None:
    client = await make_client(faults=Faults(beta_disabled=False))
    beta = {"OpenAI-Beta": "realtime=v1"}
    response = await client.post(
        "/v1/realtime/sessions",
        json={"model": "gpt-4o-realtime-preview-2024-12-17", "voice": "verse"},
        headers={**AUTH, **beta},
    )
    assert response.status == 200
    body = await response.json()
    assert body["object"] == "realtime.session" and body["voice"] == "verse"
    assert body["model"] == "gpt-4o-realtime-preview-2024-12-17"
    secret = body["client_secret"]["value"]
    assert secret.startswith("ek_")
    assert abs(body["client_secret"]["expires_at"] - (time.time() + 60)) <= 2
    response = await client.post(
        "/v1/realtime?model=gpt-4o-realtime-preview-2024-12-17",
        data=_offer(offerer),
        headers={**SDP, **beta, "Authorization": f"Bearer {secret}"},
    )
    assert response.status == 201, await response.text()
    assert "Location" not in response.headers
    assert (await response.text()).startswith("v=0")
    record = _state(client).last_call
    assert record is not None and record.dialect == "beta"
    assert record.model == "gpt-4o-realtime-preview-2024-12-17"


async def test_beta_disabled_over_http(client: Client, offerer: RTCPeerConnection) -> None:
    # As on the real service, the beta shape is off unless the simulator is started for it.
    response = await client.get("/_sim/faults", headers=CONTROL)
    assert response.status == 200 and (await response.json())["beta_disabled"] is True
    response = await client.post("/v1/realtime/sessions", json={}, headers=AUTH)
    error = await _error(response, 400, "beta_api_shape_disabled")
    assert "no longer supported" in error["message"]
    response = await client.post(
        "/v1/realtime?model=gpt-4o-realtime-preview", data=_offer(offerer), headers={**SDP, **AUTH}
    )
    await _error(response, 400, "beta_api_shape_disabled")
    secret = await _mint(client)  # GA is unaffected
    assert secret.startswith("ek_")


# ---------------------------------------------------------------------- faults
async def test_forced_503_twice_then_normal_service(client: Client) -> None:
    await _state(client).update_faults({"mint": {"status": 503, "times": 2, "retry_after_s": 1.5}})
    for _ in range(2):
        response = await client.post(
            "/v1/realtime/client_secrets", json={"session": GA_SESSION}, headers=AUTH
        )
        error = await _error(response, 503, "server_error")
        assert error["type"] == "server_error"
        assert response.headers["retry-after"] == "2"
        assert response.headers["retry-after-ms"] == "1500"
    assert (await _mint(client)).startswith("ek_")
    assert _state(client).requests["mint"] == 3


async def test_forced_429_carries_retry_headers(client: Client) -> None:
    response = await client.post(
        "/_sim/faults",
        json={"calls": {"status": 429, "code": "rate_limit_exceeded"}},
        headers=CONTROL,
    )
    assert response.status == 200
    response = await client.post("/v1/realtime/calls", data="v=0", headers={**SDP, **AUTH})
    await _error(response, 429, "rate_limit_exceeded")
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "1000"


async def test_forced_status_applies_before_authentication(client: Client) -> None:
    await _state(client).update_faults({"hangup": {"status": 500}})
    response = await client.post("/v1/realtime/calls/rtc_x/hangup")
    await _error(response, 500, "server_error")


async def test_added_latency(client: Client) -> None:
    await _state(client).update_faults({"mint": {"latency_s": 0.3}})
    started = time.monotonic()
    await _mint(client)
    assert time.monotonic() - started >= 0.3


async def test_hanging_endpoint_never_answers_until_the_client_gives_up() -> None:
    sim = await start_simulator()
    try:
        await sim.state.update_faults({"mint": {"hang": True}})
        async with aiohttp.ClientSession() as http:
            with pytest.raises(asyncio.TimeoutError):
                await http.post(
                    f"{sim.base_url}/realtime/client_secrets",
                    json={"session": GA_SESSION},
                    headers=AUTH,
                    timeout=aiohttp.ClientTimeout(total=0.5),
                )
            assert sim.state.requests["mint"] == 1
            # A request still hanging when the simulator closes is released, not waited for.
            pending = asyncio.ensure_future(
                http.post(
                    f"{sim.base_url}/realtime/client_secrets",
                    json={"session": GA_SESSION},
                    headers=AUTH,
                )
            )
            await sim.state.wait_for(lambda: sim.state.requests["mint"] == 2, 5)
            started = time.monotonic()
            await sim.close()
            assert time.monotonic() - started < 5
            response = await pending
            assert response.status == 503
    finally:
        await sim.close()


async def test_ice_never_completes(client: Client, offerer: RTCPeerConnection) -> None:
    await _state(client).update_faults({"ice_never_completes": True})
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}"},
    )
    assert response.status == 201
    answer = await response.text()
    candidates = [x for x in answer.splitlines() if x.startswith("a=candidate:")]
    assert candidates and all(" typ host" in c for c in candidates)
    await offerer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    state = _state(client)
    # The offerer's connectivity checks reach the silent port and are never answered.
    await state.wait_for(lambda: state.ice_checks_ignored >= 3, 10)
    assert offerer.iceConnectionState in ("new", "checking")
    assert offerer.connectionState in ("new", "connecting")
    record = state.last_call
    assert record is not None and record.state == "connecting"


async def test_fault_settings_over_http(client: Client) -> None:
    response = await client.post("/_sim/faults", json={"mint": {"status": 200}}, headers=CONTROL)
    await _error(response, 400, "invalid_faults")
    response = await client.post(
        "/_sim/faults", json={"calls": {"latency_s": 1.0}}, headers=CONTROL
    )
    assert (await response.json())["calls"]["latency_s"] == 1.0
    response = await client.get("/_sim/faults", headers=CONTROL)
    assert (await response.json())["calls"]["latency_s"] == 1.0
    response = await client.delete("/_sim/faults", headers=CONTROL)
    assert (await response.json())["calls"]["latency_s"] == 0.0
    assert _state(client).faults.calls.latency_s == 0.0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_sim/calls"),
        ("GET", "/_sim/calls/rtc_x"),
        ("GET", "/_sim/faults"),
        ("POST", "/_sim/faults"),
        ("DELETE", "/_sim/faults"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Bearer {KEY}"])
async def test_the_control_api_needs_the_control_token(
    client: Client, method: str, path: str, auth: str | None
) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = await client.request(method, path, json={"beta_disabled": False}, headers=headers)
    await _error(response, 401, "invalid_token")
    assert _state(client).faults.beta_disabled  # unchanged: the default stays


async def test_a_simulator_without_a_given_token_makes_one_up() -> None:
    sim = await start_simulator()
    try:
        assert len(sim.control_token) >= 32
        async with aiohttp.ClientSession() as http:
            url = f"{sim.root_url}/_sim/faults"
            async with http.get(url) as response:
                assert response.status == 401
            bearer = {"Authorization": f"Bearer {sim.control_token}"}
            async with http.get(url, headers=bearer) as response:
                assert response.status == 200
    finally:
        await sim.close()


async def test_options_seed_the_faults_and_are_not_mutated(make_client: MakeClient) -> None:
    options = SimulatorOptions()
    faults = dataclasses.replace(options.faults, beta_disabled=False)
    client = await make_client(faults=faults)
    assert not _state(client).faults.beta_disabled
    await _state(client).update_faults({"mint": {"status": 500}})
    assert faults.mint.status is None


async def test_unknown_routes_answer_in_openai_shape(client: Client) -> None:
    response = await client.get("/v1/files")
    await _error(response, 404, "not_found")
    response = await client.get("/v1/realtime/client_secrets")
    await _error(response, 405, "method_not_allowed")


async def test_sim_calls_lists_calls_and_request_counts(
    client: Client, offerer: RTCPeerConnection
) -> None:
    secret = await _mint(client)
    response = await client.post(
        "/v1/realtime/calls",
        data=_offer(offerer),
        headers={**SDP, "Authorization": f"Bearer {secret}"},
    )
    call_id = response.headers["Location"].rsplit("/", 1)[-1]
    body = await (await client.get("/_sim/calls", headers=CONTROL)).json()
    assert body["requests"] == {"mint": 1, "calls": 1}
    call = body["calls"][call_id]
    assert call["dialect"] == "ga" and call["state"] == "connecting" and not call["hung_up"]
    one = await (await client.get(f"/_sim/calls/{call_id}", headers=CONTROL)).json()
    assert one["call_id"] == call_id
    await _error(
        await client.get("/_sim/calls/rtc_nope", headers=CONTROL), 404, "call_id_not_found"
    )


async def test_run_simulator_serves_both_dialects_until_sigterm() -> None:
    code = (
        "from relay.upstream.simulator import run_simulator; run_simulator('127.0.0.1', 0, 'beta')"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(ROOT),
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+/v1)\n", first)
        assert match, first
        base_url = match.group(1)
        async with aiohttp.ClientSession() as http:
            # Any sk-… key is a standard key here.
            headers = {"Authorization": "Bearer sk-my-own-key-0123456789abcdef"}
            async with http.post(f"{base_url}/realtime/sessions", json={}, headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["client_secret"]["value"].startswith("ek_")
            async with http.post(
                f"{base_url}/realtime/client_secrets",
                json={"session": {"type": "realtime"}},
                headers=headers,
            ) as r:
                assert r.status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
