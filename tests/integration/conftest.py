"""Fixtures for a whole relay: ``make_relay(...)`` builds one per test on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from relay.app import create_app
from relay.services import SERVICES
from relay.upstream.simulator.server import RunningSimulator, start_simulator
from tests.integration.relay_harness import RelayHarness, relay_settings

MakeRelay = Callable[..., Awaitable[RelayHarness]]


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(host="127.0.0.1", port=0)
    try:
        yield sim
    finally:
        await sim.close()


@pytest.fixture
async def make_relay(
    database_url: str,
    simulator: RunningSimulator,
    # Last, so that the app shuts down (and finishes its sessions) before the database
    # and the simulator go away: pytest tears fixtures down in reverse order.
    aiohttp_client: Callable[[Application], Awaitable[TestClient[Request, Application]]],
) -> MakeRelay:
    async def factory(
        *,
        dsn: str | None = None,
        redis_url: str = "",
        overrides: dict[str, dict[str, Any]] | None = None,
        instance_id: str = "test-instance",
    ) -> RelayHarness:
        url = dsn or database_url
        settings = relay_settings(url, simulator.base_url, redis_url=redis_url, overrides=overrides)
        app = create_app(settings, instance_id=instance_id)
        client = await aiohttp_client(app)
        return RelayHarness(client=client, services=app[SERVICES], database_url=url)

    return factory
