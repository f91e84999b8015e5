"""Wiring this member into the cluster at start-up (called by relay.app)."""

from __future__ import annotations

import asyncio
import contextlib

import backoff

from relay.cluster.limits import SharedLimits
from relay.cluster.runtime import ClusterRuntime
from relay.cluster.sealing import Sealer, StateKeyError, load_or_create_key
from relay.services import Services
from relay.sessions.shared_state import SharedSessions


@backoff.on_exception(backoff.constant, StateKeyError, interval=0.05, max_tries=40, logger=None)
async def _state_key(configured: str, services: Services) -> bytes:
    # Retried: a worker starting beside another may find the key file not written yet.
    return await asyncio.to_thread(load_or_create_key, configured, services.settings.data_path)


async def start_cluster(services: Services, stack: contextlib.AsyncExitStack) -> ClusterRuntime:
    settings = services.settings
    key = await _state_key(settings.cluster.state_key, services)
    limits = SharedLimits(settings, services.metrics)
    # Pushed first so it closes last: finishing sessions at shut-down releases leases.
    stack.push_async_callback(limits.close)
    services.sessions.shared = SharedSessions(
        settings,
        store=services.store,
        sealer=Sealer(key),
        upstream=services.upstream,
        instance_id=services.instance_id,
    )
    services.sessions.limits = limits
    address = settings.cluster.advertise_address or (
        f"http://{settings.server.host}:{settings.server.port}"
    )
    runtime = ClusterRuntime(services, limits, address=address)
    services.cluster = runtime
    runtime.start()
    stack.push_async_callback(runtime.close)
    return runtime
