"""Two `relay serve` instances on one PostgreSQL and one Redis behave as one service:
any instance exchanges any session, limits hold across both, the cluster view lists both,
commands reach the instance holding the media, and a killed instance is recovered."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.cluster_helpers import (
    HEARTBEAT_S,
    OPERATOR,
    Client,
    RelayProcess,
    add_user,
    fresh_connections,
    poll,
    relay_env,
    revocation_lag,
    simulator_env,
    sql,
)
from tests.integration.media_helpers import BrowserPeer
from tests.support.redis_server import RedisServer
from tests.support.relay_cli import run_relay

pytestmark = pytest.mark.slow

RECONNECT_GRACE_S = 5


class Pair:
    def __init__(self, a: RelayProcess, b: RelayProcess, dsn: str) -> None:
        self.a, self.b, self.dsn = a, b, dsn
        self.browsers: list[BrowserPeer] = []


@pytest.fixture
async def pair(
    traversable_tmp_path: Path,
    database_url: str,
    redis_server: RedisServer,
    simulator: RunningSimulator,
) -> AsyncIterator[Pair]:
    env = relay_env(
        traversable_tmp_path / "state",
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            **simulator_env(simulator.base_url),
            # A dead member's interviews stay resumable elsewhere this long (continuity),
            # shorter than the default so that their recovery is seen within a test.
            "RELAY__SESSION__RECONNECT_GRACE_S": str(RECONNECT_GRACE_S),
        },
    )
    a = await RelayProcess.start(traversable_tmp_path, env)
    b = await RelayProcess.start(traversable_tmp_path, env)
    running = Pair(a, b, database_url)
    try:
        yield running
    finally:
        for browser in running.browsers:
            await browser.close()
        for relay in (a, b):
            await relay.stop()


def member_id(relay: RelayProcess) -> str:
    port = relay.url.rstrip("/").rsplit(":", 1)[1]
    return f"{os.uname().nodename}:{port}"


async def relay_cli(*args: str, dsn: str, cwd: Path) -> tuple[int, str, str]:
    env = relay_env(cwd / "cli-state", {"DATABASE_URL": dsn})
    return await run_relay(*args, env=env, cwd=cwd, timeout_s=60)


async def test_created_on_a_exchanged_on_b_revoked_and_b_killed(
    pair: Pair, traversable_tmp_path: Path
) -> None:
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        email, token = await add_user(pair.dsn)

        # Created on A, exchanged on B: it goes live on B.
        status, created, _ = await a.create(token)
        assert status == 201, created
        sid = created["session_id"]
        browser, _ = await b.go_live(token, sid)
        pair.browsers.append(browser)
        await browser.wait_type("session.created", within=10)

        async def live_on_b() -> dict[str, Any] | None:
            view = await a.cluster()
            return next(
                (
                    s
                    for s in view["sessions"]
                    if s["session_id"] == sid
                    and s["member"] == member_id(pair.b)
                    and s["state"] == "active"
                ),
                None,
            )

        await poll(live_on_b, 10, "B's live session in A's cluster view")
        view = await a.cluster()
        ids = {m["id"] for m in view["instances"]}
        assert ids == {member_id(pair.a), member_id(pair.b)}
        for member in view["instances"]:
            assert member["address"].startswith("http://127.0.0.1:")
            assert member["version"] and member["pid"] > 0
        by_id = {m["id"]: m for m in view["instances"]}
        assert by_id[member_id(pair.b)]["live_sessions"] == 1
        # A forgot its pending copy once B claimed it; the row says B holds it.
        assert by_id[member_id(pair.a)]["live_sessions"] == 0
        rows = await sql(pair.dsn, "SELECT relay_instance FROM interview_sessions WHERE id=$1", sid)
        assert rows[0]["relay_instance"] == member_id(pair.b)
        # The same session cannot be exchanged again, on either instance.
        again = BrowserPeer()
        try:
            offer = {"session_id": sid, "type": "offer", "sdp": await again.offer()}
            status, body, _ = await a.call("POST", "api/webrtc-exchange", token=token, json=offer)
            assert status == 409, body
        finally:
            await again.close()

        # A second session of this user stays pending on A: revocation refuses it.
        status, pending, _ = await a.create(token)
        assert status == 201, pending

        # `relay users revoke` (PostgreSQL alone: no Redis for the CLI) ends it on B.
        code, out, err = await relay_cli(
            "users", "revoke", "--email", email, dsn=pair.dsn, cwd=traversable_tmp_path
        )
        assert code == 0, err

        async def ended() -> bool:
            rows = await sql(
                pair.dsn, "SELECT state, end_reason FROM interview_sessions WHERE id=$1", sid
            )
            return rows[0]["end_reason"] == "revoked" and rows[0]["state"] in ("ended", "failed")

        # Generous for the CLI's own start-up on a loaded machine; the bound is below.
        await poll(ended, 20, "the revoked user's interview to end on B")
        assert 0 <= await revocation_lag(pair.dsn, sid) < 5
        await poll(
            lambda: asyncio.sleep(0, browser.pc.connectionState in ("closed", "failed")),
            5,
            "the browser to be hung up",
        )
        late = BrowserPeer()
        try:
            offer = {
                "session_id": pending["session_id"],
                "type": "offer",
                "sdp": await late.offer(),
            }
            status, body, _ = await b.call("POST", "api/webrtc-exchange", token=token, json=offer)
            # The cached user may still be active for a moment: then the claim refuses it.
            assert status in (401, 403, 404), body
        finally:
            await late.close()

        # A live session on B, then B is killed outright.
        _, token2 = await add_user(pair.dsn)
        status, created2, _ = await a.create(token2)
        assert status == 201, created2
        sid2 = created2["session_id"]
        browser2, _ = await b.go_live(token2, sid2)
        pair.browsers.append(browser2)

        async def active() -> bool:
            return bool((await a.session(token2, sid2))["state"] == "active")

        await poll(active, 10, "the second session to be active")
        os.kill(pair.b.pid, signal.SIGKILL)
        killed = time.monotonic()

        async def b_gone() -> bool:
            view = await a.cluster()
            return member_id(pair.b) not in {m["id"] for m in view["instances"]}

        await poll(b_gone, HEARTBEAT_S * 3 + 2, "B to leave the cluster view")
        # 3 heartbeats since B's last one, plus our polling and a loaded machine's slack.
        assert time.monotonic() - killed <= HEARTBEAT_S * 3 + 2

        async def recovered() -> dict[str, Any] | None:
            body = await a.session(token2, sid2)
            return body if body["state"] == "failed" else None

        # Kept for a resume on A for the reconnect grace (none comes), then closed.
        final = await poll(recovered, 15 + RECONNECT_GRACE_S, "B's session row to be recovered")
        assert final["end_reason"] == "relay_lost"
        # Debited for the time B was known alive with it connected, not for nothing.
        assert final["debited_seconds"] is not None and final["debited_seconds"] >= 0


async def test_per_user_cap_holds_across_instances(pair: Pair) -> None:
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        _, token = await add_user(pair.dsn)
        assert (await a.create(token))[0] == 201
        assert (await b.create(token))[0] == 201
        for relay in (a, b):
            status, body, headers = await relay.create(token)
            assert status == 429, body
            assert body["error"]["code"] == "too_many_sessions"
            assert int(headers["Retry-After"]) > 0


async def test_operator_delete_and_drain_reach_the_other_instance(pair: Pair) -> None:
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        _, token = await add_user(pair.dsn)
        status, created, _ = await a.create(token)
        assert status == 201
        sid = created["session_id"]
        browser, _ = await b.go_live(token, sid)
        pair.browsers.append(browser)

        started = time.monotonic()
        status, _, _ = await a.call("DELETE", f"api/sessions/{sid}", headers=OPERATOR)
        assert status == 204

        async def ended() -> dict[str, Any] | None:
            body = await a.session(token, sid)
            return body if body["state"] in ("ended", "failed") else None

        final = await poll(ended, 2, "the session held by B to end")
        assert final["end_reason"] == "operator_hangup"
        assert time.monotonic() - started < 2

        # A mistyped member is said to be unknown, not taken for a drain.
        status, body, _ = await a.call(
            "POST", "api/cluster/drain", headers=OPERATOR, json={"member": member_id(pair.b) + "x"}
        )
        assert status == 404 and body["error"]["code"] == "member_not_found", body
        status, body, _ = await a.call(
            "POST", "api/cluster/drain", headers=OPERATOR, json={"member": member_id(pair.b)}
        )
        assert status == 202, body

        async def b_draining() -> bool:
            return (await b.call("GET", "readyz"))[0] == 503

        await poll(b_draining, 2, "B to drain")
        assert (await a.call("GET", "readyz"))[0] == 200
        _, token2 = await add_user(pair.dsn)
        status, body, headers = await b.create(token2)
        assert status == 503 and body["error"]["code"] == "draining"
        view = await a.cluster()
        draining = {m["id"]: m["draining"] for m in view["instances"]}
        assert draining == {member_id(pair.a): False, member_id(pair.b): True}


async def test_fifty_parallel_requests_for_one_user_admit_exactly_the_cap(
    traversable_tmp_path: Path,
    database_url: str,
    redis_server: RedisServer,
    simulator: RunningSimulator,
) -> None:
    cap = 3
    env = relay_env(
        traversable_tmp_path / "state",
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            "RELAY__LIMITS__PER_USER_CONCURRENT_SESSIONS": str(cap),
            "RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE": "1000",
            **simulator_env(simulator.base_url),
        },
    )
    a = await RelayProcess.start(traversable_tmp_path, env)
    b = await RelayProcess.start(traversable_tmp_path, env)
    try:
        _, token = await add_user(database_url)
        async with fresh_connections() as http:
            clients = [Client(http, a.url), Client(http, b.url)]
            results = await asyncio.gather(*(clients[i % 2].create(token) for i in range(50)))
            # Every decision was Redis's: none failed open to the per-process limits.
            for client in clients:
                status, stats, _ = await client.call("GET", "api/stats", headers=OPERATOR)
                assert status == 200
                fallbacks = stats["metrics"].get("relay_limits_redis_fallback_total", [])
                assert [f for f in fallbacks if f["value"]] == [], fallbacks
        statuses = sorted(status for status, _, _ in results)
        admitted = statuses.count(201)
        # A request that lands after an earlier one was handed out supersedes it (what a
        # page reload does), so more than the cap may get a 201; never more than the cap
        # are open at once, and nothing else than 201 or 429 is answered.
        assert admitted >= cap and statuses == [201] * admitted + [429] * (50 - admitted)
        await wait_until_async(
            lambda: _count_rows(database_url, "state = 'ended' AND end_reason = 'superseded'"),
            admitted - cap,
        )
        assert await _count_rows(database_url, "state = 'pending'") == cap
    finally:
        for relay in (a, b):
            await relay.stop()


async def _count_rows(database_url: str, where: str) -> int:
    rows = await sql(database_url, f"SELECT count(*) AS n FROM interview_sessions WHERE {where}")
    return int(rows[0]["n"])


async def wait_until_async(
    count: Callable[[], Awaitable[int]], expected: int, timeout_s: float = 10.0
) -> None:
    """Poll ``count`` until it equals ``expected`` (superseded rows are written off the
    request's path), with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (got := await count()) != expected:
        assert asyncio.get_running_loop().time() < deadline, (got, expected)
        await asyncio.sleep(0.05)
