"""TURN with expiring credentials against a real coturn (Debian's package) on loopback.

- The credentials a session's ``ice_servers`` carry are accepted by coturn
  (``turnutils_uclient`` allocates and relays), and refused once expired or when made with
  another secret.
- An interview whose browser gathers relayed candidates only (aiortc's
  ``iceTransportPolicy=RELAY``, given only the session's TURN server) goes live through
  coturn and carries audio both ways; with ``ice.relay_turn = "upstream"`` the relay's own
  upstream leg gathers a relayed candidate too, and its TURN client sockets stay in the
  UDP port range.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

from relay.config import IceConfig, IceServerConfig
from relay.media import aiortc_private
from relay.media.bridge import Bridge
from relay.media.ice import turn_rest_credentials
from relay.media.manager import ports_per_exchange
from relay.media.peers import PEER_CLOSE_WAIT_S
from relay.upstream.simulator.server import RunningSimulator
from tests.conftest import TURN_RELAY_PORTS, TURN_SECRET
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import RelayHarness
from tests.integration.test_port_range import free_udp_block, process_udp_ports, sdp_ports
from tests.support.coturn import CoturnServer

SPEECH = encode_opus(speech_like(1.6))
_CANDIDATE_TYPE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ \S+ \d+ typ (\w+)", re.MULTILINE)


def candidate_types(sdp: str) -> list[str]:
    return _CANDIDATE_TYPE.findall(sdp)


def turn_settings(coturn: CoturnServer, **ice: Any) -> dict[str, dict[str, Any]]:
    return {"ice": {"turn_urls": (coturn.url,), "turn_secret": TURN_SECRET, **ice}}


async def new_session(relay: RelayHarness) -> tuple[str, str, dict[str, Any]]:
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    return token, body["session_id"], body


async def test_session_credentials_are_accepted_by_coturn_until_they_expire(
    coturn: CoturnServer, make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    relay = await make_relay(overrides=turn_settings(coturn, turn_ttl_s=600))
    _, session_id, body = await new_session(relay)
    (turn,) = body["ice_servers"]
    assert turn["urls"] == [coturn.url]
    expiry, who = turn["username"].split(":")
    assert who == session_id and 590 <= int(expiry) - time.time() <= 600

    accepted = await asyncio.to_thread(coturn.allocate, turn["username"], turn["credential"])
    assert accepted.returncode == 0, accepted.stdout[-1500:] + coturn.log_tail()
    assert "tot_recv_msgs" in accepted.stdout  # data went through the allocation

    # Same session, expired an hour ago: refused.
    stale = turn_rest_credentials(TURN_SECRET, session_id, 60, now=time.time() - 3600)
    expired = await asyncio.to_thread(coturn.allocate, stale.username, stale.credential)
    assert expired.returncode != 0 and "Cannot complete Allocation" in expired.stdout
    # Valid times, another secret: refused.
    forged = turn_rest_credentials("not-the-secret", session_id, 600)
    wrong = await asyncio.to_thread(coturn.allocate, forged.username, forged.credential)
    assert wrong.returncode != 0 and "Cannot complete Allocation" in wrong.stdout
    # A credential bound to one username does not work for another.
    other = await asyncio.to_thread(coturn.allocate, f"{expiry}:is_other", turn["credential"])
    assert other.returncode != 0

    assert TURN_SECRET not in str(body)
    assert TURN_SECRET not in caplog.text


@pytest.fixture
async def browsers() -> AsyncIterator[list[BrowserPeer]]:
    peers: list[BrowserPeer] = []
    yield peers
    for peer in peers:
        await peer.close()


def relay_only_browser(body: dict[str, Any]) -> BrowserPeer:
    """A browser that gathers relayed candidates only, through the session's TURN server.

    aiortc 1.16 has ``RTCConfiguration.iceTransportPolicy`` (RELAY makes aioice skip host
    and server-reflexive candidates), so the offer carries coturn's relayed addresses only
    and every packet of this leg crosses coturn."""
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in body["ice_servers"]
    ]
    configuration = RTCConfiguration(
        iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY
    )
    return BrowserPeer(payloads=SPEECH, configuration=configuration)


async def exchange(relay: RelayHarness, token: str, session_id: str, offer: str) -> str:
    async with relay.client.post(
        "/api/webrtc-exchange",
        json={"session_id": session_id, "type": "offer", "sdp": offer},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
        return str(answer["sdp"])


def on_a_turn_allocation(pc: RTCPeerConnection | None) -> bool:
    """Whether the leg's selected pair sends through the relay's own TURN allocation."""
    assert pc is not None
    receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "audio")
    pair = aiortc_private.nominated_pairs(receiver.transport)[1]
    return bool(pair.local_candidate.type == "relay")


async def assert_audio_both_ways(
    bridge: Bridge, browser: BrowserPeer, simulator: RunningSimulator, media_path: str
) -> None:
    call = simulator.state.last_call
    assert call is not None
    # The simulator heard the candidate's speech (a closed VAD segment) ...
    await simulator.state.wait_for(lambda: any(e is not None for _, e in call.vad_segments), 20)
    assert call.rms_max_dbfs > -30
    # ... and the candidate heard the interviewer's reply.
    await wait_until(lambda: browser.speaker.loud_frames() > 25, 20, "reply audio")
    stats = bridge.stats()
    assert stats["browser_to_upstream"]["forwarded"] > 50
    assert stats["upstream_to_browser"]["forwarded"] > 25
    # Forwarded by the fast path (the default), which sends on the selected pair itself:
    # through the TURN allocation when that pair is relayed.
    assert stats["browser_to_upstream"]["fast_path"] is True
    assert stats["upstream_to_browser"]["fast_path"] is True
    # The compiled loop carries a direction only between two of the relay's own sockets:
    # a leg on the relay's TURN allocation stays with the Python fast path.
    compiled = (
        media_path != "python"
        and not on_a_turn_allocation(bridge.browser_pc)
        and not on_a_turn_allocation(bridge.upstream_pc)
    )
    assert stats["browser_to_upstream"]["compiled"] is compiled
    assert stats["upstream_to_browser"]["compiled"] is compiled


async def test_relay_only_browser_goes_live_through_coturn(
    coturn: CoturnServer,  # first: it outlives the relay, whose TURN clients deallocate
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    browsers: list[BrowserPeer],
    media_path: str,
) -> None:
    relay = await make_relay(overrides=turn_settings(coturn))
    token, session_id, body = await new_session(relay)
    browser = relay_only_browser(body)
    browsers.append(browser)
    offer = await browser.offer()
    assert candidate_types(offer) and set(candidate_types(offer)) == {"relay"}, offer
    low, high = TURN_RELAY_PORTS
    assert all(low <= p <= high for p in sdp_ports(offer))  # coturn's relayed ports

    answer = await exchange(relay, token, session_id, offer)
    # The relay itself does not use TURN for the browser leg by default: host only.
    assert set(candidate_types(answer)) == {"host"}
    await browser.accept(answer)
    await browser.wait_connected(20)
    assert relay.services.bridges is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    await wait_until(lambda: bridge.state == "active", 15, "bridge active")
    await assert_audio_both_ways(bridge, browser, simulator, media_path)


async def test_relay_upstream_leg_over_turn_stays_in_the_port_range(
    coturn: CoturnServer,  # first: it outlives the relay, whose TURN clients deallocate
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    browsers: list[BrowserPeer],
    media_path: str,
) -> None:
    low, high = free_udp_block(12)
    relay = await make_relay(
        overrides=turn_settings(coturn, relay_turn="upstream", udp_port_min=low, udp_port_max=high)
    )
    token, session_id, body = await new_session(relay)
    browser = relay_only_browser(body)
    browsers.append(browser)
    offer = await browser.offer()
    # The browser's own sockets exist now: whatever opens from here is the relay's or the
    # simulator's (whose ports its answer SDP names).
    baseline = process_udp_ports()
    answer = await exchange(relay, token, session_id, offer)
    assert relay.services.bridges is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None and bridge.upstream_pc is not None
    upstream_offer = bridge.upstream_pc.localDescription.sdp
    assert "relay" in candidate_types(upstream_offer), upstream_offer
    relay_sockets = (
        process_udp_ports() - baseline - sdp_ports(bridge.upstream_pc.remoteDescription.sdp)
    )
    # Host sockets of both legs and the TURN client sockets of the upstream leg.
    assert len(relay_sockets) >= 3
    assert all(low <= p <= high for p in relay_sockets), (sorted(relay_sockets), low, high)

    await browser.accept(answer)
    await browser.wait_connected(20)
    await wait_until(lambda: bridge.state == "active", 15, "bridge active")
    await assert_audio_both_ways(bridge, browser, simulator, media_path)


async def test_an_interview_ends_promptly_when_the_turn_server_is_gone(
    coturn: CoturnServer,
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    browsers: list[BrowserPeer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aioice deletes a TURN allocation before closing, retrying for ~40 s when the server
    does not answer; the relay waits at most PEER_CLOSE_WAIT_S for that."""
    relay = await make_relay(overrides=turn_settings(coturn, relay_turn="upstream"))
    token, session_id, _ = await new_session(relay)
    browser = BrowserPeer(payloads=SPEECH)
    browsers.append(browser)
    answer = await exchange(relay, token, session_id, await browser.offer())
    await browser.accept(answer)
    await browser.wait_connected(20)
    assert relay.services.bridges is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None and bridge.upstream_pc is not None
    assert "relay" in candidate_types(bridge.upstream_pc.localDescription.sdp)
    await wait_until(lambda: bridge.state == "active", 15, "bridge active")

    await asyncio.to_thread(coturn.stop)
    started = time.monotonic()
    async with relay.client.delete(
        f"/api/sessions/{session_id}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 204
    assert bridge.closed
    assert time.monotonic() - started < PEER_CLOSE_WAIT_S + 3.0
    rows = await relay.sql(
        "SELECT state, end_reason FROM interview_sessions WHERE id = $1", session_id
    )
    assert (rows[0]["state"], rows[0]["end_reason"]) == ("ended", "hangup")
    # The bound was what ended the wait (aioice was still retrying the deallocation).
    assert "peer close still running" in caplog.text


async def test_a_static_turn_server_counts_in_the_ports_an_exchange_needs(
    coturn: CoturnServer,
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    browsers: list[BrowserPeer],
) -> None:
    """A TURN URL in ``ice.servers`` goes to both legs: one more UDP socket per transport
    (three while negotiating). A range of exactly ``ports_per_exchange`` is enough."""
    creds = turn_rest_credentials(TURN_SECRET, "static", 3600)
    server = {"urls": (coturn.url,), "username": creds.username, "credential": creds.credential}
    per = ports_per_exchange(IceConfig(servers=(IceServerConfig.model_validate(server),)))
    assert per == (1 + 1) + 2 * (1 + 1)
    low, high = free_udp_block(per)
    relay = await make_relay(
        overrides={"ice": {"servers": (server,), "udp_port_min": low, "udp_port_max": high}}
    )
    assert ports_per_exchange(relay.services.settings.ice) == per == high - low + 1
    token, session_id, _ = await new_session(relay)
    browser = BrowserPeer(payloads=SPEECH)
    browsers.append(browser)
    answer = await exchange(relay, token, session_id, await browser.offer())
    assert relay.services.bridges is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None and bridge.upstream_pc is not None
    # Both legs really did gather through the TURN server, inside the range.
    assert "relay" in candidate_types(answer)
    assert "relay" in candidate_types(bridge.upstream_pc.localDescription.sdp)
    await browser.accept(answer)
    await browser.wait_connected(20)
    await wait_until(lambda: bridge.state == "active", 15, "bridge active")
