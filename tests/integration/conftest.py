"""Fixtures for a whole relay: ``make_relay(...)`` builds one per test on loopback."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from relay.app import create_app
from relay.services import SERVICES
from relay.upstream.simulator.server import RunningSimulator, start_simulator
from tests.integration.continuity_helpers import Page
from tests.integration.relay_harness import RelayHarness, relay_settings
from tests.support.reply_cutter import ReplyCutter

MakeRelay = Callable[..., Awaitable[RelayHarness]]
# Longer than any bounded wait of the relay's own shut-down on a loaded machine.
SHUTDOWN_BOUND_S = 45.0


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
) -> AsyncIterator[MakeRelay]:
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
        clients.append(client)
        return RelayHarness(client=client, services=app[SERVICES], database_url=url)

    clients: list[TestClient[Request, Application]] = []
    yield factory
    # Shut the relays down here, bounded, before aiohttp_client's own (unbounded) close:
    # a shut-down that hangs fails this test with every pending task's stack instead of
    # stalling the whole run until pytest-timeout ends it.
    for client in reversed(clients):
        try:
            await asyncio.wait_for(client.close(), SHUTDOWN_BOUND_S)
        except TimeoutError:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            stacks = io.StringIO()
            for task in pending:
                task.print_stack(limit=8, file=stacks)
            pytest.fail(
                f"relay shut-down took over {SHUTDOWN_BOUND_S} s; tasks:\n{stacks.getvalue()}"
            )


@pytest.fixture
async def cutter(database_url: str) -> AsyncIterator[ReplyCutter]:
    """A proxy in front of the test's database that can drop the reply to a chosen
    statement (a commit that landed, its answer lost): tests.support.reply_cutter."""
    parts = urlsplit(database_url)
    assert parts.hostname is not None and parts.port is not None
    proxy = ReplyCutter(parts.hostname, parts.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def pages() -> AsyncIterator[list[Page]]:
    """The continuity tests' pages (aiortc peers standing for the candidate's page),
    closed at the end whatever happened."""
    made: list[Page] = []
    yield made
    for page in made:
        await page.close()
