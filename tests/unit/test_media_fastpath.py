"""The forwarding fast path with real aiortc peers on loopback: a browser peer, the bridge,
and an in-process upstream peer (inside a private network namespace, see tests/run.sh).

Every test runs once per forwarding path (the ``media_path`` fixture): the compiled loop
(relay.media._fastloop) and the Python fast path must behave the same."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from relay.config import EventsConfig, IceConfig, MediaConfig, SessionConfig
from relay.media import aiortc_private, fastpath, rtcp_reports
from relay.media.bridge import Bridge, BridgeSettings
from relay.media.fastpath import FastOpusForwarder
from relay.media.forwarding import OpusPassthrough
from relay.media.metrics import MediaMetrics
from relay.media.sdp import AUDIO_LEVEL_EXTENSION, MID_EXTENSION, RtpLeg, rtp_leg
from relay.media.tap import TappedPacket
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import MintedSession
from tests.integration.media_helpers import (
    BrowserPeer,
    LoopbackUpstream,
    encode_opus,
    speech_like,
    wait_until,
)
from tests.unit.test_media_bridge import RecordingHooks

if TYPE_CHECKING:
    from relay.recording.recorder import SessionRecorder

# Each path, and the compiled loop on the event loop's thread too (media.forwarding_thread).
pytestmark = [
    pytest.mark.usefixtures("media_path"),
    pytest.mark.media_paths("compiled", "compiled-inline", "python"),
]

SPEECH = encode_opus(speech_like(1.2))
REPLY = encode_opus(speech_like(1.2, f0=220.0))
CRAFTED = encode_opus(speech_like(0.5, f0=320.0))


def _audio(pc: RTCPeerConnection) -> Any:
    return next(t for t in pc.getTransceivers() if t.kind == "audio")


@dataclass
class Capture:
    """Every RTP packet a peer's receiver gets (as aiortc parsed it), then aiortc's path."""

    packets: list[RtpPacket] = field(default_factory=list)

    def install(self, receiver: RTCRtpReceiver) -> None:
        original = aiortc_private.original_rtp_handler(receiver)

        async def capture(packet: RtpPacket, arrival_time_ms: int) -> None:
            self.packets.append(packet)
            await original(packet, arrival_time_ms)

        aiortc_private.install_rtp_hook(receiver, capture)

    @property
    def payloads(self) -> list[bytes]:
        return [bytes(p.payload) for p in self.packets if p.payload]


@dataclass
class Taps:
    packets: list[TappedPacket] = field(default_factory=list)

    def on_packet(self, packet: TappedPacket) -> None:
        self.packets.append(packet)


@dataclass
class TapRecorder:
    """Stands in for the session recorder: the bridge hands each direction's forwarder
    the tap of its leg at construction (audio_wiring's DirectionPlan.tap)."""

    taps: dict[str, Taps] = field(
        default_factory=lambda: {"candidate": Taps(), "interviewer": Taps()}
    )

    def tap(self, leg: str) -> Taps:
        return self.taps[leg]

    def stop(self, connected_at: float | None, ended_at: float | None) -> None:
        pass


@dataclass
class Session:
    bridge: Bridge
    browser: BrowserPeer
    upstream: LoopbackUpstream
    at_browser: Capture

    @property
    def call(self) -> Any:
        return self.upstream.calls[0]


@pytest.fixture
async def open_session() -> AsyncIterator[Any]:
    made: list[Session] = []

    async def factory(*, fast_path: bool = True, recorder: TapRecorder | None = None) -> Session:
        # Both ends start with encoded silence; tests play audio once both legs are up
        # (a far end drops what arrives before its own receiver is set up).
        upstream = LoopbackUpstream(reply_opus=())
        settings = BridgeSettings(
            session=SessionConfig(connect_timeout_s=5.0, idle_media_timeout_s=10.0),
            media=MediaConfig(queue_max_frames=50, fast_path=fast_path),
            events=EventsConfig(),
            ice=IceConfig(),
        )
        bridge = Bridge(
            session_id="is_fast",
            request_id="req_fast",
            settings=settings,
            upstream=upstream,
            minted=MintedSession(secret="ek_test", expires_at=0, model="m"),
            max_duration_s=60,
            metrics=MediaMetrics(MetricsRegistry()),
            hooks=RecordingHooks(),
        )
        # Set after construction: no upstream-event observer (these tests tap audio only).
        bridge.recorder = cast("SessionRecorder | None", recorder)
        browser = BrowserPeer(payloads=())
        at_browser = Capture()
        session = Session(bridge, browser, upstream, at_browser)
        made.append(session)
        answer = await bridge.start(await browser.offer())
        at_browser.install(_audio(browser.pc).receiver)
        await browser.accept(answer)
        await browser.wait_connected()
        await wait_until(lambda: bridge.state == "active", 10, "bridge active")
        return session

    yield factory
    for s in made:
        await s.browser.close()
        await s.bridge.close("test_over")
        await s.upstream.close()


def _contiguous(received: list[bytes], sent: list[bytes]) -> bool:
    if sent[0] not in received:
        return False
    first = received.index(sent[0])
    return received[first : first + len(sent)] == sent


def _seq_steps(packets: list[RtpPacket]) -> list[int]:
    return [
        (b.sequence_number - a.sequence_number) & 0xFFFF
        for a, b in zip(packets, packets[1:], strict=False)
    ]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiortc_path"])
async def test_audio_both_ways_byte_identical(
    open_session: Any, fast_path: bool, media_path: str
) -> None:
    recorder = TapRecorder()
    s: Session = await open_session(fast_path=fast_path, recorder=recorder)
    kind = FastOpusForwarder if fast_path else OpusPassthrough
    assert all(isinstance(f, kind) for f in s.bridge.forwarders)
    taps = [recorder.taps["candidate"], recorder.taps["interviewer"]]
    assert s.browser.mic is not None and s.call.mouth is not None
    await wait_until(lambda: bool(s.browser.speaker.levels and s.call.speaker.levels), 10, "up")
    s.browser.mic.play(SPEECH)
    s.call.mouth.play(REPLY)

    await wait_until(lambda: _contiguous(s.call.payloads, SPEECH), 10, "speech at upstream")
    await wait_until(lambda: _contiguous(s.at_browser.payloads, REPLY), 10, "reply at browser")
    await wait_until(lambda: s.call.speaker.loud_frames() > 20, 10, "speech decodes upstream")
    await wait_until(lambda: s.browser.speaker.loud_frames() > 20, 10, "reply decodes at browser")

    stats = s.bridge.stats()
    for direction in ("browser_to_upstream", "upstream_to_browser"):
        assert stats[direction]["mode"] == "passthrough"
        assert stats[direction]["fast_path"] is fast_path
        # The compiled loop carries the fast path's packets when it runs (not aiortc's).
        assert stats[direction]["compiled"] is (fast_path and media_path != "python")
        assert stats[direction]["frames_decoded"] == 0
        assert stats[direction]["forwarded"] > 50
    # The far ends see one stream each: the relay senders' SSRCs and payload types.
    assert s.bridge.upstream_pc is not None
    up_sender = _audio(s.bridge.upstream_pc).sender
    down_sender = _audio(s.bridge.browser_pc).sender
    assert {p.ssrc for p in s.call.packets} == {aiortc_private.sender_ssrc(up_sender)}
    assert {p.ssrc for p in s.at_browser.packets} == {aiortc_private.sender_ssrc(down_sender)}
    assert set(_seq_steps(s.call.packets)) == {1}
    assert set(_seq_steps(s.at_browser.packets)) == {1}
    # The mid header extension is the receiving side's own (what aiortc routes by).
    assert {p.extensions.mid for p in s.call.packets} == {_audio(s.call.pc).mid}
    # Both taps saw every packet they forwarded, payload and all.
    up_tap, down_tap = taps
    assert _contiguous([p.payload for p in up_tap.packets], SPEECH)
    assert _contiguous([p.payload for p in down_tap.packets], REPLY)
    assert {p.codec for p in up_tap.packets + down_tap.packets} == {"opus"}


def _craft(
    leg: RtpLeg, ssrc: int, seq: int, ts: int, payload: bytes, *, level: int, pad: int = 0
) -> bytes:
    """An RTP packet as a browser might send it: mid, audio level, a transport-wide
    sequence number (an id never negotiated with the relay), optional padding."""
    mid_id, level_id = leg.extensions[MID_EXTENSION], leg.extensions[AUDIO_LEVEL_EXTENSION]
    unknown = max(leg.extensions.values()) + 1
    mid = (leg.mid or "0").encode()
    elements = bytes(((mid_id << 4) | (len(mid) - 1),)) + mid
    elements += bytes(((level_id << 4) | 0, 0x80 | level))  # voice activity + level
    elements += bytes(((unknown << 4) | 1,)) + struct.pack("!H", seq & 0xFFFF)  # 2 bytes
    elements += b"\x00" * (-len(elements) % 4)
    ext = struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
    flags = 0x90 | (0x20 if pad else 0)
    assert leg.payload_type is not None
    pt = leg.payload_type
    header = struct.pack("!BBHII", flags, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    padding = b"\x00" * (pad - 1) + bytes((pad,)) if pad else b""
    return header + ext + payload + padding


async def test_rewrites_across_ssrc_change_duplicates_and_padding(open_session: Any) -> None:
    s: Session = await open_session()
    up = s.bridge.browser_to_upstream
    # The browser's microphone goes quiet; the test then plays a browser whose source
    # changes SSRC (and sequence/timestamp origin) mid-call, wraps its sequence number,
    # repeats a packet, pads one and sends header extensions the upstream never agreed to.
    assert s.browser.mic is not None
    await wait_until(lambda: up.forwarded > 10, 10, "microphone audio forwarded")
    s.browser.mic.pause()
    await wait_until(
        lambda: up.last_packet_at is not None and time.monotonic() - up.last_packet_at > 0.1,
        5,
        "microphone quiet for five frames",
    )
    dtls = _audio(s.browser.pc).sender.transport
    browser_leg = rtp_leg(s.browser.pc.localDescription.sdp)
    upstream_leg = rtp_leg(s.call.pc.localDescription.sdp)
    plan: list[tuple[int, int, int, int, int]] = []  # ssrc, seq, ts, payload index, pad
    for i in range(10):
        plan.append((0x1111, 65530 + i, 1000 + 960 * i, i, 4 if i == 3 else 0))
    plan.insert(6, plan[5])  # a network duplicate
    for i in range(10):
        plan.append((0x2222, 100 + i, 5_000_000 + 960 * i, 10 + i, 0))
    for ssrc, seq, ts, index, pad in plan:
        packet = _craft(browser_leg, ssrc, seq, ts, CRAFTED[index], level=index, pad=pad)
        await aiortc_private.send_rtp_datagram(dtls, packet)
        await asyncio.sleep(0.02)  # pacing, as a browser sends

    wanted = CRAFTED[:20]
    await wait_until(lambda: _contiguous(s.call.payloads, wanted), 10, "crafted audio upstream")
    got = [p for p in s.call.packets if bytes(p.payload) in set(wanted)]
    assert [bytes(p.payload) for p in got] == wanted  # duplicate dropped, padding stripped
    # One outgoing stream: the relay's SSRC, sequence numbers continuous through the
    # wrap and through the SSRC change, timestamps moving forward by whole frames.
    assert s.bridge.upstream_pc is not None
    relay_ssrc = aiortc_private.sender_ssrc(_audio(s.bridge.upstream_pc).sender)
    assert {p.ssrc for p in got} == {relay_ssrc}
    start = s.call.packets.index(got[0])
    assert set(_seq_steps(s.call.packets[start:])) == {1}
    ts_steps = [
        (b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(got, got[1:], strict=False)
    ]
    assert all(step % 960 == 0 and 960 <= step < 960 * 50 for step in ts_steps), ts_steps
    assert ts_steps[:9] == [960] * 9 and ts_steps[10:] == [960] * 9
    # Only what the upstream negotiated arrives: its mid, the audio level carried over.
    mid = _audio(s.call.pc).mid
    assert {p.extensions.mid for p in got} == {mid}
    assert [p.extensions.audio_level for p in got] == [(True, i) for i in range(20)]
    assert {p.payload_type for p in got} == {upstream_leg.payload_type}
    # The repeated packet never got past SRTP's replay protection at the relay.
    assert up.dropped_duplicate == 1 and up.dropped_invalid == 0 and up.dropped_late == 0
    assert up.ssrc_changes >= 2


async def _stats_of(peer: Any) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for part in (await peer.getStats()).values():
        report.setdefault(part.type, part)
    return report


async def test_rtcp_reports_flow_both_ways_on_both_legs(open_session: Any) -> None:
    s: Session = await open_session()
    # Each far end's sender hears receiver reports from the relay (round-trip time),
    # and each far end's receiver hears the relay's sender reports with real counts.
    for pc in (s.call.pc, s.browser.pc):
        sender, receiver = _audio(pc).sender, _audio(pc).receiver
        latest: dict[str, Any] = {}
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            latest.update(await _stats_of(sender))
            latest.update(await _stats_of(receiver))
            remote_in = latest.get("remote-inbound-rtp")
            remote_out = latest.get("remote-outbound-rtp")
            if (
                remote_in is not None
                and remote_in.roundTripTime is not None
                and remote_out is not None
                and remote_out.packetsSent > 0
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, f"no RTCP on {pc}: {latest}"
            await asyncio.sleep(0.1)
        assert 0 <= remote_in.roundTripTime < 1.0
        assert remote_in.packetsLost == 0
        inbound = latest["inbound-rtp"]
        # The relay's sender report counts what it had sent when it left (reports go out
        # every few seconds): the far end had received about that then, and 50 packets a
        # second since.
        age_s = (inbound.timestamp - remote_out.timestamp).total_seconds()
        behind = inbound.packetsReceived - remote_out.packetsSent
        assert -5 <= behind <= 50 * age_s + 60, (age_s, behind)
        assert remote_out.bytesSent > 0


async def test_the_relays_legs_report_through_the_shared_rtcp_reports(open_session: Any) -> None:
    s: Session = await open_session()
    assert s.bridge.upstream_pc is not None
    reports = rtcp_reports.reports_of_loop()
    for pc in (s.bridge.browser_pc, s.bridge.upstream_pc):
        sender, receiver = _audio(pc).sender, _audio(pc).receiver
        for party, name in ((sender, "_RTCRtpSender"), (receiver, "_RTCRtpReceiver")):
            task = getattr(party, f"{name}__rtcp_task")
            assert task.get_coro().__qualname__.startswith("RtcpReports."), task
    # Both legs, each one entry (its sender and receiver share the bundled transport).
    assert reports.legs == 2
    # The far ends' own peers (plain aiortc) keep their tasks.
    far = _audio(s.browser.pc).sender
    assert far._RTCRtpSender__rtcp_task.get_coro().__qualname__ == ("RTCRtpSender._run_rtcp")


async def _reply_before_the_browser_leg(
    fast_path: bool, monkeypatch: pytest.MonkeyPatch, *, held_max_age_s: float
) -> tuple[Session, list[bytes], bytes]:
    """A session whose upstream speaks REPLY as soon as its own leg is up, while the
    browser still waits for its answer; the upstream pauses once the relay has dropped a
    few packets for want of a browser leg. Returns the session, the payloads the upstream
    sent, and the newest of them (the one the relay holds)."""
    monkeypatch.setattr(fastpath, "HELD_PACKET_MAX_AGE_S", held_max_age_s)
    upstream = LoopbackUpstream(reply_opus=REPLY)
    recorder = TapRecorder()
    bridge = Bridge(
        session_id="is_held",
        request_id="req_held",
        settings=BridgeSettings(
            session=SessionConfig(connect_timeout_s=10.0, idle_media_timeout_s=10.0),
            media=MediaConfig(queue_max_frames=50, fast_path=fast_path),
            events=EventsConfig(),
            ice=IceConfig(),
        ),
        upstream=upstream,
        minted=MintedSession(secret="ek_test", expires_at=0, model="m"),
        max_duration_s=60,
        metrics=MediaMetrics(MetricsRegistry()),
        hooks=RecordingHooks(),
    )
    bridge.recorder = cast("SessionRecorder | None", recorder)
    bridge.to_browser.held_max_age_s = held_max_age_s
    browser = BrowserPeer(payloads=())
    s = Session(bridge, browser, upstream, Capture())
    answer = await bridge.start(await browser.offer())
    s.at_browser.install(_audio(browser.pc).receiver)

    def dropped() -> int:
        return int(bridge.stats()["upstream_to_browser"]["dropped"]["before_connect"])

    await wait_until(lambda: dropped() >= 3, 10, "reply packets dropped before the browser leg")
    mouth = s.call.mouth
    assert mouth is not None
    mouth.pause()
    await wait_until(lambda: mouth.blocked, 10, "the upstream paused")
    sent = list(mouth.sent)
    tapped = recorder.taps["interviewer"].packets
    await wait_until(lambda: bool(tapped) and tapped[-1].payload == sent[-1], 10, "last at relay")
    assert s.at_browser.packets == []
    await browser.accept(answer)
    await browser.wait_connected()
    await wait_until(lambda: bridge.state == "active", 10, "bridge active")
    return s, sent, sent[-1]


async def _close(s: Session) -> None:
    await s.browser.close()
    await s.bridge.close("test_over")
    await s.upstream.close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiortc_path"])
async def test_the_newest_reply_packet_waits_for_the_browser_leg(
    fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first reply audio reaches the browser the moment its leg is up: the newest
    packet dropped before then is sent at once, not lost (while still fresh)."""
    s, sent, newest = await _reply_before_the_browser_leg(
        fast_path, monkeypatch, held_max_age_s=60.0
    )
    try:
        # The upstream is paused: only the held packet can arrive.
        await wait_until(lambda: bool(s.at_browser.payloads), 10, "the held packet at the browser")
        assert s.at_browser.payloads == [newest]
        direction = s.bridge.stats()["upstream_to_browser"]
        if fast_path:  # (aiortc's path counts what it queues, dropped or not)
            assert direction["forwarded"] == 1
        assert s.call.mouth is not None
        s.call.mouth.resume()
        await wait_until(lambda: len(s.at_browser.payloads) > 10, 10, "the reply goes on")
        rest = REPLY[len(sent) :]
        assert s.at_browser.payloads[: 1 + 10] == [newest, *rest[:10]]
        assert set(_seq_steps(s.at_browser.packets)) == {1}
    finally:
        await _close(s)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiortc_path"])
async def test_a_stale_held_packet_is_dropped(
    fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, sent, newest = await _reply_before_the_browser_leg(
        fast_path, monkeypatch, held_max_age_s=0.0
    )
    try:
        assert s.call.mouth is not None
        s.call.mouth.resume()
        await wait_until(lambda: len(s.at_browser.payloads) > 3, 10, "the reply goes on")
        # The first packet is the one after the pause: the held one was too old.
        assert newest not in s.at_browser.payloads
        assert s.at_browser.payloads[0] == REPLY[len(sent)]
    finally:
        await _close(s)


async def test_loss_before_the_relay_stays_visible_after_it_and_in_its_reports(
    open_session: Any,
) -> None:
    """Packets lost between the browser and the relay show as gaps in the relay's own
    sequence numbers (not renumbered away) and as loss in its receiver statistics, which
    its receiver reports to the browser are made of."""
    s: Session = await open_session()
    up = s.bridge.browser_to_upstream
    assert s.browser.mic is not None
    await wait_until(lambda: up.forwarded > 10, 10, "microphone audio forwarded")
    s.browser.mic.pause()
    await wait_until(
        lambda: up.last_packet_at is not None and time.monotonic() - up.last_packet_at > 0.1,
        5,
        "microphone quiet",
    )
    dtls = _audio(s.browser.pc).sender.transport
    leg = rtp_leg(s.browser.pc.localDescription.sdp)
    sent: list[bytes] = []
    for i in range(24):
        payload = CRAFTED[i]
        if i % 5 == 4:
            continue  # lost on the way to the relay
        sent.append(payload)
        packet = _craft(leg, 0x3333, 500 + i, 7000 + 960 * i, payload, level=3)
        await aiortc_private.send_rtp_datagram(dtls, packet)
        await asyncio.sleep(0.02)  # pacing, as a browser sends
    await wait_until(lambda: _contiguous(s.call.payloads, [sent[-1]]), 10, "the last packet")
    got = [p for p in s.call.packets if bytes(p.payload) in set(sent)]
    assert [bytes(p.payload) for p in got] == sent
    # Four gaps of one packet each, in the relay's own numbering.
    assert sorted(_seq_steps(got)) == [1] * (len(got) - 1 - 4) + [2] * 4
    s.bridge.stats()  # brings the counters up to date (the compiled loop batches them)
    receiver = _audio(s.bridge.browser_pc).receiver
    stats = aiortc_private.receiver_statistics(receiver, 0x3333, 48000)
    assert stats.packets_received == len(sent) and stats.packets_lost == 4
