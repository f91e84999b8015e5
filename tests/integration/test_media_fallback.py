"""The relay with a private aiortc/aioice name gone (as after an upgrade that renamed it):
it starts, says which feature fell back and why (log, /api/stats, /metrics), and carries
interviews through aiortc's own path for that feature (relay.media.capabilities).

Whole relay: real PostgreSQL, the simulator over HTTP and WebRTC, an aiortc browser."""

from __future__ import annotations

import logging
from typing import Any

import aioice.turn
import pylibsrtp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness
from tests.integration.test_port_range import RANGE_SIZE, Interviews, free_udp_block, sdp_ports

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def _stats(relay: RelayHarness) -> dict[str, Any]:
    async with relay.client.get("/api/stats", headers=OPERATOR) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def _capability_gauge(relay: RelayHarness) -> dict[str, float]:
    async with relay.client.get("/metrics", headers=OPERATOR) as resp:
        assert resp.status == 200
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {
        s.labels["feature"]: s.value for s in families["relay_media_capability_available"].samples
    }


def _fell_back(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["feature"]: f for f in body["media_capabilities"]["features"] if not f["available"]}


async def test_without_aioices_socket_hook_media_binds_anywhere_and_interviews_go_on(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The name the port range and receive batching route aioice's socket binds through.
    monkeypatch.delattr(aioice.turn, "asyncio")
    low, high = free_udp_block(RANGE_SIZE)
    with caplog.at_level(logging.WARNING, logger="relay.media"):
        relay = await make_relay(overrides={"ice": {"udp_port_min": low, "udp_port_max": high}})
    # A range is configured and cannot be held to: said loudly.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("port_range unavailable (missing: aioice.turn.asyncio)" in r.message for r in errors)
    interviews = Interviews(relay)
    try:
        candidate = await interviews.new()
        bridge = await interviews.go_live(candidate)
        await wait_until(
            lambda: (
                bridge.browser_to_upstream.forwarded > 5
                and bridge.upstream_to_browser.forwarded > 5
            ),
            15,
            "audio both ways",
        )
        # aioice bound the relay's sockets itself: any port, the loop's own transports.
        assert bridge.upstream_pc is not None
        for pc in (bridge.browser_pc, bridge.upstream_pc):
            ports = sdp_ports(pc.localDescription.sdp)
            assert ports and not ports & set(range(low, high + 1)), (ports, low, high)
        body = await _stats(relay)
        assert body["media_receive"]["sockets"] == 0
        fell_back = _fell_back(body)
        assert set(fell_back) == {"port_range", "receive_batching", "compiled_loop"}
        assert body["media_capabilities"]["fallbacks"] == [
            "compiled_loop",
            "port_range",
            "receive_batching",
        ]
        for feature in fell_back.values():
            assert feature["fallback"]
        for name in ("port_range", "receive_batching"):
            assert fell_back[name]["missing"] == ["aioice.turn.asyncio"]
        # The compiled loop reads the relay's media sockets: without them, the Python path.
        assert fell_back["compiled_loop"]["missing"] == ["needs receive_batching"]
        forwarding = body["media_receive"]["forwarding"]
        assert forwarding["path"] == "python"
        assert "compiled_loop unavailable" in forwarding["reason"]
        gauge = await _capability_gauge(relay)
        assert gauge["port_range"] == gauge["receive_batching"] == gauge["compiled_loop"] == 0
        assert gauge["fast_path"] == gauge["rtp_hook"] == 1
        await interviews.hang_up(candidate)
    finally:
        await interviews.close()


async def test_without_a_fast_path_name_opus_goes_through_aiortcs_sender(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # pylibsrtp's binding module: the fast path's SRTP calls on aiortc's own contexts.
    monkeypatch.delattr(pylibsrtp, "_binding")
    with caplog.at_level(logging.WARNING, logger="relay.media"):
        relay = await make_relay()
    assert any(
        "fast_path unavailable (missing: pylibsrtp._binding)" in r.message for r in caplog.records
    )
    interviews = Interviews(relay)
    try:
        candidate = await interviews.new()
        bridge = await interviews.go_live(candidate)
        await wait_until(
            lambda: (
                bridge.browser_to_upstream.forwarded > 5
                and bridge.upstream_to_browser.forwarded > 5
            ),
            15,
            "audio both ways",
        )
        for direction in (bridge.browser_to_upstream, bridge.upstream_to_browser):
            # Still Opus passthrough (no decoding), but through aiortc's DTLS task and sender.
            assert direction.mode == "passthrough" and not direction.fast_path
            assert direction.frames_decoded == 0
        body = await _stats(relay)
        fell_back = _fell_back(body)
        assert list(fell_back) == ["fast_path", "compiled_loop"]
        assert fell_back["fast_path"]["missing"] == ["pylibsrtp._binding"]
        # The loop's own libsrtp name (the far ends' SRTCP), and the feature it builds on.
        assert fell_back["compiled_loop"]["missing"] == [
            "pylibsrtp._binding.lib.srtp_unprotect_rtcp",
            "needs fast_path",
        ]
        assert body["media_receive"]["forwarding"]["path"] == "python"
        (session,) = body["sessions"]
        assert session["media"]["browser_to_upstream"]["mode"] == "passthrough"
        gauge = await _capability_gauge(relay)
        assert gauge["fast_path"] == gauge["compiled_loop"] == 0
        assert {f for f, v in gauge.items() if v == 0} == {"fast_path", "compiled_loop"}
        await interviews.hang_up(candidate)
    finally:
        await interviews.close()
