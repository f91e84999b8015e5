"""Idempotency-Key claims under the timings that used to break them (relay.web.idempotency):
a claim taken over after it went stale, and a work transaction whose commit landed while
its reply was lost and the database stayed unreachable. Real PostgreSQL and real HTTP; a
claim's age is set in its row (what the staleness is measured from), never waited for."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import asyncpg
import pytest

from relay.admission.tokens import hash_token, unusable_token_hash
from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness
from tests.integration.test_webhooks import LOOPBACK
from tests.integration.webhook_receiver import OPERATOR, held_receiver
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
    """The key's row as old as a claim whose request ran past ``STALE_CLAIM`` (5 minutes)."""
    aged = await relay.sql(
        """UPDATE idempotency_keys SET created_at = now() - interval '6 minutes'
           WHERE key = $1 RETURNING 1""",
        key,
    )
    assert aged, "no row for the key to age"


async def waiting_on_locks(conn: asyncpg.Connection) -> int:
    """How many statements of this test's database wait on a lock."""
    # Inside a transaction pg_stat_activity is a snapshot: cleared first.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    waiting: int = await conn.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'"""
    )
    return waiting


async def waiting_on(conn: asyncpg.Connection, count: int) -> bool:
    """Whether ``count`` statements of this test's database wait on a lock."""
    return await waiting_on_locks(conn) == count


async def test_a_request_whose_stale_claim_was_taken_over_does_not_overwrite_its_answer(
    make_relay: MakeRelay,
) -> None:
    """A test event (POST …/test: its answer is stored after the work) is held by its
    receiver past the claim's staleness; a retry with the same key takes the claim over
    and is answered. When the first one finishes, its answer must not replace the one the
    key now holds: a third request with the key replays the second's delivery."""
    async with held_receiver(first_only=True) as (url, arrived, release):
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


INTERVIEW = {
    "candidate": {"email": "ana@example.test", "name": "Ana"},
    "instructions": "You interview Ana for the backend role.",
}


async def test_an_interview_whose_commit_landed_unanswered_is_replayed_not_created_twice(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """The interview's transaction commits; its reply is lost and the database stays
    unreachable through the store's retries, so the request answers 503 and cannot give its
    claim back. Once the database is back and the claim is past its staleness, a retry
    with the same key replays the answer the work's own transaction stored: one interview,
    and the candidate_url whose invite is the one stored (it was shown nowhere before)."""
    relay = await relay_behind(make_relay, cutter, database_url)
    cutter.arm(b"INSERT INTO interviews", then=b"COMMIT", outage=True)
    status, body, _ = await call(relay, "POST", "/api/interviews", INTERVIEW, key="iv-ana")
    assert cutter.cuts == 1
    assert status == 503 and body["error"]["code"] == "database_unavailable", body
    [created] = await relay.sql("SELECT id, invite_token_hash FROM interviews")  # it landed

    cutter.restore()
    await go_stale(relay, "iv-ana")
    for _ in range(2):
        status, body, replayed = await call(
            relay, "POST", "/api/interviews", INTERVIEW, key="iv-ana"
        )
        assert (status, replayed) == (201, "true"), body
        assert body["id"] == created["id"]
        invite = body["candidate_url"].split("#invite=", 1)[1]
        assert hash_token(invite) == created["invite_token_hash"]
    assert len(await relay.sql("SELECT id FROM interviews")) == 1


async def test_a_work_transaction_whose_claim_was_taken_over_rolls_back(
    make_relay: MakeRelay, database_url: str
) -> None:
    """An interview's creation waits on a row lock (the candidate's user being inserted by
    another transaction) past its claim's staleness; a retry with the same key takes the
    claim over and waits too. When the lock goes, the first request's transaction finds
    the claim no longer its own and rolls back (409, retryable): one interview, and the
    key's answer is the second request's."""
    # Statements may wait on the lock for as long as the test holds it.
    overrides: dict[str, dict[str, Any]] = {"database": {"query_timeout_s": 30.0}}
    relay = await make_relay(overrides=overrides)
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    holder = await asyncpg.connect(database_url)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(
            "INSERT INTO users (email, token_hash) VALUES ('ana@example.test', $1)",
            unusable_token_hash(),
        )
        first = asyncio.create_task(
            call(relay, "POST", "/api/interviews", INTERVIEW, key="iv-slow")
        )

        async def waiting(count: int) -> bool:
            assert not first.done(), first.result()
            return await waiting_on_locks(holder) == count

        await poll(lambda: waiting(1), 10, "the first creation waiting on the user's row")
        await go_stale(relay, "iv-slow")
        second = asyncio.create_task(
            call(relay, "POST", "/api/interviews", INTERVIEW, key="iv-slow")
        )
        await poll(lambda: waiting(2), 10, "the second creation waiting on it too")
        await lock.rollback()
        (status, own, _), (status2, answer, _) = await asyncio.gather(first, second)
    finally:
        await holder.close()
    assert status == 409 and own["error"]["code"] == "idempotency_key_in_use", own
    assert own["error"]["retryable"] is True
    assert status2 == 201, answer
    assert [r["id"] for r in await relay.sql("SELECT id FROM interviews")] == [answer["id"]]

    status, again, replayed = await call(relay, "POST", "/api/interviews", INTERVIEW, key="iv-slow")
    assert (status, replayed) == (201, "true") and again == answer


async def replace_invite(relay: RelayHarness) -> tuple[str, Any]:
    status, interview, _ = await call(relay, "POST", "/api/interviews", INTERVIEW, key="setup")
    assert status == 201, interview
    return f"/api/interviews/{interview['id']}/invite", None


async def rotate_secret(relay: RelayHarness) -> tuple[str, Any]:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["*"]}
    status, endpoint, _ = await call(relay, "POST", "/api/webhooks", hook, key="setup")
    assert status == 201, endpoint
    return f"/api/webhooks/{endpoint['id']}/rotate-secret", {"expire_previous_in_s": 60}


async def reissue_token(relay: RelayHarness) -> tuple[str, Any]:
    await relay.add_user(email="ana@example.test")
    [user] = await relay.sql("SELECT id FROM users")
    return f"/api/users/{user['id']}/token", None


async def create_key(relay: RelayHarness) -> tuple[str, Any]:
    return "/api/keys", {"name": "ci"}


async def create_webhook(relay: RelayHarness) -> tuple[str, Any]:
    return "/api/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["*"]}


# Each route whose work is one transaction: how to set it up, the statement of its work
# (its transaction's COMMIT is what lands), and the rows that show the work done once.
LANDED_CASES = {
    "new invite": (
        replace_invite,
        b"SET invite_token_hash",
        "SELECT invite_token_hash FROM interviews",
    ),
    "rotated secret": (
        rotate_secret,
        b"UPDATE webhook_endpoints SET",
        "SELECT secret_sealed, previous_secret_sealed FROM webhook_endpoints",
    ),
    "reissued token": (reissue_token, b"UPDATE users SET", "SELECT token_hash FROM users"),
    "new key": (create_key, b"INSERT INTO api_keys", "SELECT id, key_hash FROM api_keys"),
    "new webhook": (
        create_webhook,
        b"INSERT INTO webhook_endpoints",
        "SELECT id FROM webhook_endpoints",
    ),
}


@pytest.mark.parametrize("case", LANDED_CASES)
async def test_every_one_transaction_route_replays_a_commit_that_landed_unanswered(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str, case: str
) -> None:
    """As for an interview: the work commits, its reply is lost, the database stays out of
    reach (503); past the claim's staleness a retry with the key replays the answer stored
    with the work, and the work's rows are as that one commit left them."""
    setup, marker, rows = LANDED_CASES[case]
    relay = await relay_behind(make_relay, cutter, database_url)
    path, body = await setup(relay)
    cutter.arm(marker, then=b"COMMIT", outage=True)
    status, answer, _ = await call(relay, "POST", path, body, key="landed")
    assert cutter.cuts == 1
    assert status == 503 and answer["error"]["code"] == "database_unavailable", answer
    landed = [tuple(r) for r in await relay.sql(rows)]

    cutter.restore()
    await go_stale(relay, "landed")
    status, replay, replayed = await call(relay, "POST", path, body, key="landed")
    assert status in (200, 201) and replayed == "true", replay
    assert [tuple(r) for r in await relay.sql(rows)] == landed  # not done a second time


async def test_a_store_retry_after_its_work_landed_answers_the_stored_answer(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """A new invite's commit lands with its reply lost; the store's retry writes the same
    hash again, and its transaction finds the key already answered, by this request's own
    first attempt: it rolls back and the request answers that stored answer (not a 409)."""
    relay = await relay_behind(make_relay, cutter, database_url)
    path, _ = await replace_invite(relay)
    cutter.arm(b"SET invite_token_hash", then=b"COMMIT")
    status, answer, replayed = await call(relay, "POST", path, key="invite-once")
    assert cutter.cuts == 1
    assert status == 200 and replayed is None, answer
    [row] = await relay.sql("SELECT invite_token_hash FROM interviews")
    invite = answer["candidate_url"].split("#invite=", 1)[1]
    assert hash_token(invite) == row["invite_token_hash"]


async def test_a_request_whose_claim_was_taken_over_does_not_release_it_when_it_fails(
    make_relay: MakeRelay, database_url: str
) -> None:
    """A creation waits on a row lock past its claim's staleness; a later request with the
    key (another candidate) takes the claim over and waits on a lock of its own. The first
    then fails (its candidate turns out deactivated: 409). Its failure must not give back
    the claim the second now holds, which would let a third request with the key run
    beside the second: the key's row stays the second's, and ends with its answer."""
    overrides: dict[str, dict[str, Any]] = {"database": {"query_timeout_s": 30.0}}
    relay = await make_relay(overrides=overrides)
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    bob = INTERVIEW | {"candidate": {"email": "bob@example.test"}}
    holders = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        locks = [holder.transaction() for holder in holders]
        for lock in locks:
            await lock.start()
        # Ana is inserted deactivated (her creation fails once it sees her); Bob is held.
        await holders[0].execute(
            "INSERT INTO users (email, token_hash, active) VALUES ('ana@example.test', $1, false)",
            unusable_token_hash(),
        )
        await holders[1].execute(
            "INSERT INTO users (email, token_hash) VALUES ('bob@example.test', $1)",
            unusable_token_hash(),
        )
        first = asyncio.create_task(call(relay, "POST", "/api/interviews", INTERVIEW, key="k"))
        await poll(lambda: waiting_on(holders[0], 1), 10, "the first creation waiting")
        await go_stale(relay, "k")
        second = asyncio.create_task(call(relay, "POST", "/api/interviews", bob, key="k"))
        await poll(lambda: waiting_on(holders[0], 2), 10, "the second creation waiting")
        await locks[0].commit()
        status, failed, _ = await first
        assert status == 409 and failed["error"]["code"] == "user_inactive", failed
        [row] = await relay.sql("SELECT status FROM idempotency_keys WHERE key = 'k'")
        assert row["status"] == "in_progress"  # still the second's claim
        await locks[1].rollback()
        status, answer, _ = await second
    finally:
        for holder in holders:
            await holder.close()
    assert status == 201 and answer["candidate"]["email"] == "bob@example.test", answer
    status, again, replayed = await call(relay, "POST", "/api/interviews", bob, key="k")
    assert (status, replayed) == (201, "true") and again == answer
