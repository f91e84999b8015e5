"""HTTP inputs and headers on a whole relay (real PostgreSQL, the simulator over HTTP):
session ids checked by form, malformed HTTP answered in JSON without tracebacks in the
log, and the security headers on every kind of response."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.app import create_app
from relay.config import Settings
from relay.observability.logging import RequestContextFilter
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness, relay_settings

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")
# The body of a session request whose client showed the recording notice.
CONFIRMED = {"recording_notice_shown": True}


def _went_to_the_database(response_headers: Mapping[str, str]) -> bool:
    """Whether handling this request ran a database statement: the request's own stages
    (Server-Timing), not the relay's background work (heartbeat, housekeeping, webhook
    delivery) that runs meanwhile."""
    stages = [
        part.split(";", 1)[0].strip() for part in response_headers["Server-Timing"].split(",")
    ]
    return "db" in stages


@pytest.mark.parametrize("path_id", ["%00", "is_" + "0" * 31 + "%00", "x" * 3000, "is_ZZ", "'--"])
async def test_malformed_session_ids_are_404_before_any_query(
    make_relay: MakeRelay, path_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The token is cached after its first lookup; without the database's change
    # notifications, which could drop the new user's entry again while it is being read.
    relay = await make_relay(overrides={"cache": {"invalidate_from_database": False}})
    token = await relay.add_user()
    reached_database = 0
    for method, auth in (("GET", token), ("DELETE", token), ("DELETE", OPERATOR_TOKEN)):
        async with relay.client.request(
            method, f"/api/sessions/{path_id}", headers={"Authorization": f"Bearer {auth}"}
        ) as resp:
            body = await resp.json()
            assert resp.status == 404, body
            assert body["error"]["code"] == "session_not_found"
            assert body["request_id"] == resp.headers["X-Request-ID"]
            reached_database += _went_to_the_database(resp.headers)
    # No session lookup reached PostgreSQL (the user's token is served from the cache).
    assert relay.counter("relay_db_queries_total", query="get_session") == 0
    assert reached_database <= 1
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
    # What configure_logging's handler does: each record gets the request id of its context.
    caplog.handler.addFilter(RequestContextFilter())
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
    assert headers["cache-control"] == "no-store" and headers["server-timing"].startswith("total;")
    assert "aiohttp" not in headers.get("server", "")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], [
        (r.levelname, r.getMessage()) for r in caplog.records
    ]
    (line,) = [r for r in caplog.records if "malformed HTTP request (400" in r.getMessage()]
    # The line is found by the id the client was given.
    assert line.request_id == headers["x-request-id"]  # type: ignore[attr-defined]
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


# Filter values PostgreSQL cannot take: a NUL character, a time outside its range.
HOSTILE_FILTERS = [
    ("email", "a%00b@example.test"),
    ("interview_id", "iv_%00"),
    ("since", "0001-01-01T00:00:00%2B01:00"),
    ("until", "9999-12-31T23:59:59-01:00"),
]


@pytest.mark.parametrize("path", ["/api/recordings", "/api/sessions", "/api/interviews"])
async def test_hostile_list_filters_are_a_400_naming_them_never_a_500(
    make_relay: MakeRelay, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await make_relay()
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    for name, value in HOSTILE_FILTERS:
        if path == "/api/interviews" and name == "interview_id":
            continue  # not a filter of this list
        async with relay.client.get(f"{path}?{name}={value}", headers=headers) as resp:
            body = await resp.json()
        assert resp.status == 400, (name, body)
        assert body["error"]["code"] == "invalid_parameter", body
        assert body["error"]["errors"][0]["field"] == name, body
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


# -- caching and transport security headers ----------------------------------------------


async def test_authenticated_json_responses_are_never_stored(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    user = {"Authorization": f"Bearer {token}"}
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

    async def call(method: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
        async with relay.client.request(method, path, headers=headers, **kwargs) as resp:
            assert resp.status < 300, (path, await resp.text())
            assert resp.headers.get("Cache-Control") == "no-store", (method, path)
            return await resp.json()

    # The session carries a TURN credential; the exchange the relay's SDP answer.
    session = await call("POST", "/api/realtime-session", user, json=CONFIRMED)
    browser = BrowserPeer()
    try:
        offer = {"session_id": session["session_id"], "type": "offer", "sdp": await browser.offer()}
        await call("POST", "/api/webrtc-exchange", user, json=offer)
        await call("GET", f"/api/sessions/{session['session_id']}", user)
        await call("GET", "/api/recordings", operator)
        await call("GET", "/api/stats", operator)
        await call("GET", "/api/stats?scope=cluster", operator)
    finally:
        await browser.close()
    # Errors too: a refusal says nothing a cache should keep either.
    async with relay.client.post("/api/realtime-session") as resp:
        assert resp.status == 401 and resp.headers.get("Cache-Control") == "no-store"
    drain = {"member": "no-such-member"}
    async with relay.client.post("/api/cluster/drain", headers=operator, json=drain) as resp:
        assert resp.status == 404 and resp.headers.get("Cache-Control") == "no-store"
        assert (await resp.json())["error"]["code"] == "member_not_found"


HSTS = "max-age=31536000"


@pytest.mark.parametrize(
    ("trusted", "proto", "hsts"),
    [
        (True, "https", True),
        (True, "https, http", True),  # the client-facing proxy's scheme comes first
        (True, "http", False),
        (True, None, False),
        (False, "https", False),  # anyone else's word is not believed
    ],
)
async def test_hsts_when_a_trusted_proxy_says_the_client_came_over_tls(
    make_relay: MakeRelay, trusted: bool, proto: str | None, hsts: bool
) -> None:
    # The test client connects from 127.0.0.1, as a reverse proxy on this host would.
    proxies = ["127.0.0.0/8"] if trusted else []
    relay = await make_relay(overrides={"server": {"trusted_proxies": proxies}})
    headers = {"X-Forwarded-Proto": proto} if proto else {}
    for path in ("/", "/healthz", "/api/stats", "/no/such/route"):
        async with relay.client.get(path, headers=headers) as resp:
            assert resp.headers.get("Strict-Transport-Security") == (HSTS if hsts else None), path


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_hsts_over_a_direct_tls_connection(
    database_url: str, simulator: RunningSimulator, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    app = create_app(relay_settings(database_url, simulator.base_url), instance_id="tls-test")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
        port = runner.addresses[0][1]
        client_tls = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/healthz"):
                async with http.get(f"https://127.0.0.1:{port}{path}", ssl=client_tls) as resp:
                    assert resp.status == 200
                    assert resp.headers.get("Strict-Transport-Security") == HSTS, path
    finally:
        await asyncio.wait_for(runner.cleanup(), 45.0)
