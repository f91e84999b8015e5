"""HTTP inputs and headers on a whole relay (real PostgreSQL, the simulator over HTTP):
session ids checked by form, malformed HTTP answered in JSON without tracebacks in the
log, and the security headers on every kind of response."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest

from relay.config import Settings
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


# Queries the relay runs by itself, on a timer (the cluster heartbeat every 0.5 s in tests).
_BACKGROUND_QUERIES = frozenset({"member_heartbeat", "recover_dead_members", "reconcile_sessions"})


def _request_queries(relay: RelayHarness) -> float:
    """Database queries so far, except the heartbeat's (they run whatever requests do)."""
    rows = relay.services.metrics.snapshot().get("relay_db_queries_total") or []
    assert isinstance(rows, list)
    return float(sum(r["value"] for r in rows if r.get("query") not in _BACKGROUND_QUERIES))


@pytest.mark.parametrize("path_id", ["%00", "is_" + "0" * 31 + "%00", "x" * 3000, "is_ZZ", "'--"])
async def test_malformed_session_ids_are_404_before_any_query(
    make_relay: MakeRelay, path_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    queries_before = _request_queries(relay)
    for method, auth in (("GET", token), ("DELETE", token), ("DELETE", OPERATOR_TOKEN)):
        async with relay.client.request(
            method, f"/api/sessions/{path_id}", headers={"Authorization": f"Bearer {auth}"}
        ) as resp:
            body = await resp.json()
            assert resp.status == 404, body
            assert body["error"]["code"] == "session_not_found"
            assert body["request_id"] == resp.headers["X-Request-ID"]
    # No session lookup reached PostgreSQL (the user's token is served from the cache).
    assert relay.counter("relay_db_queries_total", query="get_session") == 0
    assert _request_queries(relay) - queries_before <= 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_exchange_with_a_malformed_session_id_is_400(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    async with relay.client.post(
        "/api/webrtc-exchange",
        json={"session_id": "is_\u0000", "type": "offer", "sdp": "v=0"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "invalid_request", body


async def _raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()  # the relay closes the connection after a 400
    finally:
        writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HELLO\r\n\r\n",
    ],
)
async def test_malformed_http_gets_a_json_400_and_no_traceback(
    make_relay: MakeRelay, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await make_relay()
    port = relay.client.port
    assert port is not None
    caplog.set_level(logging.DEBUG)
    raw = await _raw_request(port, garbage)
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert re.fullmatch(r"HTTP/1\.[01] 400 Bad Request", lines[0]), lines
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"].startswith("application/json")
    assert int(headers["content-length"]) == len(payload)
    body = json.loads(payload)
    assert body["error"]["code"] == "bad_request"
    assert (
        REQUEST_ID.fullmatch(body["request_id"]) and headers["x-request-id"] == body["request_id"]
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert "aiohttp" not in headers.get("server", "")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], [
        (r.levelname, r.getMessage()) for r in caplog.records
    ]
    assert "malformed HTTP request (400" in caplog.text
    assert relay.counter("relay_http_malformed_requests_total") == 1
    # The relay still serves ordinary requests.
    async with relay.client.get("/healthz") as resp:
        assert resp.status == 200


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/static/page.js", 200),
        ("GET", "/static/page.css", 200),
        ("GET", "/healthz", 200),
        ("GET", "/api/stats", 401),
        ("GET", "/no/such/route", 404),
        ("POST", "/api/realtime-session", 401),
    ],
)
async def test_every_response_carries_the_security_headers(
    make_relay: MakeRelay, method: str, path: str, status: int
) -> None:
    relay = await make_relay()
    async with relay.client.request(method, path) as resp:
        assert resp.status == status
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers[name] == value, name
        csp = resp.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["frame-ancestors"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert resp.headers["Server"] == "interview-relay"
        assert not re.search(r"\d", resp.headers["Server"])


# -- JSON bodies: parsed only after authentication, and never a 500 -----------------------

# About 2 KB each, nested 1,000 deep: past the interpreter's recursion limit.
DEEP_ARRAY = b"[" * 1000 + b"]" * 1000
DEEP_OBJECT = b'{"a":' * 1000 + b"1" + b"}" * 1000


async def _post_raw(
    relay: RelayHarness, path: str, body: bytes, token: str | None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with relay.client.post(path, data=body, headers=headers) as resp:
        payload = await resp.json()
        assert payload["request_id"] == resp.headers["X-Request-ID"]
        return resp.status, payload


@pytest.mark.parametrize("path", ["/api/realtime-session", "/api/webrtc-exchange"])
async def test_deeply_nested_json_is_a_400_never_a_500(
    make_relay: MakeRelay, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    for body in (DEEP_ARRAY, DEEP_OBJECT):
        status, payload = await _post_raw(relay, path, body, token)
        assert (status, payload["error"]["code"]) == (400, "invalid_json"), payload
    assert relay.counter("relay_http_errors_total", status=500) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_deeply_nested_drain_body_is_a_400(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    status, payload = await _post_raw(relay, "/api/cluster/drain", DEEP_ARRAY, OPERATOR_TOKEN)
    assert (status, payload["error"]["code"]) == (400, "invalid_json"), payload


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/api/realtime-session", None),
        ("/api/realtime-session", "rt_" + "u" * 40),
        ("/api/webrtc-exchange", None),
        ("/api/cluster/drain", None),
        ("/api/cluster/drain", "not-the-operator-token-" + "x" * 20),
    ],
)
async def test_a_body_is_read_only_after_authentication(
    make_relay: MakeRelay, path: str, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await make_relay()
    # Neither malformed nor oversized bodies are looked at before the caller is known.
    too_large = b"{" + b" " * (relay.services.settings.server.max_body_bytes + 1) + b"}"
    for body in (DEEP_ARRAY, b"{not json", too_large):
        status, payload = await _post_raw(relay, path, body, token)
        expected = "missing_token" if token is None else "invalid_token"
        assert (status, payload["error"]["code"]) == (401, expected), payload
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_generated_operator_token_meets_the_length_rule_and_works(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"server": {"operator_token": ""}})
    token = relay.services.generated_operator_token
    assert token is not None
    # The rule a configured token must meet (server.operator_token), met by the generated one.
    assert Settings().replace("server", operator_token=token).server.operator_token == token
    async with relay.client.get("/api/stats", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
