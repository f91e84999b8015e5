"""Releasing what a bridge holds: its supervisor, forwarders, queue tracks, peers, upstream call.

``release`` is the work of the bridge's ``closing`` state (``Bridge._teardown`` runs it once,
then moves to ``closed`` and reports to the session layer). Whatever fails on the way (the
supervisor having died with an exception included) is logged and the rest still runs, so
the registry slot, the row and both peers are released.

Nothing is created once teardown began (negotiation checks before each step that creates
something), so the parts are passed as they are; the one exception is the upstream call,
whose answer may arrive while the exchange was in flight, so ``hang_up`` is asked for it
only when the peers close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiortc import RTCPeerConnection

from relay.media.bridge.supervision import Supervisor
from relay.media.forwarding import Forwarder
from relay.media.peers import close_peer
from relay.media.tracks import BoundedQueueTrack

log = logging.getLogger("relay.media")


async def release(
    session_id: str,
    *,
    supervisor: Supervisor,
    forwarders: Sequence[Forwarder],
    tracks: Sequence[BoundedQueueTrack],
    peers: Sequence[RTCPeerConnection],
    hang_up: Callable[[], Awaitable[None] | None],
) -> None:
    """Stop the supervisor, then the forwarders, then close the peers and hang up together."""
    # The supervisor's own failure was logged where it happened (relay.tasks.spawn);
    # here it must not stop the release of everything below.
    await supervisor.stop()
    await settle(session_id, [forwarder.stop() for forwarder in forwarders])
    for track in tracks:
        track.stop()
    closing: list[Awaitable[Any]] = [close_peer(pc) for pc in peers]
    hangup = hang_up()
    if hangup is not None:
        closing.append(hangup)
    await settle(session_id, closing)


async def settle(session_id: str, steps: list[Awaitable[Any]]) -> None:
    """Run ``steps`` side by side; log each failure and go on."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error(
                "session %s: error while closing: %s: %s",
                session_id,
                type(result).__name__,
                result,
            )
        elif isinstance(result, BaseException):
            raise result
