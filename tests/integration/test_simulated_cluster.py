"""A simulated cluster: two `relay serve` instances in simulate mode share one simulator
(``upstream.simulator_url``, as compose runs `relay simulate`), so a session minted
through one instance is exchanged through the other, and both still tell candidates and
operators that the interviewer is simulated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.cluster_helpers import (
    OPERATOR,
    Client,
    RelayProcess,
    add_user,
    fresh_connections,
    relay_env,
)
from tests.integration.media_helpers import BrowserPeer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
async def simulated_pair(
    traversable_tmp_path: Path,
    database_url: str,
    redis_server: RedisServer,
    simulator: RunningSimulator,
) -> AsyncIterator[tuple[RelayProcess, RelayProcess]]:
    env = relay_env(
        traversable_tmp_path / "state",
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            # No OpenAI key: simulation asked for, with the one simulator both share.
            "RELAY__UPSTREAM__SIMULATE": "true",
            "RELAY__UPSTREAM__SIMULATOR_URL": simulator.base_url,
        },
    )
    a = await RelayProcess.start(traversable_tmp_path, env)
    try:
        b = await RelayProcess.start(traversable_tmp_path, env)
    except BaseException:
        await a.stop()
        raise
    try:
        yield a, b
    finally:
        for relay in (a, b):
            await relay.stop()


async def test_a_session_minted_on_one_simulated_instance_is_exchanged_on_the_other(
    simulated_pair: tuple[RelayProcess, RelayProcess], database_url: str
) -> None:
    relay_a, relay_b = simulated_pair
    async with fresh_connections() as http:
        a, b = Client(http, relay_a.url), Client(http, relay_b.url)
        _, token = await add_user(database_url)

        status, created, _ = await a.create(token)
        assert status == 201, created
        assert created["simulated"] is True
        browser: BrowserPeer | None = None
        try:
            browser, _ = await b.go_live(token, created["session_id"])
            await browser.wait_type("session.created", within=10)
        finally:
            if browser is not None:
                await browser.close()

        # B's own sessions are announced as simulated too, and both tell operators.
        _, other = await add_user(database_url)
        status, on_b, _ = await b.create(other)
        assert status == 201, on_b
        assert on_b["simulated"] is True
        for client in (a, b):
            status, stats, _ = await client.call("GET", "api/stats", headers=OPERATOR)
            assert status == 200, stats
            assert stats["upstream"]["simulated"] is True
    for relay in simulated_pair:
        assert any("SIMULATED upstream" in line for line in relay.lines), relay.lines
