"""ice.public_address (NAT 1:1): the relay's answer to the browser announces it in its host
candidates; the upstream leg (the relay's own offer) keeps the gathered address."""

from __future__ import annotations

import re

from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer

PUBLIC = "203.0.113.7"
_HOST = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", re.MULTILINE)


async def test_answer_announces_the_public_address(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"ice": {"public_address": PUBLIC}})
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    browser = BrowserPeer()
    try:
        async with relay.client.post(
            "/api/webrtc-exchange",
            json={"session_id": body["session_id"], "type": "offer", "sdp": await browser.offer()},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        sdp = answer["sdp"]
        hosts = _HOST.findall(sdp)
        assert hosts and {addr for addr, _ in hosts} == {PUBLIC}, sdp
        assert "127.0.0.1" not in sdp
        assert f"c=IN IP4 {PUBLIC}\r\n" in sdp
        # Same ports as the sockets the relay gathered (1:1 NAT keeps ports).
        assert relay.services.bridges is not None
        bridge = relay.services.bridges.get(body["session_id"])
        assert bridge is not None and bridge.upstream_pc is not None
        gathered = _HOST.findall(bridge.browser_pc.localDescription.sdp)
        assert {port for _, port in gathered} == {port for _, port in hosts}
        assert {addr for addr, _ in gathered} == {"127.0.0.1"}
        # The upstream leg is the relay's own offer: unchanged.
        upstream = _HOST.findall(bridge.upstream_pc.localDescription.sdp)
        assert {addr for addr, _ in upstream} == {"127.0.0.1"}
    finally:
        await browser.close()
