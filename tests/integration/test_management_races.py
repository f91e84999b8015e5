"""The management API under adversarial timing: requests racing each other, and writes whose
reply is lost after their commit. Real PostgreSQL and real HTTP; every race is forced into
its bad order with events, row locks or a proxy that loses a reply, never left to timing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness
from tests.integration.test_webhooks import LOOPBACK
from tests.integration.webhook_receiver import OPERATOR, held_receiver
from tests.support.reply_cutter import ReplyCutter


async def call(
    relay: RelayHarness, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    headers = kwargs.pop("headers", OPERATOR)
    async with relay.client.request(method, path, json=body, headers=headers, **kwargs) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def relay_behind(
    make_relay: MakeRelay, cutter: ReplyCutter, database_url: str
) -> RelayHarness:
    relay = await make_relay(dsn=cutter.dsn(database_url), overrides={"webhooks": LOOPBACK})
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    return relay


async def test_a_test_event_whose_endpoint_is_deleted_while_it_is_sent_is_a_404(
    make_relay: MakeRelay,
) -> None:
    """POST …/test holds its delivery while the receiver answers; a DELETE of the endpoint
    meanwhile takes the delivery with it. The test's outcome then has nowhere to go: the
    answer is the endpoint's 404, not a 500 from the attempt log's foreign key."""
    async with held_receiver() as (url, arrived, release):
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        status, endpoint = await call(relay, "POST", "/api/webhooks", {"url": url, "events": ["*"]})
        assert status == 201, endpoint
        path = f"/api/webhooks/{endpoint['id']}"

        test = asyncio.create_task(call(relay, "POST", f"{path}/test"))
        async with asyncio.timeout(10):
            await arrived.wait()
        status, _ = await call(relay, "DELETE", path)
        assert status == 204
        release.set()
        status, body = await test
        assert status == 404, body
        assert body["error"]["code"] == "webhook_not_found"
        assert body["request_id"].startswith("req_")
        assert await relay.sql("SELECT id FROM webhook_attempts") == []


@pytest.mark.parametrize("seconds", [60, -60])
async def test_seconds_added_once_when_the_commit_landed_and_its_reply_was_lost(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str, seconds: int
) -> None:
    """PATCH {"add_seconds": N} commits, the reply is lost, the store retries: the retry
    finds the first attempt committed and answers its result; N is added once (twice
    would grant, or take, the candidate's seconds twice)."""
    relay = await relay_behind(make_relay, cutter, database_url)
    await relay.add_user(seconds=100, email="ana@example.test")
    [user] = await relay.sql("SELECT id FROM users WHERE email = 'ana@example.test'")

    cutter.arm(b"remaining_seconds = LEAST", then=b"COMMIT")
    status, body = await call(relay, "PATCH", f"/api/users/{user['id']}", {"add_seconds": seconds})
    assert cutter.cuts == 1  # the reply of the first attempt's commit was lost
    assert status == 200, body
    assert body["remaining_seconds"] == 100 + seconds
    [row] = await relay.sql("SELECT remaining_seconds FROM users WHERE id = $1", user["id"])
    assert row["remaining_seconds"] == 100 + seconds


async def test_duplicates_finding_a_key_released_under_them_run_once_and_never_500(
    make_relay: MakeRelay, database_url: str
) -> None:
    """Two duplicates wait on a key's claim (a row lock stands in for the request holding
    it) that is released under them, as a first request's failure releases it. Both find
    it gone and claim it again: one runs, the other is told the key is in use (or gets the
    replay); neither is a 500 from the key's primary key."""
    # Statements may wait on the lock for as long as the test holds it.
    overrides: dict[str, dict[str, Any]] = {
        "webhooks": LOOPBACK,
        "database": {"query_timeout_s": 30.0},
    }
    relay = await make_relay(overrides=overrides)
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    key = "race-released-key"
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute(
            """INSERT INTO idempotency_keys (principal, key, request_hash, status)
               VALUES ('operator', $1, 'first', 'in_progress')""",
            key,
        )
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM idempotency_keys WHERE key = $1 FOR UPDATE", key)
        body = {"url": "http://127.0.0.1:9/hook", "events": ["*"]}
        headers = OPERATOR | {"Idempotency-Key": key}
        duplicates = [
            asyncio.create_task(call(relay, "POST", "/api/webhooks", body, headers=headers))
            for _ in range(2)
        ]

        async def both_wait() -> bool:
            assert not any(task.done() for task in duplicates), [
                task.result() for task in duplicates if task.done()
            ]
            # This test's database only: the server is shared with other tests' (and a
            # row-lock wait is on a transaction id, which pg_locks gives no database).
            # Inside the holder's transaction pg_stat_activity is a snapshot: cleared first.
            await holder.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await holder.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
            return bool(waiting == 2)

        await poll(both_wait, 10, "both duplicates waiting on the claim")
        await holder.execute("DELETE FROM idempotency_keys WHERE key = $1", key)
        await lock.commit()
        answers = await asyncio.gather(*duplicates)
    finally:
        await holder.close()
    statuses = sorted(status for status, _ in answers)
    assert statuses in ([201, 201], [201, 409]), answers
    if statuses == [201, 409]:
        [refused] = [body for status, body in answers if status == 409]
        assert refused["error"]["code"] == "idempotency_key_in_use"
    assert len(await relay.sql("SELECT id FROM webhook_endpoints")) == 1


@pytest.mark.parametrize("lost", ["the delete's reply", "the commit's reply"])
async def test_a_webhook_deleted_whose_reply_was_lost_answers_204_not_404(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str, lost: str
) -> None:
    """The DELETE lands, its reply is lost, the store retries: the retry must not answer
    404 ``webhook_not_found`` for the endpoint its own first attempt removed."""
    relay = await relay_behind(make_relay, cutter, database_url)
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["*"]}
    status, endpoint = await call(relay, "POST", "/api/webhooks", hook)
    assert status == 201, endpoint

    if lost == "the delete's reply":
        cutter.arm(b"DELETE FROM webhook_endpoints")
    else:
        cutter.arm(b"DELETE FROM webhook_endpoints", then=b"COMMIT")
    status, body = await call(relay, "DELETE", f"/api/webhooks/{endpoint['id']}")
    assert cutter.cuts == 1
    assert status == 204, body
    assert await relay.sql("SELECT id FROM webhook_endpoints") == []


async def test_a_connection_lost_inside_a_transaction_is_retried_not_a_500(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """The connection dies in the middle of a transaction (a statement's reply lost, as
    when the database restarts or the network fails): the transaction never committed, and
    the store's retry runs it again. asyncpg reports the loss from the transaction's exit
    as an InterfaceError ("the underlying connection is closed"), which must count as the
    connection error it is, not as an unexpected 500."""
    relay = await relay_behind(make_relay, cutter, database_url)
    body = {"candidate": {"email": "ana@example.test"}, "instructions": "Hello."}
    cutter.arm(b"INSERT INTO interviews")
    status, created = await call(relay, "POST", "/api/interviews", body)
    assert cutter.cuts == 1
    assert status == 201, created
    assert [r["id"] for r in await relay.sql("SELECT id FROM interviews")] == [created["id"]]


async def test_an_attempt_recorded_whose_reply_was_lost_is_logged_once(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """The outcome of an attempt commits, its reply is lost, the store retries: the log
    shows the one attempt there was (not two), and the answer its status."""
    async with held_receiver() as (url, _, release):
        release.set()
        relay = await relay_behind(make_relay, cutter, database_url)
        status, endpoint = await call(relay, "POST", "/api/webhooks", {"url": url, "events": ["*"]})
        assert status == 201, endpoint

        cutter.arm(b"INSERT INTO webhook_attempts", then=b"COMMIT")
        status, tested = await call(relay, "POST", f"/api/webhooks/{endpoint['id']}/test")
        assert cutter.cuts == 1
        assert status == 200, tested
        assert (tested["status"], tested["attempts"]) == ("delivered", 1)
        assert [a["outcome"] for a in tested["attempt_log"]] == ["delivered"]
