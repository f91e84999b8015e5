"""Overload protection of POST /api/realtime-session (relay.admission.gate) on a whole
relay: real PostgreSQL, the simulator over HTTP with a slow mint so that requests pile up.

Beyond ``limits.max_inflight_admissions`` creations in flight, requests get a fast 503
``overloaded`` with Retry-After and the request id, while the admitted ones succeed; the
shed counter moves; health, readiness and metrics stay responsive; and the relay serves
normally once the load stops. A request whose client left while it waited for a slot is
dropped before it costs the database anything, with aiohttp's default server (handler
cancellation off, as `relay serve` runs it).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from relay.admission.tokens import hash_token, new_token
from relay.app import create_app
from relay.observability.metrics import Counter
from relay.services import SERVICES, Services
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED, OPERATOR_TOKEN, relay_settings

BOUND = 3
EXTRA = 5
# Long enough that every shed answer arrives while the admitted requests still wait on it.
MINT_LATENCY_S = 4.0
MINT_SLOW = {"mint": {"latency_s": MINT_LATENCY_S}}
MINT_NORMAL = {"mint": {"latency_s": 0.0}}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def gauge(services: Services, name: str) -> float:
    value = services.metrics.snapshot()[name]
    assert isinstance(value, float | int), value
    return float(value)


def overload_limits(**changes: Any) -> dict[str, dict[str, Any]]:
    return {
        "limits": {
            "max_inflight_admissions": BOUND,
            "admission_queue_timeout_s": 0.2,
            "retry_after_s": 3,
            **changes,
        }
    }


async def test_beyond_the_bound_requests_get_a_fast_503_and_the_relay_recovers(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay(overrides=overload_limits())
    tokens = [await relay.add_user() for _ in range(BOUND + EXTRA + 1)]
    await simulator.state.update_faults(MINT_SLOW)

    admitted = [asyncio.create_task(relay.create_session(t)) for t in tokens[:BOUND]]
    await wait_until(
        lambda: gauge(relay.services, "relay_admission_inflight") == BOUND,
        10.0,
        "the bound's worth of creations in flight",
    )
    started = time.monotonic()
    shed = await asyncio.gather(*(relay.create_session(t) for t in tokens[BOUND:-1]))
    shed_within = time.monotonic() - started
    # Every excess request was answered while the admitted ones were still minting.
    assert not any(task.done() for task in admitted)
    assert shed_within < MINT_LATENCY_S
    for status, body, headers in shed:
        assert status == 503, body
        assert body["error"]["code"] == "overloaded" and body["error"]["retryable"] is True
        assert body["request_id"] == headers["X-Request-ID"]
        assert headers["Retry-After"] == "3"
    assert relay.counter("relay_admission_shed_total", reason="overloaded") == EXTRA
    assert relay.counter("relay_http_errors_total", status=503, code="overloaded") == EXTRA

    # Health, readiness and the operator's metrics are never gated.
    for path, headers in (("/healthz", {}), ("/readyz", {}), ("/metrics", OPERATOR)):
        async with relay.client.get(path, headers=headers) as resp:
            assert resp.status == 200, (path, await resp.text())
    async with relay.client.get("/metrics", headers=OPERATOR) as resp:
        text = await resp.text()
    assert 'relay_admission_shed_total{reason="overloaded"} 5.0' in text
    assert f"relay_admission_inflight {float(BOUND)}" in text
    assert gauge(relay.services, "relay_admission_inflight") == BOUND

    results = await asyncio.gather(*admitted)
    assert [status for status, _, _ in results] == [201] * BOUND, results
    # The shed requests cost the database nothing: no session row, no credential check.
    rows = await relay.sql("SELECT count(*) AS n FROM interview_sessions")
    assert rows[0]["n"] == BOUND
    assert relay.counter("relay_admission_total", outcome="admitted") == BOUND

    # Load gone: the relay serves at once, with every slot back.
    await simulator.state.update_faults(MINT_NORMAL)
    assert gauge(relay.services, "relay_admission_inflight") == 0
    assert gauge(relay.services, "relay_admission_waiting") == 0
    status, body, _ = await relay.create_session(tokens[-1])
    assert status == 201, body
    again = await asyncio.gather(*(relay.create_session(t) for t in tokens[BOUND:-1]))
    assert {status for status, _, _ in again} == {201}, again
    assert relay.counter("relay_admission_shed_total", reason="overloaded") == EXTRA


async def test_a_slow_database_sheds_the_excess_and_serves_the_admitted_once_it_answers(
    make_relay: MakeRelay,
) -> None:
    # The incident's shape: the credential reads wait on the database for seconds.
    relay = await make_relay(
        overrides={**overload_limits(), "database": {"query_timeout_s": 20.0, "retries": 0}}
    )
    tokens = [await relay.add_user() for _ in range(BOUND + EXTRA)]  # never cached: misses
    locker = await asyncpg.connect(relay.database_url)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        admitted = [asyncio.create_task(relay.create_session(t)) for t in tokens[:BOUND]]
        await wait_until(
            lambda: gauge(relay.services, "relay_admission_inflight") == BOUND,
            10.0,
            "the bound's worth of creations waiting on the database",
        )
        shed = await asyncio.gather(*(relay.create_session(t) for t in tokens[BOUND:]))
        assert not any(task.done() for task in admitted)
        assert [(status, body["error"]["code"]) for status, body, _ in shed] == [
            (503, "overloaded")
        ] * EXTRA
        assert all(headers["Retry-After"] == "3" for _, _, headers in shed)
        async with relay.client.get("/readyz") as resp:
            assert resp.status == 200, await resp.text()
        await lock.rollback()
    finally:
        await locker.close()
    results = await asyncio.gather(*admitted)
    assert [status for status, _, _ in results] == [201] * BOUND, results
    assert relay.counter("relay_admission_shed_total", reason="overloaded") == EXTRA
    # Only the admitted ones read the database; the shed ones never reached it.
    assert relay.counter("relay_db_queries_total", query="user_by_token") == BOUND


async def test_a_request_waiting_for_a_slot_gets_it_when_one_frees(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay(
        overrides=overload_limits(max_inflight_admissions=1, admission_queue_timeout_s=30.0)
    )
    first, second = await relay.add_user(), await relay.add_user()
    await simulator.state.update_faults({"mint": {"latency_s": 0.5}})
    holder = asyncio.create_task(relay.create_session(first))
    await wait_until(
        lambda: gauge(relay.services, "relay_admission_inflight") == 1, 10.0, "one in flight"
    )
    waiter = asyncio.create_task(relay.create_session(second))
    await wait_until(
        lambda: gauge(relay.services, "relay_admission_waiting") == 1, 10.0, "one waiting"
    )
    assert not holder.done()
    (status_1, body_1, _), (status_2, body_2, _) = await asyncio.gather(holder, waiter)
    assert (status_1, status_2) == (201, 201), (body_1, body_2)
    assert relay.counter("relay_admission_shed_total") == 0


# -- the server as `relay serve` runs it -------------------------------------------------


class ServedRelay:
    """The relay on aiohttp's default server (handler cancellation off, as in relay.cli)."""

    def __init__(self, runner: web.AppRunner, services: Services, database_url: str) -> None:
        self.runner = runner
        self.services = services
        self.database_url = database_url
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/api/realtime-session"

    def connections(self) -> tuple[int, int]:
        """(open, lost): connections whose handler still runs, of them those whose client
        has gone (aiohttp drops a connection's transport when its peer closes it)."""
        server = self.runner.server
        assert server is not None
        handlers = server.connections
        return len(handlers), sum(1 for h in handlers if h.transport is None)

    def counter(self, name: str, **labels: Any) -> float:
        metric = self.services.metrics.get(name)
        assert isinstance(metric, Counter), name
        return metric.value(**labels) if labels else metric.total()

    async def add_user(self) -> str:
        token = new_token()
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(
                "INSERT INTO users (email, token_hash, active, remaining_seconds)"
                " VALUES ($1, $2, true, 1800)",
                f"u{secrets.token_hex(4)}@example.test",
                hash_token(token),
            )
        finally:
            await conn.close()
        return token


@pytest.fixture
async def served_relay(
    database_url: str, simulator: RunningSimulator
) -> AsyncIterator[ServedRelay]:
    settings = relay_settings(
        database_url,
        simulator.base_url,
        overrides=overload_limits(max_inflight_admissions=1, admission_queue_timeout_s=30.0),
    )
    app = create_app(settings, instance_id="test-instance")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield ServedRelay(runner, app[SERVICES], database_url)
    finally:
        await asyncio.wait_for(runner.cleanup(), 45.0)


async def post(http: aiohttp.ClientSession, url: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(url, headers=headers, json=NOTICE_CONFIRMED) as resp:
        await resp.read()
        return resp.status


async def test_a_request_whose_client_left_while_waiting_never_reaches_the_database(
    served_relay: ServedRelay, simulator: RunningSimulator
) -> None:
    relay = served_relay
    first, second = await relay.add_user(), await relay.add_user()
    await simulator.state.update_faults(MINT_SLOW)
    async with aiohttp.ClientSession() as http_1, aiohttp.ClientSession() as http_2:
        holder = asyncio.create_task(post(http_1, relay.url, first))
        await wait_until(
            lambda: gauge(relay.services, "relay_admission_inflight") == 1, 10.0, "one in flight"
        )
        gone = asyncio.create_task(post(http_2, relay.url, second))
        await wait_until(
            lambda: gauge(relay.services, "relay_admission_waiting") == 1, 10.0, "one waiting"
        )
        assert relay.connections() == (2, 0)
        gone.cancel()  # the candidate closed the tab: the client drops its connection
        with pytest.raises(asyncio.CancelledError):
            await gone
        # Its handler still runs (waiting for the slot) after the relay saw the client go.
        await wait_until(lambda: relay.connections() == (2, 1), 10.0, "the relay to see it go")
        assert not holder.done()
        assert await holder == 201
    await wait_until(
        lambda: relay.counter("relay_admission_shed_total", reason="client_gone") == 1,
        10.0,
        "the gone request dropped when it got its slot",
    )
    assert relay.counter("relay_http_errors_total", status=499, code="client_closed_request") == 1
    assert gauge(relay.services, "relay_admission_inflight") == 0
    assert gauge(relay.services, "relay_admission_waiting") == 0
    # Only the holder was checked and written: the gone request cost the database nothing.
    assert relay.counter("relay_admission_total", outcome="admitted") == 1
    conn = await asyncpg.connect(relay.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM interview_sessions") == 1
    finally:
        await conn.close()
