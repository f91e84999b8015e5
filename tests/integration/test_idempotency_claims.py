"""Idempotency-Key claims under the timings that used to break them (relay.web.idempotency):
a claim taken over after it went stale, and a work transaction whose commit landed while
its reply was lost and the database stayed unreachable. Real PostgreSQL and real HTTP; a
claim's age is set in its row (what the staleness is measured from), never waited for."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness
from tests.integration.test_webhooks import LOOPBACK
from tests.integration.webhook_receiver import OPERATOR
from tests.support.reply_cutter import ReplyCutter


async def call(
    relay: RelayHarness, method: str, path: str, body: Any = None, *, key: str
) -> tuple[int, Any, str | None]:
    headers = OPERATOR | {"Idempotency-Key": key}
    async with relay.client.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed")


async def relay_behind(
    make_relay: MakeRelay, cutter: ReplyCutter, database_url: str
) -> RelayHarness:
    """A relay whose database connections go through ``cutter``; the test's own queries
    (``relay.sql``) go to PostgreSQL directly."""
    relay = await make_relay(dsn=cutter.dsn(database_url), overrides={"webhooks": LOOPBACK})
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    return dataclasses.replace(relay, database_url=database_url)


async def go_stale(relay: RelayHarness, key: str) -> None:
    """The key's claim as old as one whose request ran past ``STALE_CLAIM`` (5 minutes)."""
    aged = await relay.sql(
        """UPDATE idempotency_keys SET created_at = now() - interval '6 minutes'
           WHERE key = $1 AND status = 'in_progress' RETURNING 1""",
        key,
    )
    assert aged, "no claim in progress to age"


@asynccontextmanager
async def first_request_held() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """A webhook receiver that holds the first request it gets until released and answers
    every later one at once: its URL, the event set when the first arrived, and the one
    that releases it."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if not arrived.is_set():
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


async def test_a_request_whose_stale_claim_was_taken_over_does_not_overwrite_its_answer(
    make_relay: MakeRelay,
) -> None:
    """A test event (POST …/test: its answer is stored after the work) is held by its
    receiver past the claim's staleness; a retry with the same key takes the claim over
    and is answered. When the first one finishes, its answer must not replace the one the
    key now holds: a third request with the key replays the second's delivery."""
    async with first_request_held() as (url, arrived, release):
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        status, endpoint, _ = await call(
            relay, "POST", "/api/webhooks", {"url": url, "events": ["*"]}, key="make-hook"
        )
        assert status == 201, endpoint
        path = f"/api/webhooks/{endpoint['id']}/test"

        first = asyncio.create_task(call(relay, "POST", path, key="test-once"))
        async with asyncio.timeout(10):
            await arrived.wait()
        await go_stale(relay, "test-once")
        status, second, replayed = await call(relay, "POST", path, key="test-once")
        assert status == 200 and replayed is None, second  # it ran: the claim was its own
        release.set()
        status, own, _ = await first
        assert status == 200, own  # its work was done: its client gets its answer
        assert own["id"] != second["id"]

    status, again, replayed = await call(relay, "POST", path, key="test-once")
    assert status == 200 and replayed == "true", again
    assert again["id"] == second["id"]


async def test_a_claim_whose_commit_landed_and_reply_was_lost_is_its_own_on_retry(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """The claim's INSERT commits, its reply is lost, the store retries it: the retry finds
    the claim its own first attempt wrote (its token), not a duplicate's still running
    (409 idempotency_key_in_use), and the request runs."""
    relay = await relay_behind(make_relay, cutter, database_url)
    cutter.arm(b"INSERT INTO idempotency_keys", then=b"COMMIT")
    status, created, _ = await call(
        relay, "POST", "/api/keys", {"name": "ci", "scope": "read"}, key="new-key"
    )
    assert cutter.cuts == 1
    assert status == 201, created
    status, again, replayed = await call(
        relay, "POST", "/api/keys", {"name": "ci", "scope": "read"}, key="new-key"
    )
    assert (status, replayed) == (201, "true") and again == created
    assert len(await relay.sql("SELECT id FROM api_keys WHERE name = 'ci'")) == 1
