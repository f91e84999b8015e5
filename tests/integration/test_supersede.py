"""A reloaded page's new session request supersedes its never-exchanged one (cap 1).

Superseding and claiming are both conditional updates of the session's row: when a
reload and an exchange of the old session race (on one member or on two), exactly one
of them wins, and a session ended while its claim waited is not bridged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness
from tests.support.redis_server import RedisServer

CAP_ONE = {"limits": {"per_user_concurrent_sessions": 1, "per_user_requests_per_minute": 100}}


async def exchange(relay: RelayHarness, token: str, session_id: str) -> tuple[int, dict[str, Any]]:
    browser = BrowserPeer()
    try:
        offer = await browser.offer()
        async with relay.client.post(
            "/api/webrtc-exchange",
            json={"session_id": session_id, "type": "offer", "sdp": offer},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            return resp.status, await resp.json()
    finally:
        await browser.close()


async def wait_for_row(
    relay: RelayHarness, session_id: str, state: str, within: float = 15
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        rows = await relay.sql("SELECT state FROM interview_sessions WHERE id = $1", session_id)
        if rows and rows[0]["state"] == state:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{session_id} never {state}"
        await asyncio.sleep(0.05)


async def wait_for_lock_waiter(relay: RelayHarness, statement: str, within: float = 10) -> None:
    """Until a ``statement`` waits on a row lock (pg_stat_activity)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        rows = await relay.sql(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
            f"%{statement}%",
        )
        if rows:
            return
        assert asyncio.get_running_loop().time() < deadline, f"no {statement} ever waited"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def row_locked(relay: RelayHarness, session_id: str) -> AsyncIterator[None]:
    """Hold the session row's lock: the claim and any close of the row queue behind it,
    in the order they arrive, until the block ends."""
    holder = await asyncpg.connect(relay.database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "SELECT 1 FROM interview_sessions WHERE id = $1 FOR UPDATE", session_id
        )
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await holder.close()


CLAIM_WAITS = "FOR UPDATE OF s"  # the claim's read of the row (relay.sessions.shared_state)


async def test_reload_supersedes_the_pending_session(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides=CAP_ONE)
    token = await relay.add_user()

    status, first, _ = await relay.create_session(token)
    assert status == 201, first
    status, second, _ = await relay.create_session(token)
    assert status == 201, second  # not 429 too_many_sessions for pending_ttl_s

    status, body = await exchange(relay, token, first["session_id"])
    assert status == 410, body
    assert body["error"]["code"] == "session_superseded"
    # The old row is closed off the new request's path: wait for it.
    await wait_for_row(relay, first["session_id"], "ended")
    rows = await relay.sql(
        "SELECT id, state, end_reason, debited_seconds FROM interview_sessions ORDER BY created_at"
    )
    assert [(r["id"], r["state"], r["end_reason"], r["debited_seconds"]) for r in rows] == [
        (first["session_id"], "ended", "superseded", 0),
        (second["session_id"], "pending", None, None),
    ]
    assert [e.session_id for e in relay.services.registry.live()] == [second["session_id"]]
    assert relay.counter("relay_sessions_ended_total", reason="superseded") == 1

    # Someone else's superseded session stays "not found" (no existence oracle).
    other = await relay.add_user()
    status, body = await exchange(relay, other, first["session_id"])
    assert status == 404 and body["error"]["code"] == "session_not_found", body


async def test_a_claimed_session_is_not_superseded(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides=CAP_ONE)
    token = await relay.add_user(seconds=36000)  # credit is not what refuses here
    status, first, _ = await relay.create_session(token)
    assert status == 201
    user_id = relay.services.registry.live()[0].user_id
    relay.services.registry.claim_for_exchange(first["session_id"], user_id)  # → connecting

    status, body, _ = await relay.create_session(token)
    assert status == 429 and body["error"]["code"] == "too_many_sessions", body
    assert relay.services.registry.get(first["session_id"]) is not None


async def test_a_session_still_being_created_is_not_superseded(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    """Only sessions handed to their page give way: parallel requests (a double click,
    a burst) meet the cap instead of cancelling each other's mints."""
    relay = await make_relay(overrides=CAP_ONE)
    token = await relay.add_user()
    await simulator.state.update_faults({"mint": {"latency_s": 2.0}})
    slow = asyncio.create_task(relay.create_session(token))
    await wait_until(lambda: simulator.state.requests["mint"] == 1, 5, "first mint started")
    await simulator.state.update_faults({"mint": {"latency_s": 0.0}})

    status, second, _ = await relay.create_session(token)
    assert status == 429 and second["error"]["code"] == "too_many_sessions", second
    status, first, _ = await slow
    assert status == 201, first

    # Once handed out, a reload supersedes it.
    status, third, _ = await relay.create_session(token)
    assert status == 201, third
    rows = await relay.sql("SELECT id, state, end_reason FROM interview_sessions")
    states = {r["id"]: (r["state"], r["end_reason"]) for r in rows}
    assert states[first["session_id"]] == ("ended", "superseded")
    assert states[third["session_id"]] == ("pending", None)
    live = relay.services.registry.live()
    assert [e.session_id for e in live] == [third["session_id"]]


async def test_superseded_row_lands_even_if_the_new_request_is_cancelled(
    make_relay: MakeRelay, database_url: str
) -> None:
    """The old row's close does not ride on the new request: cancelling that request
    while the close is held up still leaves the old row ended/superseded (no restart)."""
    relay = await make_relay(overrides=CAP_ONE)
    token = await relay.add_user()
    status, first, _ = await relay.create_session(token)
    assert status == 201, first

    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        # Hold the old row's lock: its close (an UPDATE) waits until we let go.
        await holder.execute(
            "SELECT 1 FROM interview_sessions WHERE id = $1 FOR UPDATE", first["session_id"]
        )
        caller = await relay.services.admission.authenticate(f"Bearer {token}")
        create = asyncio.create_task(relay.services.sessions.create(caller))
        await wait_for_lock_waiter(relay, "UPDATE interview_sessions")
        create.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await create
        await transaction.rollback()
    finally:
        await holder.close()

    await wait_for_row(relay, first["session_id"], "ended")
    rows = await relay.sql(
        "SELECT end_reason FROM interview_sessions WHERE id = $1", first["session_id"]
    )
    assert rows[0]["end_reason"] == "superseded"
    assert await relay.services.sessions.retry_unwritten() == 0


async def test_operator_end_while_minting_is_not_reported_as_superseded(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    await simulator.state.update_faults({"mint": {"latency_s": 2.0}})
    slow = asyncio.create_task(relay.create_session(token))
    await wait_until(lambda: simulator.state.requests["mint"] == 1, 5, "mint started")
    [entry] = relay.services.registry.live()
    async with relay.client.delete(
        f"/api/sessions/{entry.session_id}",
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    ) as resp:
        assert resp.status == 204, await resp.text()

    status, body, _ = await slow
    assert status == 409 and body["error"]["code"] == "session_closed", body
    rows = await relay.sql("SELECT state, end_reason FROM interview_sessions")
    assert [(r["state"], r["end_reason"]) for r in rows] == [("ended", "operator_hangup")]
    assert relay.services.registry.live() == []
    assert relay.counter("relay_sessions_ended_total", reason="superseded") == 0


async def test_exchange_of_superseded_or_unknown_ids(make_relay: MakeRelay) -> None:
    """410 for a superseded session comes from memory first (its row is closed off the
    request's path, so the exchange must not race that write); an unknown id and another
    user's id are a plain 404, and no get_session lookup is made for either."""
    relay = await make_relay(overrides=CAP_ONE)
    token = await relay.add_user()
    status, first, _ = await relay.create_session(token)
    assert status == 201, first
    status, second, _ = await relay.create_session(token)
    assert status == 201, second
    await wait_for_row(relay, first["session_id"], "ended")

    status, body = await exchange(relay, token, first["session_id"])
    assert status == 410 and body["error"]["code"] == "session_superseded", body
    status, body = await exchange(relay, token, "is_" + "0" * 32)
    assert status == 404 and body["error"]["code"] == "session_not_found", body
    other = await relay.add_user()
    status, body = await exchange(relay, other, first["session_id"])
    assert status == 404 and body["error"]["code"] == "session_not_found", body
    assert relay.counter("relay_db_attempts_total", query="get_session") == 0


async def test_a_session_being_claimed_is_not_superseded_by_a_reload(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides=CAP_ONE)
    token = await relay.add_user()
    status, first, _ = await relay.create_session(token)
    assert status == 201, first

    async with row_locked(relay, first["session_id"]):
        claim = asyncio.create_task(exchange(relay, token, first["session_id"]))
        await wait_for_lock_waiter(relay, CLAIM_WAITS)
        # The page is reloaded while its exchange waits for the row.
        status, second, _ = await relay.create_session(token)
    claimed, answer = await claim

    assert claimed == 201, answer
    assert status == 429 and second["error"]["code"] == "too_many_sessions", second
    rows = await relay.sql("SELECT id, end_reason FROM interview_sessions")
    assert [r["id"] for r in rows] == [first["session_id"]]  # no second session
    assert rows[0]["end_reason"] != "superseded"


async def test_a_reload_racing_a_claim_on_another_member_admits_one_of_them(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    a = await make_relay(redis_url=redis_server.url, overrides=CAP_ONE, instance_id="a")
    b = await make_relay(redis_url=redis_server.url, overrides=CAP_ONE, instance_id="b")
    token = await a.add_user()
    status, first, _ = await a.create_session(token)
    assert status == 201, first
    session_id = first["session_id"]

    async with row_locked(a, session_id):
        claim = asyncio.create_task(exchange(b, token, session_id))
        await wait_for_lock_waiter(a, CLAIM_WAITS)
        # The page is reloaded on a while b's exchange of the old session waits: a's
        # supersede queues behind the claim for the row.
        reload = asyncio.create_task(a.create_session(token))
        await wait_for_lock_waiter(a, "UPDATE interview_sessions")
    claimed, answer = await claim
    status, second, _ = await reload

    # The claim got the row first: the old session lives on b, the reload meets the cap.
    assert claimed == 201, answer
    assert status == 429 and second["error"]["code"] == "too_many_sessions", second
    rows = await a.sql("SELECT id, end_reason, relay_instance FROM interview_sessions")
    assert [(r["id"], r["relay_instance"]) for r in rows] == [(session_id, "b")]
    assert rows[0]["end_reason"] != "superseded"
    # a does not take it for superseded: a second exchange is refused as a used session.
    again, body = await exchange(a, token, session_id)
    assert again == 409 and body["error"]["code"] == "session_already_exchanged", body


async def test_a_session_hung_up_while_its_claim_waits_is_not_bridged(
    make_relay: MakeRelay,
) -> None:
    a = await make_relay(instance_id="a")
    b = await make_relay(instance_id="b")
    token = await a.add_user()
    status, first, _ = await a.create_session(token)
    assert status == 201, first
    session_id = first["session_id"]

    async with row_locked(a, session_id):
        claim = asyncio.create_task(exchange(a, token, session_id))
        await wait_for_lock_waiter(a, CLAIM_WAITS)
        # The operator hangs up through b: the command reaches a, whose close of the
        # row (only while pending) queues behind the claim.
        async with b.client.delete(
            f"/api/sessions/{session_id}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        ) as resp:
            assert resp.status == 204
        await wait_for_lock_waiter(a, "UPDATE interview_sessions")
    claimed, answer = await claim

    # The claim took the row before the hang-up's close: the claim undoes itself.
    assert claimed == 409 and answer["error"]["code"] == "session_closed", answer
    rows = await a.sql("SELECT state, end_reason FROM interview_sessions")
    assert [(r["state"], r["end_reason"]) for r in rows] == [("ended", "operator_hangup")]
    assert a.services.registry.live() == []
    assert a.services.bridges is not None and len(a.services.bridges) == 0
