"""A retried write whose first attempt committed (its reply lost on the way back) must
succeed once: no 500, no orphan row, no second debit.

Real parts: the relay's pool talks to PostgreSQL through a loopback proxy that forwards
the statement, lets the server commit it, then swallows the reply and cuts the
connection (tests/support/reply_cutter.py); the store's retry then runs the write again.
The cutter is set up before ``make_relay`` so that it outlives the relay's shut-down.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from relay.admission.tokens import hash_token, new_token
from relay.admission.users import UserExists
from relay.sessions.registry import new_session_id
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer
from tests.integration.relay_harness import RelayHarness
from tests.support.reply_cutter import ReplyCutter

# The claim's UPDATE (relay.sessions.shared_state): its transaction's COMMIT is what lands.
CLAIM_UPDATE = b"SET state = 'connecting', relay_instance"


async def relay_behind(
    make_relay: MakeRelay, cutter: ReplyCutter, database_url: str
) -> RelayHarness:
    relay = await make_relay(dsn=cutter.dsn(database_url))
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    return relay


async def test_session_insert_committed_but_unanswered_is_not_a_500(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    relay = await relay_behind(make_relay, cutter, database_url)
    token = await relay.add_user()

    cutter.arm(b"INSERT INTO interview_sessions")
    status, body, _ = await relay.create_session(token)
    assert cutter.cuts == 1  # the first attempt's reply really was lost
    assert relay.counter("relay_db_retries_total", query="create_session") == 1
    assert status == 201, body

    rows = await relay.sql("SELECT id, state FROM interview_sessions")
    assert [(r["id"], r["state"]) for r in rows] == [(body["session_id"], "pending")]
    assert [e.session_id for e in relay.services.registry.live()] == [body["session_id"]]


async def test_finish_committed_but_unanswered_debits_once(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    relay = await relay_behind(make_relay, cutter, database_url)
    token = await relay.add_user(seconds=100)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    entry = relay.services.registry.get(body["session_id"])
    assert entry is not None

    cutter.arm(b"COMMIT")
    remaining = await relay.services.sessions.finish(
        entry, state="ended", reason="hangup", duration_s=12.3
    )
    assert cutter.cuts == 1
    assert relay.counter("relay_db_retries_total", query="finish_session") == 1
    # The retry reports the outcome of the attempt that committed, not "already closed".
    assert remaining == 100 - 13

    rows = await relay.sql(
        "SELECT s.state, s.end_reason, s.debited_seconds, u.remaining_seconds"
        " FROM interview_sessions s JOIN users u ON u.id = s.user_id"
    )
    assert [tuple(r) for r in rows] == [("ended", "hangup", 13, 100 - 13)]  # debited once
    assert await relay.services.sessions.retry_unwritten() == 0


async def test_user_insert_committed_but_unanswered_returns_the_user(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    relay = await relay_behind(make_relay, cutter, database_url)
    users = relay.services.users
    token_hash = hash_token(new_token())

    cutter.arm(b"INSERT INTO users")
    user = await users.create_user("retry@example.test", token_hash, 600)
    assert cutter.cuts == 1
    assert relay.counter("relay_db_retries_total", query="create_user") == 1
    assert (user.email, user.remaining_seconds, user.active) == ("retry@example.test", 600, True)
    rows = await relay.sql("SELECT id FROM users WHERE email = 'retry@example.test'")
    assert [r["id"] for r in rows] == [user.id]

    # A different token for a taken email is still refused (no silent adoption).
    with pytest.raises(UserExists):
        await users.create_user("retry@example.test", hash_token(new_token()), 600)


async def test_session_insert_racing_an_attempt_still_in_flight_adopts_its_row(
    make_relay: MakeRelay, database_url: str
) -> None:
    """A retry whose first attempt is still in flight: the retry's INSERT waits for it and
    finds the conflict only once it has committed, after the retry's snapshot was taken."""
    # A query timeout far beyond the wait: the retry must not be retried in turn (a later
    # attempt would see the committed row and hide the race).
    relay = await make_relay(overrides={"database": {"query_timeout_s": 30.0}})
    await relay.add_user(email="inflight@example.test")
    [user] = await relay.sql("SELECT id FROM users WHERE email = 'inflight@example.test'")
    session_id = new_session_id()
    expires_at = datetime.now(UTC) + timedelta(minutes=5)

    first_attempt = await asyncpg.connect(database_url)
    try:
        transaction = first_attempt.transaction()
        await transaction.start()
        await first_attempt.execute(
            "INSERT INTO interview_sessions (id, user_id, request_id, state, model, dialect,"
            " relay_instance, expires_at) VALUES ($1, $2, 'r1', 'pending', 'm', 'ga', 'i', $3)",
            session_id,
            user["id"],
            expires_at,
        )
        retry = asyncio.create_task(
            relay.services.session_rows.create_session(
                session_id=session_id,
                user_id=user["id"],
                request_id="r1",
                model="m",
                dialect="ga",
                relay_instance="i",
                expires_at=expires_at,
            )
        )
        # Until the retry's INSERT is waiting on the first attempt's row lock.
        async with asyncio.timeout(10):
            while not await relay.sql(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%INSERT INTO interview_sessions%'"
            ):
                assert not retry.done(), retry
                await asyncio.sleep(0.02)
        await transaction.commit()
    finally:
        await first_attempt.close()

    async with asyncio.timeout(10):
        await retry  # no RuntimeError: the row is this user's own
    rows = await relay.sql("SELECT id, user_id FROM interview_sessions")
    assert [(r["id"], r["user_id"]) for r in rows] == [(session_id, user["id"])]


async def test_claim_committed_but_unanswered_is_recognised_by_its_retry(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """The claim's COMMIT landed and its reply was lost: the store's retry finds the row
    claimed by this very claim and carries on (not 409 for a session it now holds)."""
    relay = await relay_behind(make_relay, cutter, database_url)
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = body["session_id"]

    cutter.arm(CLAIM_UPDATE, then=b"COMMIT")
    browser = BrowserPeer()
    try:
        offer = {"session_id": session_id, "type": "offer", "sdp": await browser.offer()}
        async with relay.client.post(
            "/api/webrtc-exchange", json=offer, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            answer = await resp.json()
        assert cutter.cuts == 1  # the first attempt's COMMIT went through unanswered
        assert relay.counter("relay_db_retries_total", query="claim_session") == 1
        assert resp.status == 201, answer
        await browser.accept(answer["sdp"])
        await browser.wait_connected(15)
        # This member holds it: its bridge, and the row naming this member.
        entry = relay.services.registry.get(session_id)
        assert entry is not None and entry.bridge is not None
        rows = await relay.sql(
            "SELECT state, relay_instance FROM interview_sessions WHERE id = $1", session_id
        )
        assert tuple(rows[0]) in (("connecting", "test-instance"), ("active", "test-instance"))
    finally:
        await browser.close()
