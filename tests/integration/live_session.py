"""One live bridged interview for operator tests: a real aiortc "browser" through the
whole relay to the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import RelayHarness

SPEECH = encode_opus(speech_like(1.6))


@dataclass
class LiveSession:
    session_id: str
    token: str
    browser: BrowserPeer


@asynccontextmanager
async def live_session(
    relay: RelayHarness, *, email: str = "jane.doe@example.com", within: float = 15.0
) -> AsyncIterator[LiveSession]:
    token = await relay.add_user(seconds=1800, email=email)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = body["session_id"]
    browser = BrowserPeer(payloads=SPEECH)
    try:
        offer = {"session_id": session_id, "type": "offer", "sdp": await browser.offer()}
        async with relay.client.post(
            "/api/webrtc-exchange", json=offer, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        await browser.accept(answer["sdp"])
        await browser.wait_connected(within)
        bridges = relay.services.bridges
        assert bridges is not None
        await wait_until(
            lambda: (b := bridges.get(session_id)) is not None and b.state == "active",
            within,
            "bridge active",
        )
        yield LiveSession(session_id, token, browser)
    finally:
        await browser.close()
