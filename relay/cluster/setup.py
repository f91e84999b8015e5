"""What joining the cluster needs from the settings at start-up (used by relay.app, which
builds the cluster's parts in order: limits and shared sessions before the session
service, the runtime after it)."""

from __future__ import annotations

import asyncio

import backoff

from relay.config import Settings
from relay.sealing import StateKeyError, StateKeys, load_state_keys


@backoff.on_exception(backoff.constant, StateKeyError, interval=0.05, max_tries=40, logger=None)
async def state_keys(settings: Settings) -> StateKeys:
    """The keys sealing the secrets stored in the database, and opening them (relay.sealing)."""
    # Retried: a worker starting beside another may find the key file not written yet.
    return await asyncio.to_thread(load_state_keys, settings.cluster, settings.data_path)


def advertise_address(settings: Settings) -> str:
    """The address other members and operators reach this member at."""
    return settings.cluster.advertise_address or (
        f"http://{settings.server.host}:{settings.server.port}"
    )
