"""ice.udp_port_min/udp_port_max with the whole relay (real PostgreSQL, the simulator over
HTTP and WebRTC, aiortc browsers): every UDP socket of the relay lies in the range, a full
range refuses new exchanges at once with 503 no_media_ports, freed ports are reused.

The relay runs in this test process, so its sockets are told apart from those of the test's
browsers and of the simulator (also in this process) through the SDP those peers published:
the process's UDP sockets come from /proc/self/fd and /proc/net/udp{,6}."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from relay.media.bridge import Bridge
from relay.media.manager import BridgeManager
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import RelayHarness
from tests.support.parallel import worker_slice

SPEECH = encode_opus(speech_like(0.4))
RANGE_SIZE = 6
_CANDIDATE_PORT = re.compile(r"^a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ", re.MULTILINE)


def free_udp_block(size: int) -> tuple[int, int]:
    """``size`` consecutive UDP ports, below the ephemeral range, free on every address,
    from this test worker's own slice of 20000-31999 (two workers never race for one)."""
    start, stop = worker_slice(20000, 31999, 2000)
    for low in range(start, stop - size + 2, size):
        held: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return low, low + size - 1
    raise AssertionError("no free UDP port block")


def process_udp_ports() -> set[int]:
    """Local ports of this process's UDP sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("udp", "udp6"):
        with open(f"/proc/net/{table}") as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def sdp_ports(sdp: str) -> set[int]:
    return {int(p) for p in _CANDIDATE_PORT.findall(sdp)}


@dataclass
class Candidate:
    """One interview: its user, session, browser and the offer it sent."""

    token: str
    session_id: str
    browser: BrowserPeer
    offer: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Interviews:
    def __init__(self, relay: RelayHarness) -> None:
        self.relay = relay
        self.all: list[Candidate] = []

    async def new(self) -> Candidate:
        token = await self.relay.add_user()
        status, body, _ = await self.relay.create_session(token)
        assert status == 201, body
        candidate = Candidate(token, body["session_id"], BrowserPeer(payloads=SPEECH))
        self.all.append(candidate)
        return candidate

    async def exchange(self, c: Candidate) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not c.offer:
            c.offer = await c.browser.offer()
        body = {"session_id": c.session_id, "type": "offer", "sdp": c.offer}
        async with self.relay.client.post(
            "/api/webrtc-exchange", json=body, headers=c.auth
        ) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def go_live(self, c: Candidate) -> Bridge:
        status, answer, _ = await self.exchange(c)
        assert status == 201, answer
        await c.browser.accept(answer["sdp"])
        await c.browser.wait_connected(15)
        bridge = self.bridge(c)
        await wait_until(lambda: bridge.state == "active", 15, "bridge active")
        return bridge

    def bridge(self, c: Candidate) -> Bridge:
        assert self.relay.services.bridges is not None
        bridge = self.relay.services.bridges.get(c.session_id)
        assert bridge is not None
        return bridge

    async def hang_up(self, c: Candidate) -> None:
        bridge = self.bridge(c)
        async with self.relay.client.delete(
            f"/api/sessions/{c.session_id}", headers=c.auth
        ) as resp:
            assert resp.status == 204
        await bridge.wait_closed()

    async def close(self) -> None:
        for c in self.all:
            await c.browser.close()


@pytest.fixture
async def ranged(make_relay: MakeRelay) -> AsyncIterator[tuple[Interviews, tuple[int, int]]]:
    low, high = free_udp_block(RANGE_SIZE)
    relay = await make_relay(
        overrides={"ice": {"udp_port_min": low, "udp_port_max": high}},
    )
    interviews = Interviews(relay)
    try:
        yield interviews, (low, high)
    finally:
        await interviews.close()


def relay_ports(bridges: list[Bridge], candidates: list[Candidate], baseline: set[int]) -> set[int]:
    """This process's UDP ports opened since ``baseline``, minus those of the test's browsers
    and the simulator's peers (read from the SDP they sent)."""
    others: set[int] = set()
    for c in candidates:
        others |= sdp_ports(c.offer)
    for bridge in bridges:
        assert bridge.upstream_pc is not None
        others |= sdp_ports(bridge.upstream_pc.remoteDescription.sdp)
    return process_udp_ports() - baseline - others


async def test_sessions_fill_the_range_then_get_503_and_ports_are_reused(
    ranged: tuple[Interviews, tuple[int, int]], media_path: str
) -> None:
    interviews, (low, high) = ranged
    in_range = set(range(low, high + 1))
    baseline = process_udp_ports()

    # 127.0.0.1 only: the browser leg binds one socket; the upstream leg two while it
    # offers (audio and data channel transports are gathered separately until the
    # upstream's answer bundles them): three per exchange, two per live session.
    live = [await interviews.new() for _ in range(2)]
    bridges = [await interviews.go_live(c) for c in live]
    ours = relay_ports(bridges, live, baseline)
    assert ours <= in_range and len(ours) == 4, (sorted(ours), low, high)
    for bridge in bridges:
        assert bridge.upstream_pc is not None
        for pc in (bridge.browser_pc, bridge.upstream_pc):
            assert sdp_ports(pc.localDescription.sdp) <= in_range
    # The candidates' audio is flowing through both.
    await wait_until(
        lambda: all(b.browser_to_upstream.forwarded > 5 for b in bridges), 10, "audio forwarded"
    )
    # ... by the fast path, which sends on the range's own sockets (the selected pairs').
    assert all(b.browser_to_upstream.fast_path for b in bridges)
    # (in C when the compiled loop runs: it reads and sends on the same sockets)
    compiled = media_path != "python"
    assert all(
        b.browser_to_upstream.compiled is compiled and b.upstream_to_browser.compiled is compiled
        for b in bridges
    )

    # Full (two ports left, an exchange needs three): the next exchange is refused at
    # once, before the session is claimed.
    late = await interviews.new()
    started = time.monotonic()
    status, body, headers = await interviews.exchange(late)
    assert time.monotonic() - started < 3.0
    assert status == 503, body
    assert body["error"]["code"] == "no_media_ports" and body["error"]["retryable"] is True
    assert body["request_id"].startswith("req_")
    assert headers["Retry-After"] == "5"
    assert interviews.relay.services.bridges is not None
    assert interviews.relay.services.bridges.get(late.session_id) is None

    # One interview ends: its two ports are free again and the same session now goes live.
    freed = sdp_ports(bridges[0].browser_pc.localDescription.sdp)
    await interviews.hang_up(live[0])
    bridge = await interviews.go_live(late)
    ours = relay_ports([bridges[1], bridge], [live[1], late], baseline)
    assert ours <= in_range and len(ours) == 4, (sorted(ours), low, high)
    assert freed & ours, "a port of the ended session was reused"
    assert sdp_ports(bridge.browser_pc.localDescription.sdp) <= in_range


async def test_a_range_that_runs_out_mid_exchange_fails_that_exchange_with_503(
    ranged: tuple[Interviews, tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    interviews, (low, high) = ranged
    # Ports taken between the pre-claim check and the binds (another process, another
    # exchange): the check is switched off to reach that path deterministically.
    monkeypatch.setattr(BridgeManager, "refuse_if_no_media_ports", lambda self: None)
    # Something else on the machine holds all but one port: the browser leg gets the last
    # one, the upstream leg finds none. The exchange fails fast; nothing stays bound.
    held = []
    try:
        for port in range(low, high):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            held.append(sock)
        c = await interviews.new()
        baseline = process_udp_ports()
        started = time.monotonic()
        status, body, headers = await interviews.exchange(c)
        assert time.monotonic() - started < 5.0
        assert status == 503 and body["error"]["code"] == "no_media_ports", body
        assert headers["Retry-After"] == "5"
        rows = await interviews.relay.sql(
            "SELECT state, end_reason FROM interview_sessions WHERE id = $1", c.session_id
        )
        assert (rows[0]["state"], rows[0]["end_reason"]) == ("failed", "no_media_ports")
        leftover = process_udp_ports() - baseline - sdp_ports(c.offer)
        assert leftover == set()
    finally:
        for sock in held:
            sock.close()
