"""A session that fails between its reservation and its bridge's start releases all it
holds: its registry slot, its shared lease in Redis, the credit its claimed row promised
(a row left ``connecting`` counts against the user's other claims on every member) and
its recorder. Each step is made to fail by a real fault: the client leaving while the
upstream mints again or answers the SDP, the database unreachable right after the
claim's commit, the database refusing to save the minted secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, wait_until
from tests.integration.relay_harness import RelayHarness
from tests.support.redis_server import RedisServer
from tests.support.reply_cutter import ReplyCutter

# A state key of its own: this member cannot open the secrets the others sealed, so an
# exchange here mints the session's secret again (relay.sessions.shared_state).
OTHER_STATE_KEY = base64.b64encode(b"another-state-key-of-32-bytes...").decode()
CLAIM_UPDATE = b"SET state = 'connecting', relay_instance"


async def post_exchange(relay: RelayHarness, token: str, session_id: str) -> tuple[int, Any]:
    browser = BrowserPeer()
    try:
        offer = {"session_id": session_id, "type": "offer", "sdp": await browser.offer()}
        async with relay.client.post(
            "/api/webrtc-exchange", json=offer, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json()
    finally:
        await browser.close()


async def leases(relay: RelayHarness, redis_url: str, user_id: int) -> list[str]:
    """The session ids holding a lease in the user's shared set (relay.cluster.limits)."""
    key = f"{relay.services.settings.cache.key_prefix}limits:user:{user_id}:sessions"
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        return [str(member) for member in await client.zrange(key, 0, -1)]
    finally:
        await client.aclose()


async def user_id_of(relay: RelayHarness, session_id: str) -> int:
    rows = await relay.sql("SELECT user_id FROM interview_sessions WHERE id = $1", session_id)
    return int(rows[0]["user_id"])


async def leave_mid_exchange(
    relay: RelayHarness, token: str, session_id: str, reached: Any, what: str
) -> None:
    """Start an exchange, and drop its connection once ``reached()`` (the candidate closed
    the tab): the relay's handler is cancelled at that step."""
    exchange = asyncio.create_task(post_exchange(relay, token, session_id))
    await wait_until(reached, 10, what)
    assert not exchange.done(), exchange
    exchange.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await exchange


async def assert_all_released(
    relay: RelayHarness, redis_url: str, session_id: str, user_id: int, reason: str
) -> None:
    registry = relay.services.registry
    await wait_until(lambda: registry.get(session_id) is None, 10, "the slot released")

    async def row() -> Any:
        rows = await relay.sql(
            "SELECT state, end_reason FROM interview_sessions WHERE id = $1", session_id
        )
        return rows[0]

    deadline = asyncio.get_running_loop().time() + 10
    while (await row())["state"] not in ("ended", "failed"):
        assert asyncio.get_running_loop().time() < deadline, await row()
        await asyncio.sleep(0.05)
    assert tuple(await row()) == ("failed", reason)
    # No row of the user is left promising credit.
    promising = await relay.sql(
        "SELECT id FROM interview_sessions WHERE user_id = $1"
        " AND state IN ('connecting', 'active')",
        user_id,
    )
    assert promising == []
    assert await leases(relay, redis_url, user_id) == []
    bridges = relay.services.bridges
    assert bridges is not None and bridges.get(session_id) is None
    recordings = relay.services.recordings
    assert recordings is not None
    await wait_until(lambda: recordings.idle, 10, "no recorder left")


async def test_leaving_while_the_secret_is_minted_again_releases_everything(
    make_relay: MakeRelay, redis_server: RedisServer, simulator: RunningSimulator
) -> None:
    a = await make_relay(redis_url=redis_server.url, instance_id="a")
    b = await make_relay(
        redis_url=redis_server.url,
        instance_id="b",
        overrides={"cluster": {"state_key": OTHER_STATE_KEY}},
    )
    token = await a.add_user()
    status, created, _ = await a.create_session(token)
    assert status == 201, created
    session_id = created["session_id"]
    user_id = await user_id_of(a, session_id)
    assert await leases(a, redis_server.url, user_id) == [session_id]

    await simulator.state.update_faults({"mint": {"latency_s": 5.0}})
    await leave_mid_exchange(
        b, token, session_id, lambda: simulator.state.requests["mint"] == 2, "b minting again"
    )
    await assert_all_released(b, redis_server.url, session_id, user_id, "cancelled")


async def test_leaving_during_the_upstream_sdp_exchange_releases_everything(
    make_relay: MakeRelay, redis_server: RedisServer, simulator: RunningSimulator
) -> None:
    relay = await make_relay(redis_url=redis_server.url)
    token = await relay.add_user()
    status, created, _ = await relay.create_session(token)
    assert status == 201, created
    session_id = created["session_id"]
    user_id = await user_id_of(relay, session_id)

    await simulator.state.update_faults({"calls": {"latency_s": 5.0}})
    await leave_mid_exchange(
        relay,
        token,
        session_id,
        lambda: simulator.state.requests["calls"] == 1,
        "the upstream SDP exchange",
    )
    await assert_all_released(relay, redis_server.url, session_id, user_id, "cancelled")


async def test_a_claim_committed_then_cut_off_from_the_database_releases_everything(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str, redis_server: RedisServer
) -> None:
    """The claim's COMMIT landed, then the database became unreachable for longer than
    the retries: the exchange cannot know whether it holds the session, so it ends it
    (a row it did claim included) and answers 503."""
    relay = await make_relay(dsn=cutter.dsn(database_url), redis_url=redis_server.url)
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    # The test's own queries go to PostgreSQL directly, not through the cut proxy.
    relay = dataclasses.replace(relay, database_url=database_url)
    token = await relay.add_user()
    status, created, _ = await relay.create_session(token)
    assert status == 201, created
    session_id = created["session_id"]
    user_id = await user_id_of(relay, session_id)

    cutter.arm(CLAIM_UPDATE, then=b"COMMIT", outage=True)
    status, body = await post_exchange(relay, token, session_id)
    assert cutter.cuts == 1
    assert status == 503 and body["error"]["code"] == "database_unavailable", body
    rows = await relay.sql(
        "SELECT state, relay_instance FROM interview_sessions WHERE id = $1", session_id
    )
    assert tuple(rows[0]) == ("connecting", "test-instance")  # the claim did land

    cutter.restore()
    assert await relay.services.sessions.retry_unwritten() == 0
    await assert_all_released(relay, redis_server.url, session_id, user_id, "database_unavailable")


REFUSE_SEALING = """
CREATE FUNCTION refuse_sealing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sealed secrets refused';
END $$;
CREATE TRIGGER refuse_sealing BEFORE UPDATE OF minted_sealed ON interview_sessions
    FOR EACH ROW EXECUTE FUNCTION refuse_sealing();
"""


async def test_a_minted_secret_the_database_refuses_to_save_releases_everything(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    relay = await make_relay(redis_url=redis_server.url)
    async with asyncio.timeout(10):
        await relay.services.store.wait_schema_ready()
    conn = await asyncpg.connect(relay.database_url)
    try:
        await conn.execute(REFUSE_SEALING)
    finally:
        await conn.close()
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 500 and body["error"]["code"] == "internal_error", body

    [row] = await relay.sql("SELECT id, user_id FROM interview_sessions")
    await assert_all_released(relay, redis_server.url, row["id"], row["user_id"], "internal_error")
