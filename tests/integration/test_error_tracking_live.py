"""Sentry for real: with SENTRY_DSN pointing at a local stand-in for the ingestion
endpoint, an unhandled error in a relay request arrives as an event tagged with the
request id, with no token, key or SDP in it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.observability import error_tracking, request_context
from relay.observability.metrics import MetricsRegistry
from relay.web.middleware import make_middleware

SECRET_TOKEN = "rt_live-user-token-abcdefgh"
SECRET_KEY = "ek_ephemeral-key-abcdefgh"
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\na=ice-pwd:icepasswordabcdef\r\n"


class Ingest:
    """Collects the events posted to /api/<project>/envelope/."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def envelope(self, request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp has already undone any Content-Encoding
        lines = raw.split(b"\n")
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                self.events.append(json.loads(payload))
                self.arrived.set()
        return web.json_response({})


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[Ingest, str]]:
    sink = Ingest()
    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", sink.envelope)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield sink, f"http://publickey@127.0.0.1:{server.port}/42"
    finally:
        await asyncio.to_thread(error_tracking.shutdown)
        await server.close()


async def failing(request: web.Request) -> web.Response:
    request_context.bind_session("is_0123456789abcdef")
    token = SECRET_TOKEN  # a local the SDK would capture with the stack frame
    raise RuntimeError(f"exchange failed for Bearer {token} with {SECRET_KEY}: {OFFER}")


def negotiate(sdp: str) -> None:
    offer = sdp  # an SDP held in a local, as the media bridge's negotiation holds one
    answer = {"type": "answer", "sdp": offer}
    raise RuntimeError(f"negotiation failed ({len(offer)} bytes, {len(answer)} fields)")


async def failing_with_sdp_in_locals(request: web.Request) -> web.Response:
    negotiate(await request.text())
    return web.json_response({})


async def test_no_sdp_arrives_through_stack_frame_locals(
    ingest: tuple[Ingest, str],
    aiohttp_client: Any,
) -> None:
    sink, dsn = ingest
    # Off the loop: the SDK's first init imports its default integrations (file reads),
    # as the relay's start does before its loop runs.
    assert await asyncio.to_thread(
        error_tracking.init_error_tracking, {"SENTRY_DSN": dsn}, release="test"
    )
    app = web.Application(middlewares=[make_middleware(MetricsRegistry(process_metrics=False))])
    app.router.add_post("/api/negotiate", failing_with_sdp_in_locals)
    client = await aiohttp_client(app)

    async with client.post("/api/negotiate", data=OFFER) as resp:
        assert resp.status == 500

    async with asyncio.timeout(10):
        await sink.arrived.wait()
    dumped = json.dumps(sink.events)
    assert "negotiation failed" in dumped and "negotiate" in dumped  # the frame is there
    for fragment in ("v=0", "ice-pwd", "icepassword", "IN IP4"):
        assert fragment not in dumped, fragment


async def test_an_unhandled_error_arrives_scrubbed_and_tagged(
    ingest: tuple[Ingest, str],
    aiohttp_client: Any,
) -> None:
    sink, dsn = ingest
    # Off the loop: the SDK's first init imports its default integrations (file reads),
    # as the relay's start does before its loop runs.
    assert await asyncio.to_thread(
        error_tracking.init_error_tracking, {"SENTRY_DSN": dsn}, release="test"
    )
    app = web.Application(middlewares=[make_middleware(MetricsRegistry(process_metrics=False))])
    app.router.add_post("/api/boom", failing)
    client = await aiohttp_client(app)

    async with client.post(
        "/api/boom", headers={"Authorization": f"Bearer {SECRET_TOKEN}"}, data=OFFER
    ) as resp:
        assert resp.status == 500
        request_id = resp.headers["X-Request-ID"]
        assert (await resp.json())["error"]["code"] == "internal_error"

    async with asyncio.timeout(10):
        await sink.arrived.wait()
    dumped = json.dumps(sink.events)
    for secret in (SECRET_TOKEN, SECRET_KEY, "icepassword", "a=ice-pwd"):
        assert secret not in dumped, secret
    event = sink.events[0]
    tags = event.get("tags", {})
    assert tags.get("request_id") == request_id
    assert tags.get("session_id") == "is_0123456789abcdef"
    assert "RuntimeError" in dumped
