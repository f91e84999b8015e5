"""CORS over real HTTP: pages on ``server.cors_origins`` may call the candidate API and the
OpenAI-compatible routes from the browser (the preflights a browser sends, the headers of
the answers), and nothing else is cross-origin. The browser's own view (a page on another
origin running OpenAI's Agents SDK) is tests/e2e/test_openai_agents_sdk.py."""

from __future__ import annotations

from typing import Any

import pytest

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import OPERATOR, bearer
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness

PAGE = "http://127.0.0.2:8123"
AGENTS_SDK_HEADERS = "authorization,content-type,x-openai-agents-sdk"
SESSION_PATH = "/api/sessions/is_" + "0" * 32


async def _preflight(
    relay: RelayHarness, path: str, method: str, *, origin: str = PAGE, headers: str = ""
) -> tuple[int, dict[str, str]]:
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        asked["Access-Control-Request-Headers"] = headers
    async with relay.client.options(path, headers=asked) as resp:
        return resp.status, dict(resp.headers)


@pytest.fixture
async def relay(make_relay: MakeRelay, simulator: RunningSimulator) -> RelayHarness:
    return await make_relay(overrides={"server": {"cors_origins": (PAGE, "https://other.test")}})


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/realtime/client_secrets", "POST"),
        ("/v1/realtime/calls", "POST"),
        ("/v1/realtime/calls/rtc_" + "0" * 32 + "/hangup", "POST"),
        ("/api/realtime-session", "POST"),
        ("/api/webrtc-exchange", "POST"),
        (SESSION_PATH, "GET"),
        (SESSION_PATH, "DELETE"),
        ("/api/recording-notice", "GET"),
    ],
)
async def test_a_listed_origin_is_allowed_the_candidate_and_openai_routes(
    relay: RelayHarness, path: str, method: str
) -> None:
    status, headers = await _preflight(relay, path, method, headers=AGENTS_SDK_HEADERS)
    assert status == 204, headers
    assert headers["Access-Control-Allow-Origin"] == PAGE  # that origin, never "*"
    assert method in headers["Access-Control-Allow-Methods"].split(", ")
    assert (
        headers["Access-Control-Allow-Headers"]
        == "authorization, content-type, x-openai-agents-sdk"
    )
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in headers


@pytest.mark.parametrize(
    ("origin", "method", "asked"),
    [
        ("http://127.0.0.3:8123", "POST", ""),  # not listed
        ("http://127.0.0.2:8124", "POST", ""),  # another port is another origin
        (PAGE, "PUT", ""),  # not a method of the path
        (PAGE, "POST", "authorization,x-evil"),  # a header no client of these routes sends
    ],
)
async def test_anything_else_fails_the_preflight(
    relay: RelayHarness, origin: str, method: str, asked: str
) -> None:
    status, headers = await _preflight(
        relay, "/v1/realtime/calls", method, origin=origin, headers=asked
    )
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers


async def test_answers_to_a_listed_origin_carry_it_and_expose_what_clients_read(
    relay: RelayHarness,
) -> None:
    token = await relay.add_user(seconds=600)
    page = {"Origin": PAGE, **bearer(token)}
    async with relay.client.post(
        "/v1/realtime/client_secrets", json=NOTICE_CONFIRMED, headers=page
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Access-Control-Allow-Origin"] == PAGE
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Location", "X-Request-ID", "Retry-After", "x-should-retry"} <= exposed
    # Errors too, so the page's script can read them.
    async with relay.client.post(
        "/v1/realtime/calls", data="v=0", headers={"Origin": PAGE, **bearer("ek_nope")}
    ) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == PAGE
        assert (await resp.json())["error"]["code"] == "invalid_token"
    # Another origin's request is answered (CORS is the browser's check) without them.
    async with relay.client.get(
        "/api/recording-notice", headers={"Origin": "http://127.0.0.9"}
    ) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Origin" in resp.headers["Vary"]


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/api/interviews", "POST", OPERATOR),
        ("/api/stats", "GET", OPERATOR),
        ("/api/openapi.json", "GET", {}),
        ("/healthz", "GET", {}),
    ],
)
async def test_nothing_else_is_cross_origin(
    relay: RelayHarness, path: str, method: str, headers: dict[str, Any]
) -> None:
    status, preflight = await _preflight(relay, path, method)
    assert status == 405 and "Access-Control-Allow-Origin" not in preflight
    async with relay.client.request(
        method, path, headers={"Origin": PAGE, **headers}, json={}
    ) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_without_cors_origins_no_page_elsewhere_may_call(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay()
    status, headers = await _preflight(relay, "/v1/realtime/calls", "POST")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # An OPTIONS that is no preflight: what the path allows.
    async with relay.client.options("/v1/realtime/calls") as resp:
        assert resp.status == 204 and resp.headers["Allow"] == "OPTIONS, POST"
