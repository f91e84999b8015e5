"""The relay's peers finish ICE as soon as the checks are done (aiortc_private,
``install_prompt_ice_completion``), not at aioice's next pacing tick.

aioice's ``connect`` sleeps its 20 ms pacing step after starting the last check; to make
that wait impossible to miss on a loaded machine, the test stretches the step to 5 s
(aioice's ``asyncio.sleep`` only): a peer still waiting for the tick takes 5 s.
"""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.config import IceConfig
from relay.media import aiortc_private
from relay.media.ice import rtc_configuration
from relay.media.peers import close_peer, new_peer, set_local_description
from relay.media.port_range import binding_in
from tests.integration.media_helpers import wait_until

PACING_STEP_S = 0.02
STRETCHED_STEP_S = 5.0


@pytest.fixture
def stretched_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice's 20 ms pacing sleep lasts 5 s (any other sleep of aioice's is unchanged)."""
    # Routed first (relay.media.port_range), so the relay's gathering keeps this copy.
    with binding_in(None):
        pass
    real: types.ModuleType = getattr(aioice.ice, "asyncio")  # noqa: B009
    assert aiortc_private.aioice_running_loop_routed()
    shim = types.ModuleType("stretched_" + real.__name__)
    shim.__dict__.update(real.__dict__)

    async def sleep(delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(STRETCHED_STEP_S if delay == PACING_STEP_S else delay, result)

    shim.sleep = sleep  # type: ignore[attr-defined]
    monkeypatch.setattr(aioice.ice, "asyncio", shim)
    # aioice's own step until a relay peer installs the change (undone afterwards).
    monkeypatch.setattr(
        aioice.ice.Connection, "_check_periodic", aiortc_private._original_check_periodic
    )


async def test_relay_peer_completes_ice_without_waiting_for_the_pacing_tick(
    stretched_pacing: None,
) -> None:
    assert not aiortc_private.prompt_ice_completion_installed()
    relay_pc = new_peer(IceConfig(), leg="upstream")  # installs the prompt completion
    assert aiortc_private.prompt_ice_completion_installed()
    far = RTCPeerConnection(rtc_configuration(IceConfig()))
    completed: dict[str, float] = {}

    @relay_pc.on("iceconnectionstatechange")
    def on_ice() -> None:
        if relay_pc.iceConnectionState == "completed":
            completed.setdefault("relay", time.monotonic())

    try:
        relay_pc.createDataChannel("probe")
        offer = await set_local_description(relay_pc, await relay_pc.createOffer(), 10)
        await far.setRemoteDescription(offer)
        await far.setLocalDescription(await far.createAnswer())
        answered = time.monotonic()
        await relay_pc.setRemoteDescription(
            RTCSessionDescription(sdp=far.localDescription.sdp, type="answer")
        )
        await wait_until(
            lambda: relay_pc.connectionState == "connected" and far.connectionState == "connected",
            within=20,
            what="both peers connected",
        )
        # Without the change, the relay's connect() returns one stretched step (5 s)
        # after it began; with it, after the check's round trip.
        assert completed["relay"] - answered < STRETCHED_STEP_S / 2
    finally:
        await close_peer(relay_pc)
        await far.close()
