"""The supervisor: both legs connected in time, then watched until something ends it.

Runs as the bridge's owned task (``relay.tasks.spawn``): if it fails, the bridge is
closed as failed (``internal_error``) rather than left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.media.bridge.core import Bridge

log = logging.getLogger("relay.media")

QUALITY_REFRESH_S = 2.0
MAX_TICK_S = 1.0


async def supervise(bridge: Bridge) -> None:
    session = bridge.settings.session
    await bridge.call_hook("on_connecting", bridge.hooks.on_connecting())
    remaining = session.connect_timeout_s - (time.monotonic() - bridge.started_at)
    try:
        async with asyncio.timeout(max(0.0, remaining)):
            await bridge.both_connected.wait()
    except TimeoutError:
        log.warning(
            "session %s: legs not connected within %.1fs (browser %s, upstream %s)",
            bridge.session_id,
            session.connect_timeout_s,
            bridge.browser_pc.connectionState,
            bridge.upstream_pc.connectionState if bridge.upstream_pc else "-",
        )
        bridge.begin_close("connect_timeout", state="failed")
        return
    if bridge.is_closing():
        return
    now = time.monotonic()
    bridge.connected_at = now
    bridge.state = "active"
    bridge.metrics.connect_s.observe(now - bridge.started_at)
    log.info("session %s: active after %.0fms", bridge.session_id, (now - bridge.started_at) * 1000)
    await bridge.call_hook("on_active", bridge.hooks.on_active(bridge.upstream_call_id))
    await monitor(bridge)


async def monitor(bridge: Bridge) -> None:
    """Until teardown: end on maximum duration or idle media; publish stats."""
    idle_timeout = bridge.settings.session.idle_media_timeout_s
    tick = min(MAX_TICK_S, idle_timeout / 4) if idle_timeout > 0 else MAX_TICK_S
    reported_first_audio = False
    quality_at = 0.0
    while not bridge.is_closing():
        assert bridge.connected_at is not None
        now = time.monotonic()
        remaining = bridge.max_duration_s - (now - bridge.connected_at)
        if remaining <= 0:
            bridge.begin_close("max_duration")
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(tick, remaining)):
                await bridge.wake.wait()
        if bridge.is_closing():
            return
        now = time.monotonic()
        if idle_timeout > 0 and now - last_media_at(bridge) >= idle_timeout:
            bridge.begin_close("idle_media")
            return
        first = bridge.upstream_to_browser.first_packet_at
        if not reported_first_audio and first is not None:
            reported_first_audio = True
            bridge.metrics.first_upstream_audio_s.observe(first - bridge.started_at)
        bridge.quality.publish_metrics()
        if now - quality_at >= QUALITY_REFRESH_S:
            quality_at = now
            await bridge.quality.refresh()


def last_media_at(bridge: Bridge) -> float:
    assert bridge.connected_at is not None
    times = [
        t
        for t in (
            bridge.connected_at,
            bridge.browser_to_upstream.last_packet_at,
            bridge.upstream_to_browser.last_packet_at,
        )
        if t is not None
    ]
    return max(times)
