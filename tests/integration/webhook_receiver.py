"""A real webhook receiver for the tests: an aiohttp server on loopback that verifies every
request's signature with the Standard Webhooks reference implementation (the
``standardwebhooks`` package, not the relay's code) and answers as the test scripts it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class Received:
    at: float
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    # The parsed payload when the signature verified, else None.
    payload: dict[str, Any] | None
    verify_error: str | None
    status: int

    @property
    def type(self) -> str:
        return str(json.loads(self.body)["type"])

    @property
    def data(self) -> dict[str, Any]:
        return dict(json.loads(self.body)["data"])


@dataclass
class Receiver:
    url: str
    secret: str = ""
    received: list[Received] = field(default_factory=list)
    # The status to answer a request with (called with what arrived so far, this one
    # last); 200 by default.
    answer: Callable[[list[Received]], int] = lambda _: 200
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def verified(self) -> list[Received]:
        assert all(r.payload is not None for r in self.received), [
            (r.webhook_id, r.verify_error) for r in self.received
        ]
        return list(self.received)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in the order they arrived."""
        return [r for r in self.verified() if 200 <= r.status < 300]

    async def wait_for(self, predicate: Callable[[list[Received]], bool], within: float) -> None:
        deadline = time.monotonic() + within
        while not predicate(self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                summary = [(r.type, r.webhook_id, r.status) for r in self.received]
                raise AssertionError(f"receiver: condition not met within {within}s: {summary}")
            self.arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self.arrived.wait()
            except TimeoutError:
                continue


@asynccontextmanager
async def receiver(path: str = "/hook") -> AsyncIterator[Receiver]:
    app = web.Application()
    holder: list[Receiver] = []

    async def handle(request: web.Request) -> web.Response:
        rec = holder[0]
        body = await request.read()
        headers = dict(request.headers)
        payload: dict[str, Any] | None = None
        error = None
        try:
            payload = Webhook(rec.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            error = str(exc)
        item = Received(
            at=time.monotonic(),
            webhook_id=headers.get("webhook-id", ""),
            headers=headers,
            body=body,
            payload=payload,
            verify_error=error,
            status=0,
        )
        rec.received.append(item)
        item.status = 401 if error is not None else rec.answer(rec.received)
        rec.arrived.set()
        return web.Response(status=item.status, text="nope" if item.status >= 300 else "ok")

    app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    holder.append(Receiver(url=f"http://127.0.0.1:{port}{path}"))
    try:
        yield holder[0]
    finally:
        await runner.cleanup()


async def register(
    relay: RelayHarness, rec: Receiver, events: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """POST /api/webhooks for ``rec``; its secret goes to the receiver."""
    body = {"url": rec.url, "events": events or ["*"], **extra}
    async with relay.client.post("/api/webhooks", json=body, headers=OPERATOR) as resp:
        created: dict[str, Any] = await resp.json()
        assert resp.status == 201, created
    rec.secret = created["secret"]
    return created


async def deliveries(relay: RelayHarness, endpoint_id: str) -> list[dict[str, Any]]:
    async with relay.client.get(
        f"/api/webhooks/{endpoint_id}/deliveries?limit=200", headers=OPERATOR
    ) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    return list(body["items"])


@asynccontextmanager
async def held_receiver(
    *, first_only: bool = False
) -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """A receiver that holds every request (``first_only``: the first one, answering every
    later one at once) until released, for races with a delivery in flight: its URL, the
    event set when a held request arrived, and the one that releases them (answered 200).
    No signature check: what is raced is the relay's side."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if first_only and arrived.is_set():
            return web.Response(text="ok")
        arrived.set()
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", arrived, release
    finally:
        release.set()
        await runner.cleanup()
