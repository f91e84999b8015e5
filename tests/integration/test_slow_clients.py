"""Slow clients on raw sockets against a whole relay: a connection that does not finish its
request line and headers within ``server.header_timeout_s``, or its body within
``server.body_timeout_s`` of the relay starting to read it, is closed (the body with a JSON
408 first), however it trickles its bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import pytest

from relay.config import Settings
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import RelayHarness

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
DEADLINES = {"server": {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S}}
# How long past a deadline the relay may take to act on it (a loaded machine).
SLACK_S = 5.0


@contextlib.asynccontextmanager
async def connection(
    relay: RelayHarness,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = relay.client.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """Everything the relay sends until it closes the connection, and when that was."""
    started = time.monotonic()
    data = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data, time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` a byte at a time until done or the relay hangs up."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every_s)


def open_connections(relay: RelayHarness) -> int:
    runner = relay.client.server.runner
    assert runner is not None and runner.server is not None
    return len(runner.server.connections)


def test_the_deadlines_default_to_10_and_30_seconds() -> None:
    assert (Settings().server.header_timeout_s, Settings().server.body_timeout_s) == (10.0, 30.0)


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects, says nothing
        b"GET /hea",  # half a request line
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never finished
    ],
)
async def test_a_request_whose_headers_do_not_arrive_in_time_is_closed(
    make_relay: MakeRelay, sent: bytes
) -> None:
    relay = await make_relay(overrides=DEADLINES)
    async with connection(relay) as (reader, writer):
        writer.write(sent)
        await writer.drain()
        data, after = await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
    assert data == b""
    assert after >= HEADER_TIMEOUT_S * 0.9, after
    await wait_until(lambda: open_connections(relay) == 0, SLACK_S, "the connection gone")


async def test_headers_trickled_a_byte_at_a_time_do_not_extend_the_deadline(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides=DEADLINES)
    headers = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    async with connection(relay) as (reader, writer):
        sender = asyncio.create_task(trickle(writer, headers, 0.05))
        try:
            data, after = await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
        finally:
            sender.cancel()
    # Hung up while the client was still sending (it needed over 10 s for its headers).
    assert data == b"" and after < len(headers) * 0.05


async def test_an_idle_keep_alive_connection_is_closed_after_the_header_deadline(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides=DEADLINES)
    async with connection(relay) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        _, after = await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
    assert after >= HEADER_TIMEOUT_S * 0.5, after


def _parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


@pytest.mark.parametrize("every_s", [None, 0.05])  # stalls; trickles a byte at a time
async def test_a_body_that_does_not_arrive_in_time_gets_a_408_and_the_connection_closes(
    make_relay: MakeRelay, every_s: float | None
) -> None:
    relay = await make_relay(overrides=DEADLINES)
    token = await relay.add_user()
    body = json.dumps({"recording_notice_shown": True, "padding": "x" * 400}).encode()
    head = (
        b"POST /api/realtime-session HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    async with connection(relay) as (reader, writer):
        writer.write(head + body[:10])
        await writer.drain()
        sender = None
        if every_s is not None:
            sender = asyncio.create_task(trickle(writer, body[10:], every_s))
        try:
            raw, after = await read_until_closed(reader, BODY_TIMEOUT_S + SLACK_S)
        finally:
            if sender is not None:
                sender.cancel()
    status, headers, payload = _parse(raw)
    assert status == "HTTP/1.1 408 Request Timeout", raw[:200]
    assert headers["connection"] == "close"
    error = json.loads(payload)
    assert error["error"]["code"] == "body_timeout"
    assert error["request_id"] == headers["x-request-id"]
    assert after >= BODY_TIMEOUT_S * 0.9, after
    # Nothing was admitted on a body that never came.
    assert relay.counter("relay_admission_total", outcome="admitted") == 0
    assert relay.counter("relay_http_errors_total", status=408, code="body_timeout") == 1
    await wait_until(lambda: open_connections(relay) == 0, SLACK_S, "the connection gone")


async def test_a_body_sent_in_time_is_served_on_the_same_connection(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides=DEADLINES)
    token = await relay.add_user()
    body = json.dumps({"recording_notice_shown": True}).encode()
    head = (
        b"POST /api/realtime-session HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    async with connection(relay) as (reader, writer):
        writer.write(head)
        await writer.drain()
        # Well within the deadline, in two parts.
        writer.write(body[:5])
        await writer.drain()
        writer.write(body[5:])
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 201"), status
