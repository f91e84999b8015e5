"""A reloaded page's new session request supersedes its never-exchanged one (cap 1)."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, wait_until
from tests.integration.relay_harness import RelayHarness

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
