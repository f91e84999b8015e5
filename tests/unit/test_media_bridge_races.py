"""Hang-ups that arrive while the bridge is still negotiating leave nothing running."""

from __future__ import annotations

import asyncio

import pytest

from relay.media.bridge import BridgeClosed
from relay.media.peers import open_peer_count
from relay.upstream.base import MintedSession, SdpAnswer
from tests.integration.media_helpers import LoopbackUpstream
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)


class HeldUpstream(LoopbackUpstream):
    """Holds the SDP exchange until released, so a hang-up can land inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        self.entered.set()
        await self.release.wait()
        return await super().exchange_sdp(minted, offer_sdp, request_id=request_id)


async def test_hang_up_during_the_upstream_exchange_hangs_up_the_late_call(rig: Rig) -> None:  # noqa: F811
    held = HeldUpstream()
    rig.upstream = held
    bridge = rig.bridge()
    browser = rig.browser()
    relay_peers = open_peer_count()
    start = asyncio.create_task(bridge.start(await browser.offer()))
    async with asyncio.timeout(10):
        await held.entered.wait()
    await bridge.close("hangup")
    held.release.set()
    with pytest.raises(BridgeClosed):
        await start
    assert [c.call_id for c in held.calls] == held.hangups != []
    assert rig.hooks.finished == [("ended", "hangup", 0.0)]
    assert open_peer_count() == relay_peers - 1  # the bridge's browser leg is closed too
    assert bridge.upstream_pc is not None and bridge.upstream_pc.connectionState == "closed"
    await held.close()


@pytest.mark.parametrize("steps", [1, 4, 16, 64])
async def test_hang_up_at_any_point_of_negotiation_leaves_nothing_open(
    rig: Rig,  # noqa: F811
    steps: int,
) -> None:
    bridge = rig.bridge()
    browser = rig.browser()
    offer = await browser.offer()
    relay_peers = open_peer_count()
    start = asyncio.create_task(bridge.start(offer))
    for _ in range(steps):  # let negotiation run a varying number of loop turns
        await asyncio.sleep(0)
    await bridge.close("hangup")
    result = (await asyncio.gather(start, return_exceptions=True))[0]
    assert isinstance(result, BridgeClosed) or bridge.closed
    assert bridge.closed and len(rig.hooks.finished) == 1
    # Every upstream call that came into being was hung up, and no relay peer is open.
    assert rig.upstream.hangups == [c.call_id for c in rig.upstream.calls]
    for pc in (bridge.browser_pc, bridge.upstream_pc):
        assert pc is None or pc.connectionState == "closed"
    assert open_peer_count() == relay_peers - 1


async def test_the_callers_cancellation_is_not_turned_into_bridge_closed(rig: Rig) -> None:  # noqa: F811
    held = HeldUpstream()
    rig.upstream = held
    bridge = rig.bridge()
    browser = rig.browser()
    start = asyncio.create_task(bridge.start(await browser.offer()))
    async with asyncio.timeout(10):
        await held.entered.wait()
    # Teardown has begun (a hang-up) when the caller itself is cancelled.
    closing = bridge.begin_close("hangup")
    start.cancel()
    result = (await asyncio.gather(start, return_exceptions=True))[0]
    assert isinstance(result, asyncio.CancelledError), result
    assert start.cancelled()
    await closing
    assert bridge.closed and rig.hooks.finished == [("ended", "hangup", 0.0)]
    await held.close()
