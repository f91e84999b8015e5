"""The relay's RTCP reports (relay.media.rtcp_reports) between two real aiortc peers on
loopback: the adopted peer reports through one shared task, one compound packet per
interval; the far end is plain aiortc and hears everything aiortc's own tasks would send."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RtcpByePacket, RtcpPacket, RtcpRrPacket, RtcpSdesPacket, RtcpSrPacket

from relay.config import IceConfig
from relay.media import rtcp_reports
from relay.media.ice import rtc_configuration
from relay.media.rtcp_reports import RtcpReports
from tests.integration.media_helpers import wait_until

INTERVAL_S = 0.3
FIRST_S = 0.2


@dataclass
class Heard:
    """Every RTCP packet a peer's DTLS transport handled, with when it arrived."""

    packets: list[tuple[float, list[Any]]] = field(default_factory=list)

    def install(self, pc: RTCPeerConnection) -> None:
        dtls = pc.getTransceivers()[0].receiver.transport
        original = dtls._handle_rtcp_data

        async def handle(data: bytes) -> None:
            self.packets.append((time.monotonic(), RtcpPacket.parse(data)))
            await original(data)

        # The test's own look at what arrives (aiortc calls it through an attribute lookup).
        setattr(dtls, "_handle_rtcp_data", handle)  # noqa: B010

    def compounds_with(self, kind: type) -> list[tuple[float, list[Any]]]:
        return [(at, ps) for at, ps in self.packets if any(isinstance(p, kind) for p in ps)]


@dataclass
class Pair:
    relay: RTCPeerConnection  # adopted by the reports under test
    far: RTCPeerConnection  # plain aiortc
    reports: RtcpReports
    heard_at_far: Heard


def _audio(pc: RTCPeerConnection) -> Any:
    return pc.getTransceivers()[0]


async def _stats(party: Any, kind: str) -> Any:
    return next((s for s in (await party.getStats()).values() if s.type == kind), None)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    config = rtc_configuration(IceConfig())
    relay, far = RTCPeerConnection(config), RTCPeerConnection(config)
    reports = RtcpReports(interval_s=INTERVAL_S, first_s=FIRST_S, jitter=lambda: 0.5)
    heard = Heard()
    try:
        relay.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        rtcp_reports.adopt(relay, reports)
        await relay.setLocalDescription(await relay.createOffer())
        await far.setRemoteDescription(relay.localDescription)
        far.addTrack(AudioStreamTrack())
        await far.setLocalDescription(await far.createAnswer())
        heard.install(far)
        await relay.setRemoteDescription(
            RTCSessionDescription(sdp=far.localDescription.sdp, type="answer")
        )
        await wait_until(
            lambda: relay.connectionState == far.connectionState == "connected", 10, "connected"
        )
        yield Pair(relay, far, reports, heard)
    finally:
        await relay.close()
        await far.close()


async def test_one_task_sends_one_compound_report_per_leg_and_interval(pair: Pair) -> None:
    sender, receiver = _audio(pair.relay).sender, _audio(pair.relay).receiver
    # aiortc's own RTCP tasks never started: the stand-ins did.
    for party, name in ((sender, "_RTCRtpSender"), (receiver, "_RTCRtpReceiver")):
        task = getattr(party, f"{name}__rtcp_task")
        assert task.get_coro().__qualname__.startswith("RtcpReports."), task
    assert pair.reports.legs == 1

    far_ssrc = _audio(pair.far).sender._ssrc
    await wait_until(
        lambda: any(
            p.reports and p.reports[0].ssrc == far_ssrc
            for _, ps in pair.heard_at_far.compounds_with(RtcpSrPacket)
            for p in ps
            if isinstance(p, RtcpSrPacket)
        ),
        5,
        "a sender report carrying the receiver's report block",
    )
    started = len(pair.heard_at_far.compounds_with(RtcpSrPacket))
    await wait_until(
        lambda: len(pair.heard_at_far.compounds_with(RtcpSrPacket)) >= started + 4,
        5,
        "four more reports",
    )
    ours = pair.heard_at_far.compounds_with(RtcpSrPacket)
    for _, packets in ours:
        # SR (with the blocks), then SDES with the CNAME: one packet, no separate RR.
        assert [type(p) for p in packets] == [RtcpSrPacket, RtcpSdesPacket]
        assert packets[0].ssrc == sender._ssrc
        assert packets[1].chunks[0].ssrc == sender._ssrc
        assert packets[1].chunks[0].items[0][0] == 1  # CNAME
    assert not pair.heard_at_far.compounds_with(RtcpRrPacket)
    gaps = [b - a for (a, _), (b, _) in zip(ours, ours[1:], strict=False)]
    # Paced by the interval: sent no sooner than it (less the coalescing window), heard
    # with the far end's own scheduling in between (a busy machine delays one report's
    # handling more than the next one's, hence the looser bound on the shortest gap).
    assert statistics.median(gaps) >= INTERVAL_S - rtcp_reports.COALESCE_S, gaps
    assert min(gaps) >= INTERVAL_S / 2, gaps
    assert pair.reports.reports_sent >= len(ours)


async def test_both_ends_measure_round_trip_time_and_counts(pair: Pair) -> None:
    relay_sender = _audio(pair.relay).sender
    far_sender, far_receiver = _audio(pair.far).sender, _audio(pair.far).receiver
    deadline = time.monotonic() + 8
    while True:
        ours = await _stats(relay_sender, "remote-inbound-rtp")
        theirs = await _stats(far_sender, "remote-inbound-rtp")
        heard = await _stats(far_receiver, "remote-outbound-rtp")
        if (
            ours is not None
            and ours.roundTripTime is not None
            and theirs is not None
            and theirs.roundTripTime is not None
            and heard is not None
            and heard.packetsSent > 0
        ):
            break
        assert time.monotonic() < deadline, (ours, theirs, heard)
        await asyncio.sleep(0.05)
    # The far end echoed our report's LSR (the relay's RTT), and the relay's blocks echoed
    # the far end's (its RTT); its receiver heard our counts.
    assert 0 <= ours.roundTripTime < 1.0
    assert 0 <= theirs.roundTripTime < 1.0
    assert theirs.packetsLost == 0
    inbound = await _stats(far_receiver, "inbound-rtp")
    assert abs(heard.packetsSent - inbound.packetsReceived) < 60


async def test_a_stopping_sender_says_bye_and_the_task_ends(pair: Pair) -> None:
    ssrc = _audio(pair.relay).sender._ssrc
    await wait_until(lambda: pair.reports.reports_sent > 0, 5, "a first report")
    task = pair.reports._task
    assert task is not None and not task.done()
    await pair.relay.close()
    await wait_until(
        lambda: any(
            isinstance(p, RtcpByePacket) and p.sources == [ssrc]
            for _, ps in pair.heard_at_far.packets
            for p in ps
        ),
        5,
        "the BYE",
    )
    assert pair.reports.legs == 0
    await asyncio.wait_for(task, 2)


def test_the_default_pace_is_an_audio_streams() -> None:
    # libwebrtc reports audio every 5 s; RFC 3550 randomises each interval over 0.5-1.5x.
    reports = RtcpReports(jitter=lambda: 0.0)
    assert reports.interval_s == 5.0
    assert reports._randomised(reports.interval_s) == 2.5
    reports = RtcpReports(jitter=lambda: 0.999)
    assert 7.49 < reports._randomised(reports.interval_s) < 7.5


@dataclass(eq=False)
class FakeDtls:
    """A leg's transport, for the schedule alone (no sends are made)."""

    index: int


@dataclass(eq=False)
class FakeParty:
    """A sender or receiver, for the schedule alone: its transport is its leg."""

    transport: FakeDtls


async def test_many_legs_each_report_on_their_own_schedule_and_left_ones_stop() -> None:
    """The schedule alone (each leg's send recorded instead of made): 200 legs, each
    reporting once per interval from its own start; legs that leave send no more and their
    entries do not pile up."""
    reports = RtcpReports(interval_s=0.2, first_s=0.1, jitter=lambda: 0.5)
    sent: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    async def record(leg: Any) -> None:
        sent.append((leg.dtls.index, loop.time()))

    reports._send = record  # type: ignore[method-assign]

    parties = [FakeParty(FakeDtls(i)) for i in range(200)]
    started = loop.time()
    for party in parties:
        reports._join(party)  # type: ignore[arg-type]
    await wait_until(lambda: len({i for i, _ in sent}) == 200, 5, "every leg's first report")
    left = [weakref.ref(reports._legs[party.transport]) for party in parties[:100]]
    for party in parties[:100]:
        reports._leave(party)  # type: ignore[arg-type]
    left_at = loop.time()
    gc.collect()
    # Their entries wait in the schedule until due, but do not keep them (nor their
    # transports, nor the peers) alive meanwhile.
    assert all(ref() is None for ref in left)

    def reports_since_leaving(index: int) -> int:
        return sum(1 for i, at in sent if i == index and at > left_at)

    await wait_until(
        lambda: all(reports_since_leaving(i) >= 4 for i in range(100, 200)),
        10,
        "four more reports from each staying leg",
    )
    by_leg: dict[int, list[float]] = {}
    for index, at in sent:
        by_leg.setdefault(index, []).append(at)
    # The left half sent nothing after leaving (a send already under way may finish).
    assert all(at <= left_at for i, ats in by_leg.items() if i < 100 for at in ats)
    every_gap: list[float] = []
    for index in range(100, 200):
        ats = by_leg[index]
        # The first after first_s (less the coalescing: reports due that close go together).
        assert ats[0] - started >= 0.1 - rtcp_reports.COALESCE_S - 0.01
        gaps = [b - a for a, b in zip(ats, ats[1:], strict=False)]
        # Never early (less the coalescing).
        assert min(gaps) >= 0.2 - rtcp_reports.COALESCE_S - 0.01, (index, gaps)
        every_gap += gaps
    # About the interval as a rule: a loaded machine may hold the loop now and then (a
    # stall lengthens one gap of each leg), so the median of every gap is bounded, not each.
    assert sorted(every_gap)[len(every_gap) // 2] <= 0.2 + 0.1, sorted(every_gap)
    assert len(reports._schedule) <= 100  # only the staying legs' next reports
    for party in parties[100:]:
        reports._leave(party)  # type: ignore[arg-type]
    assert reports._task is not None
    await asyncio.wait_for(reports._task, 5)  # no leg left: the task ends
    assert not reports._schedule  # and keeps no left leg (nor its transport) alive


async def test_a_leg_leaving_or_coming_back_during_a_send_is_scheduled_as_itself() -> None:
    """Sends await (the datagram goes out through aiortc): a leg that leaves meanwhile gets
    no report from the same wake-up, and one that comes back on the same transport is a
    new leg on its own schedule, not the old one's."""
    reports = RtcpReports(interval_s=0.2, first_s=0.1, jitter=lambda: 0.5)
    sent: list[tuple[int, Any]] = []
    release = asyncio.Event()

    first, second = FakeParty(FakeDtls(0)), FakeParty(FakeDtls(1))

    async def record(leg: Any) -> None:
        sent.append((leg.dtls.index, leg))
        if leg.dtls.index == 0 and len(sent) == 1:
            # While the first leg's report is on its way: the second leg leaves, and
            # the first leaves and comes back (a new _Leg for the same transport).
            reports._leave(second)  # type: ignore[arg-type]
            reports._leave(first)  # type: ignore[arg-type]
            reports._join(first)  # type: ignore[arg-type]
            await release.wait()

    reports._send = record  # type: ignore[method-assign]
    reports._join(first)  # type: ignore[arg-type]
    reports._join(second)  # type: ignore[arg-type]
    await wait_until(lambda: len(sent) == 1, 5, "the first send under way")
    release.set()
    await wait_until(lambda: len(sent) >= 3, 5, "the re-joined leg's reports")
    assert all(index == 0 for index, _ in sent)  # the second leg left before its turn
    old_leg, new_leg = sent[0][1], sent[1][1]
    assert new_leg is not old_leg and all(leg is new_leg for _, leg in sent[1:])
    assert len(reports._schedule) == 1  # the new leg's next report only
    reports._leave(first)  # type: ignore[arg-type]
    assert reports._task is not None
    await asyncio.wait_for(reports._task, 5)
    assert not reports._schedule
