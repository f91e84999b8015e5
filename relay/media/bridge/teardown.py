"""Teardown: stop the supervisor and forwarders, close both peers, hang up, report.

Runs once per bridge (``Bridge.begin_close``). Whatever fails on the way (the
supervisor having died with an exception included) is logged, and the session layer's
``on_finished`` still runs, so the registry slot, the row and both peers are released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from relay.media.bridge.base import EndState
from relay.media.peers import close_peer
from relay.tasks import cancel_and_wait

if TYPE_CHECKING:
    from relay.media.bridge.core import Bridge

log = logging.getLogger("relay.media")


async def teardown(bridge: Bridge, state: EndState, reason: str) -> None:
    bridge.ended_at = time.monotonic()
    bridge.end_state, bridge.end_reason = state, reason
    duration = bridge.active_seconds(bridge.ended_at)
    log.info(
        "session %s: closing (%s, %s) after %.1fs active",
        bridge.session_id,
        state,
        reason,
        duration,
    )
    try:
        # The supervisor's own failure was logged where it happened (relay.tasks.spawn);
        # here it must not stop the release of everything below.
        await cancel_and_wait(bridge.supervisor)
        closing: list[Awaitable[Any]] = [forwarder.stop() for forwarder in bridge.forwarders]
        await _settle(bridge, closing)
        bridge.to_upstream.stop()
        bridge.to_browser.stop()
        closing = [close_peer(bridge.browser_pc)]
        if bridge.upstream_pc is not None:
            closing.append(close_peer(bridge.upstream_pc))
        if bridge.upstream_call_id:
            bridge.hangup_sent = True
            closing.append(bridge.upstream.hangup(bridge.upstream_call_id))
        await _settle(bridge, closing)
        bridge.quality.publish_metrics()
        bridge.metrics.forget(bridge.browser_to_upstream)
        bridge.metrics.forget(bridge.upstream_to_browser)
        bridge.metrics.bridges_ended.inc(reason=reason)
    finally:
        bridge.state = "closed"
        if bridge.recorder is not None:
            bridge.recorder.stop(bridge.connected_at, bridge.ended_at)
        await bridge.call_hook("on_finished", bridge.hooks.on_finished(state, reason, duration))
        bridge.closed_event.set()


async def _settle(bridge: Bridge, steps: list[Awaitable[Any]]) -> None:
    """Run ``steps`` side by side; log each failure and go on."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error(
                "session %s: error while closing: %s: %s",
                bridge.session_id,
                type(result).__name__,
                result,
            )
        elif isinstance(result, BaseException):
            raise result
