"""The far ends' SRTCP on the compiled loop's sockets (relay/media/_fastloop.c, read_rtcp;
relay.media.rtcp_in), with real aiortc peers on loopback (the harness of
test_media_fastpath).

On the compiled path the loop unprotects and reads the far ends' sender and receiver
reports itself (aiortc's DTLS task never sees them) and what aiortc's handlers would set
from them (LSR, remote statistics, round-trip time) is set when the route is synced; on
the Python fast path aiortc's own path handles them: the figures must come out the same.
Feedback and BYE still reach aiortc's handlers; hostile SRTCP is refused and counted
(``tests/fastloop_asan.sh`` runs this module under AddressSanitizer)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCRemoteInboundRtpStreamStats
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
)

from relay.media import aiortc_private, fastloop, udp
from tests.integration.media_helpers import wait_until
from tests.unit.test_fastpath_hostile import relay_browser_socket, upward
from tests.unit.test_media_fastpath import Session, _audio, _stats_of, open_session

__all__ = ["open_session"]  # the fixture, shared with test_media_fastpath

_NTP_UNIX_OFFSET = 2208988800
_REPORTER = 0x5151  # the SSRC the crafted reports come from


@pytest.fixture
def compiled_path() -> Iterator[None]:
    """The compiled loop reads the media sockets made during the test (as ``media_path``'s
    compiled run; a run without the module built fails, it is never skipped)."""
    if not fastloop.built():
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    before = fastloop.enabled()
    fastloop.configure(True)
    try:
        yield
    finally:
        fastloop.configure(before)


@pytest.fixture
def attacker() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)  # sent from the event loop
    try:
        yield sock
    finally:
        sock.close()


def _rtcp_counts() -> dict[str, int]:
    """The loop's SRTCP counters as /api/stats publishes them."""
    sockets = udp.media_sockets(asyncio.get_running_loop())
    counts: dict[str, int] = sockets.snapshot()["forwarding"]["rtcp"]
    return counts


def _count_aiortc_rtcp(dtls: RTCDtlsTransport) -> list[bytes]:
    """Every decrypted compound aiortc's DTLS task hands to ``_handle_rtcp_data`` on this
    leg from now on, passed on to it."""
    calls: list[bytes] = []
    original = type(dtls)._handle_rtcp_data.__get__(dtls)

    async def counting(data: bytes) -> None:
        calls.append(data)
        await original(data)

    setattr(dtls, "_handle_rtcp_data", counting)  # noqa: B010
    return calls


def _record_handled(party: Any) -> list[Any]:
    """Every RTCP packet aiortc's ``_handle_rtcp_packet`` of ``party`` gets, passed on."""
    packets: list[Any] = []
    original = type(party)._handle_rtcp_packet.__get__(party)

    async def recording(packet: Any) -> None:
        packets.append(packet)
        await original(packet)

    setattr(party, "_handle_rtcp_packet", recording)  # noqa: B010
    return packets


def _record_stats(party: Any, name: str) -> list[Any]:
    """Every statistics entry aiortc's handlers (or the relay for them) add to ``party``'s
    report from now on (``name``: its class's mangling prefix)."""
    report = vars(party)[f"{name}__stats"]
    added: list[Any] = []
    original = report.add

    def add(stats: Any) -> None:
        added.append(stats)
        original(stats)

    report.add = add
    return added


async def _forwarding_both_ways(s: Session) -> None:
    up, down = s.bridge.browser_to_upstream, s.bridge.upstream_to_browser

    def flowing() -> bool:
        s.bridge.stats()  # brings the compiled loop's counters in
        return up.forwarded > 10 and down.forwarded > 10

    await wait_until(flowing, 10, "audio forwarded both ways")


def _browser_rtcp(s: Session) -> tuple[Any, int]:
    """The browser's SRTCP sending session, and the relay's sender SSRC on that leg."""
    session = aiortc_private.srtp_sessions(_audio(s.browser.pc).sender.transport)[1]
    return session, aiortc_private.sender_ssrc(_audio(s.bridge.browser_pc).sender)


def _ntp_seconds_now() -> int:
    return int(time.time()) + _NTP_UNIX_OFFSET


async def test_far_end_reports_reach_the_relays_receivers_and_senders(
    open_session: Any, media_path: str
) -> None:
    s: Session = await open_session()
    await _forwarding_both_ways(s)
    assert s.bridge.upstream_pc is not None
    relay_pcs = (s.bridge.browser_pc, s.bridge.upstream_pc)
    aiortc_calls = [_count_aiortc_rtcp(_audio(pc).receiver.transport) for pc in relay_pcs]
    counts_before = _rtcp_counts()
    started = time.time()
    for relay_pc, far_pc in zip(relay_pcs, (s.browser.pc, s.call.pc), strict=True):
        relay_sender, relay_receiver = _audio(relay_pc).sender, _audio(relay_pc).receiver

        async def fresh(sender: Any = relay_sender, receiver: Any = relay_receiver) -> bool:
            s.bridge.stats()
            latest = await _stats_of(sender) | await _stats_of(receiver)
            remote_in, remote_out = (
                latest.get("remote-inbound-rtp"),
                latest.get("remote-outbound-rtp"),
            )
            return (
                remote_in is not None
                and remote_in.timestamp.timestamp() >= started
                and remote_in.roundTripTime is not None
                and remote_out is not None
                and remote_out.timestamp.timestamp() >= started
            )

        deadline = time.monotonic() + 15
        while not await fresh():
            assert time.monotonic() < deadline, "no fresh far-end reports at the relay"
            await asyncio.sleep(0.05)
        latest = await _stats_of(relay_sender) | await _stats_of(relay_receiver)
        remote_in, remote_out = latest["remote-inbound-rtp"], latest["remote-outbound-rtp"]
        far_out = (await _stats_of(_audio(far_pc).sender))["outbound-rtp"]
        # The far end's sender report, as the relay's receiver took it.
        assert remote_out.ssrc == far_out.ssrc
        assert 0 < remote_out.packetsSent <= far_out.packetsSent
        assert 0 < remote_out.bytesSent <= far_out.bytesSent
        # The far end's report blocks about the relay's sender: loss, jitter, RTT.
        assert remote_in.packetsLost == 0 and remote_in.fractionLost == 0
        assert remote_in.jitter >= 0
        assert 0 <= remote_in.roundTripTime < 1.0
        # The relay's next receiver report echoes that sender report (LSR, DLSR).
        blocks = aiortc_private.receiver_report_blocks(relay_receiver, time.time())
        block = next(b for b in blocks if b.ssrc == far_out.ssrc)
        assert abs((block.lsr >> 16) - (_ntp_seconds_now() & 0xFFFF)) <= 15
        assert 0 < block.dlsr < 10 * 65536

    # The relay's quality figures: round-trip time and loss per leg, as on aiortc's path.
    quality = vars(s.bridge)["_quality"]
    await quality.refresh()
    legs = s.bridge.stats()["legs"]
    for leg in ("browser", "upstream"):
        figures = legs[leg]
        assert figures["rtt_ms"] is not None and 0 <= figures["rtt_ms"] < 1000, figures
        assert figures["remote_packets_lost"] == 0 and figures["packets_lost"] == 0, figures
        assert figures["packets_sent"] > 10, figures

    counts = _rtcp_counts()
    if media_path != "python":
        # Read in the loop: aiortc's DTLS task saw none of these compounds.
        assert aiortc_calls == [[], []]
        assert counts["read"] - counts_before["read"] >= 4  # at least two per leg
        assert counts["dropped"] == counts["to_aiortc"] == 0
    else:
        assert all(aiortc_calls)  # aiortc's own path, as before
        assert counts == {"read": 0, "to_aiortc": 0, "dropped": 0}


@dataclass(frozen=True)
class _SenderAtBlock:
    """The relay sender's round-trip state just before and after it took a block."""

    lsr: int
    lsr_time: float
    rtt_before: float | None
    rtt_after: float | None


def _record_sender_at_blocks(sender: Any, monkeypatch: pytest.MonkeyPatch) -> list[_SenderAtBlock]:
    """The sender's state around every block from ``_REPORTER`` it takes from now on: by
    aiortc's handler (the Python fast path) or by the relay for it (the compiled loop's
    reports, ``aiortc_private.note_report_block``)."""
    taken: list[_SenderAtBlock] = []
    state = vars(sender)

    def before() -> tuple[int, float, float | None]:
        return (
            state["_RTCRtpSender__lsr"],
            state["_RTCRtpSender__lsr_time"],
            state["_RTCRtpSender__rtt"],
        )

    handler = type(sender)._handle_rtcp_packet.__get__(sender)

    async def handling(packet: Any) -> None:
        seen = before() if getattr(packet, "ssrc", None) == _REPORTER else None
        await handler(packet)
        if seen is not None:
            taken.append(_SenderAtBlock(*seen, state["_RTCRtpSender__rtt"]))

    setattr(sender, "_handle_rtcp_packet", handling)  # noqa: B010
    note = aiortc_private.note_report_block

    def noting(party: Any, reporter: int, *args: Any, **kwargs: Any) -> None:
        seen = before() if party is sender and reporter == _REPORTER else None
        note(party, reporter, *args, **kwargs)
        if seen is not None:
            taken.append(_SenderAtBlock(*seen, state["_RTCRtpSender__rtt"]))

    monkeypatch.setattr(aiortc_private, "note_report_block", noting)
    return taken


async def test_a_far_ends_receiver_report_gives_the_sender_its_rtt_and_loss(
    open_session: Any, attacker: socket.socket, media_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver report (as a browser sends one) echoing the relay's last sender report:
    the relay's sender gets the loss figures and a round-trip time computed and smoothed
    as aiortc computes it, timed by the report's arrival, on both paths."""
    s: Session = await open_session()
    await _forwarding_both_ways(s)
    sender = _audio(s.bridge.browser_pc).sender
    browser_tx, relay_ssrc = _browser_rtcp(s)
    added = _record_stats(sender, "_RTCRtpSender")
    taken = _record_sender_at_blocks(sender, monkeypatch)
    aiortc_calls = _count_aiortc_rtcp(_audio(s.bridge.browser_pc).receiver.transport)
    dlsr = 0.25
    # The relay sends a new sender report about once a second, and the test's browser
    # peer reports too: either may come between reading the LSR and the crafted report's
    # arrival. The state the sender held when it took the block is recorded, and a block
    # that no longer echoed the last report is sent again with the new one.
    for _attempt in range(5):
        await wait_until(
            lambda: vars(sender)["_RTCRtpSender__lsr"] is not None, 10, "a relay sender report"
        )
        lsr = vars(sender)["_RTCRtpSender__lsr"]
        report = RtcpReceiverInfo(
            ssrc=relay_ssrc,
            fraction_lost=12,
            packets_lost=7,
            highest_sequence=4321,
            jitter=123,
            lsr=lsr,
            dlsr=int(dlsr * 65536),
        )
        compound = bytes(RtcpRrPacket(ssrc=_REPORTER, reports=[report]))
        taken_before, added_before = len(taken), len(added)
        sent_at = time.time()
        attacker.sendto(browser_tx.protect_rtcp(compound), relay_browser_socket(s))

        def ours(since: int = added_before) -> list[Any]:
            s.bridge.stats()  # the compiled loop's reports come in with its counters
            return [e for e in added[since:] if e.ssrc == _REPORTER]

        def arrived(n: int = taken_before) -> bool:
            s.bridge.stats()
            return len(taken) > n

        await wait_until(arrived, 10, "the crafted report at the relay's sender")
        seen_at = time.time()
        at_block = taken[-1]
        # Of blocks synced together only the last about an SSRC adds statistics: a
        # browser's report right after the crafted one leaves it without an entry.
        if at_block.lsr == lsr and ours():
            break
    else:
        pytest.fail("no crafted report met the sender's last report in five tries")
    [entry] = ours()
    assert isinstance(entry, RTCRemoteInboundRtpStreamStats)
    assert (entry.packetsLost, entry.fractionLost, entry.jitter) == (7, 12, 123)
    assert sent_at <= entry.timestamp.timestamp() <= seen_at
    # aiortc's estimate: arrival - LSR time - DLSR, smoothed with RTT_ALPHA (0.85).
    earliest, latest = (t - at_block.lsr_time - dlsr for t in (sent_at, seen_at))
    if at_block.rtt_before is not None:
        earliest, latest = (0.85 * at_block.rtt_before + 0.15 * t for t in (earliest, latest))
    assert at_block.rtt_after is not None
    assert earliest - 1e-6 <= at_block.rtt_after <= latest + 1e-6
    assert entry.roundTripTime == at_block.rtt_after
    # Read in the compiled loop; aiortc's DTLS task on the Python fast path.
    assert (compound in aiortc_calls) is (media_path == "python")


async def test_feedback_and_bye_reach_aiortcs_handlers(
    compiled_path: None, open_session: Any, attacker: socket.socket
) -> None:
    """Compounds with feedback (PLI, NACK) or a BYE are handed over decrypted: aiortc's
    handlers get every packet of them once; the BYE stops the receiver's decoder (never
    started on the fast path; a started one is joined off the event loop, and the
    blocking-call guard fails a join on it)."""
    s: Session = await open_session()
    await _forwarding_both_ways(s)
    browser_tx, relay_ssrc = _browser_rtcp(s)
    target = relay_browser_socket(s)
    at_sender = _record_handled(_audio(s.bridge.browser_pc).sender)
    aiortc_calls = _count_aiortc_rtcp(_audio(s.bridge.browser_pc).receiver.transport)
    before = _rtcp_counts()
    block = RtcpReceiverInfo(
        ssrc=relay_ssrc,
        fraction_lost=0,
        packets_lost=3,
        highest_sequence=1,
        jitter=5,
        lsr=0,
        dlsr=0,
    )
    pli = bytes(RtcpRrPacket(ssrc=_REPORTER, reports=[block])) + bytes(
        RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=_REPORTER, media_ssrc=relay_ssrc)
    )
    nack = bytes(
        RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=_REPORTER, media_ssrc=relay_ssrc, lost=[9])
    )
    attacker.sendto(browser_tx.protect_rtcp(pli), target)
    attacker.sendto(browser_tx.protect_rtcp(nack), target)

    def crafted() -> list[Any]:
        return [p for p in at_sender if getattr(p, "ssrc", None) == _REPORTER]

    await wait_until(lambda: len(crafted()) == 3, 10, "the crafted packets at the sender")
    kinds = [type(p) for p in crafted()]
    assert kinds == [RtcpRrPacket, RtcpPsfbPacket, RtcpRtpfbPacket]
    assert crafted()[0].reports[0].packets_lost == 3
    assert _rtcp_counts()["to_aiortc"] - before["to_aiortc"] == 2
    assert aiortc_calls == []  # never through aiortc's DTLS task (nor unprotected twice)

    receiver = _audio(s.bridge.browser_pc).receiver
    thread = aiortc_private.decoder_thread(receiver)
    # aiortc's decoder thread for the receiver, never started: the fast path gives it no
    # frame (LazyDecoderThread).
    assert thread is not None and thread.ident is None
    browser_sender = _audio(s.browser.pc).sender
    bye = bytes(RtcpByePacket(sources=[aiortc_private.sender_ssrc(browser_sender)]))
    at_receiver = _record_handled(receiver)
    attacker.sendto(browser_tx.protect_rtcp(bye), target)
    await wait_until(
        lambda: any(isinstance(p, RtcpByePacket) for p in at_receiver), 10, "the BYE handled"
    )
    await wait_until(
        lambda: aiortc_private.decoder_thread(receiver) is None, 10, "the decoder stopped"
    )
    assert thread.ident is None
    assert _rtcp_counts()["to_aiortc"] - before["to_aiortc"] == 3
    assert _rtcp_counts()["dropped"] == before["dropped"]


async def test_hostile_srtcp_is_refused_counted_and_forwarding_goes_on(
    compiled_path: None, open_session: Any, attacker: socket.socket
) -> None:
    s: Session = await open_session()
    await _forwarding_both_ways(s)
    up = s.bridge.browser_to_upstream
    sender = _audio(s.bridge.browser_pc).sender
    at_sender = _record_handled(sender)
    added = _record_stats(sender, "_RTCRtpSender")
    aiortc_calls = _count_aiortc_rtcp(_audio(s.bridge.browser_pc).receiver.transport)
    target = relay_browser_socket(s)
    browser_tx, relay_ssrc = _browser_rtcp(s)
    invalid_before = upward(s)["dropped"]["invalid"]
    before = _rtcp_counts()

    async def send(datagram: bytes) -> None:
        attacker.sendto(datagram, target)
        await asyncio.sleep(0.005)  # pacing, so each lands in its own read

    def receiver_report(lost: int) -> bytes:
        info = RtcpReceiverInfo(
            ssrc=relay_ssrc,
            fraction_lost=0,
            packets_lost=lost,
            highest_sequence=1,
            jitter=5,
            lsr=0,
            dlsr=0,
        )
        return bytes(RtcpRrPacket(ssrc=_REPORTER, reports=[info]))

    refused = 0
    # Truncated anywhere, a wrong authentication tag, a forged body.
    whole = browser_tx.protect_rtcp(receiver_report(100))
    for cut in (2, 8, 12, len(whole) // 2, len(whole) - 1):
        await send(whole[:cut])
        refused += 1
    await send(whole[:-1] + bytes((whole[-1] ^ 0xFF,)))
    await send(whole[:8] + os.urandom(len(whole) - 8))
    refused += 2
    # Oversized: more than a datagram's worth (the size aiortc's path unprotects), and
    # nearly 64 KiB.
    await send(bytes((0x80, 201)) + os.urandom(1600))
    await send(bytes((0x81, 200)) + os.urandom(65000))
    refused += 2
    # Replayed: an authentic compound three times; the replay window takes the first only.
    replayed = browser_tx.protect_rtcp(receiver_report(101))
    for _ in range(3):
        await send(replayed)
    refused += 2
    # Authentic, but lying inside: lengths beyond the compound, a report block cut short,
    # a report count the length does not hold, an impossible padding count, a bad version,
    # a BYE and feedback too short for what they claim, an SDES item longer than its
    # packet, a header cut short (aiortc's parser refuses each compound whole, and so does
    # the loop, reports before the fault included).
    garbage = [
        struct.pack("!BBHI", 0x80, 201, 9, _REPORTER) + os.urandom(12),
        struct.pack("!BBHI", 0x81, 201, 3, _REPORTER) + os.urandom(8),
        struct.pack("!BBHI", 0x9F, 201, 1, _REPORTER),
        struct.pack("!BBHI", 0xA0, 201, 1, _REPORTER),
        receiver_report(104) + struct.pack("!BBHI", 0x40, 201, 1, _REPORTER),
        struct.pack("!BBHI", 0x82, 203, 1, _REPORTER),
        struct.pack("!BBHI", 0x81, 206, 1, _REPORTER),
        struct.pack("!BBH", 0x81, 205, 2) + struct.pack("!II", _REPORTER, relay_ssrc)[:6],
        receiver_report(102) + struct.pack("!BBHIBBBB", 0x81, 202, 2, _REPORTER, 1, 10, 65, 66),
        receiver_report(103) + b"\x80\xc9",
    ]
    for body in garbage:
        await send(browser_tx.protect_rtcp(body))
    refused += len(garbage)

    def counted() -> int:
        return _rtcp_counts()["dropped"] - before["dropped"]

    await wait_until(lambda: counted() >= refused, 10, "every hostile compound refused")
    assert counted() == refused
    after = _rtcp_counts()
    assert after["read"] - before["read"] >= 1  # the replayed compound's first copy
    assert after["to_aiortc"] == before["to_aiortc"]
    assert aiortc_calls == []
    assert upward(s)["dropped"]["invalid"] == invalid_before  # RTP's counter untouched
    s.bridge.stats()
    # Of the crafted reports only the replayed one reached the sender, once.
    assert [e.packetsLost for e in added if e.ssrc == _REPORTER] == [101]
    assert not [p for p in at_sender if getattr(p, "ssrc", None) == _REPORTER]

    # The browser's audio and reports go on through the same socket.
    forwarded, read = up.forwarded, _rtcp_counts()["read"]

    def more() -> bool:
        s.bridge.stats()
        return up.forwarded > forwarded + 10 and _rtcp_counts()["read"] > read

    await wait_until(more, 10, "the browser's audio and reports again")


async def test_more_reports_than_a_route_keeps_go_to_aiortc_in_order(
    compiled_path: None,
    open_session: Any,
    attacker: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compound with more report blocks than the route has room for until its next sync
    goes to aiortc's handlers whole, after the reports queued before it: the sender takes
    every block once, in arrival order (the queued ones applied for aiortc's handler, the
    rest by it)."""
    s: Session = await open_session()
    await _forwarding_both_ways(s)
    sender = _audio(s.bridge.browser_pc).sender
    taken: list[int] = []  # packets_lost of each crafted block, as the sender takes it
    note_report_block = aiortc_private.note_report_block

    def noting(party: Any, reporter: int, block: Any, arrival: float, **kw: Any) -> None:
        if party is sender and reporter == _REPORTER:
            taken.append(block.packets_lost)
        note_report_block(party, reporter, block, arrival, **kw)

    monkeypatch.setattr(aiortc_private, "note_report_block", noting)
    original = type(sender)._handle_rtcp_packet.__get__(sender)

    async def handling(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket) and packet.ssrc == _REPORTER:
            taken.extend(r.packets_lost for r in packet.reports)
        await original(packet)

    setattr(sender, "_handle_rtcp_packet", handling)  # noqa: B010
    browser_tx, relay_ssrc = _browser_rtcp(s)
    target = relay_browser_socket(s)
    from relay.media import _fastloop

    before = _rtcp_counts()

    def blocks(first: int, count: int) -> bytes:
        reports = [
            RtcpReceiverInfo(
                ssrc=relay_ssrc,
                fraction_lost=0,
                packets_lost=first + i,
                highest_sequence=1,
                jitter=5,
                lsr=0,
                dlsr=0,
            )
            for i in range(count)
        ]
        return bytes(RtcpRrPacket(ssrc=_REPORTER, reports=reports))

    # Read in one round, before any sync: sent while Python holds the media lock, so the
    # forwarder thread reads both once it is let go, in one recvmmsg (on the event loop's
    # thread the next pump would read them together anyway).
    small = 3
    big = _fastloop.RTCP_PENDING
    datagrams = [browser_tx.protect_rtcp(blocks(500, small))]
    datagrams.append(browser_tx.protect_rtcp(blocks(600, big)))
    with fastloop.locked():
        for datagram in datagrams:
            attacker.sendto(datagram, target)
    wanted = [500 + i for i in range(small)] + [600 + i for i in range(big)]

    def seen() -> list[int]:
        s.bridge.stats()
        return taken

    await wait_until(lambda: len(seen()) >= len(wanted), 10, "every block at the sender")
    assert taken == wanted
    after = _rtcp_counts()
    assert after["read"] - before["read"] >= 1
    assert after["to_aiortc"] - before["to_aiortc"] == 1


async def test_reports_synced_together_end_as_one_by_one() -> None:
    """Several report events synced at once (``rtcp_in.apply_reports``) leave aiortc's
    receiver and sender as applying them one at a time would: the last sender report's
    statistics and LSR, every block in the round-trip time, the last block's statistics."""
    from aiortc.rtcdtlstransport import RTCCertificate
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtcrtpsender import RTCRtpSender

    from relay.media import rtcp_in

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    now = time.time()
    ntp = (_ntp_seconds_now() << 32) | 0x5555
    parties = []
    for _ in range(2):
        sender, receiver = RTCRtpSender("audio", dtls), RTCRtpReceiver("audio", dtls)
        aiortc_private.note_sender_report(sender, ntp, now - 1.0)
        parties.append((sender, receiver))
    parties[1][0]._ssrc = parties[0][0]._ssrc
    ssrc = parties[0][0]._ssrc
    lsr = (ntp >> 16) & 0xFFFFFFFF
    events = [
        (rtcp_in.EVENT_SENDER_REPORT, 0xABC, now - 0.4, ntp + (1 << 32), 0, 10, 1000),
        (rtcp_in.EVENT_REPORT_BLOCK, _REPORTER, now - 0.3, ssrc, 1, 2, 3, 4, lsr, 30000),
        (rtcp_in.EVENT_SENDER_REPORT, 0xABC, now - 0.2, ntp + (2 << 32), 0, 20, 2000),
        (rtcp_in.EVENT_REPORT_BLOCK, _REPORTER, now - 0.1, ssrc, 5, 6, 7, 8, lsr, 20000),
    ]
    routes = aiortc_private.rtcp_routes(dtls)
    results = []
    for (sender, receiver), batches in zip(parties, ([events], [[e] for e in events]), strict=True):
        routes[0][0xABC], routes[1][ssrc] = receiver, sender
        for batch in batches:
            rtcp_in.apply_reports(dtls, batch)
        inbound = next(
            v for v in vars(sender)["_RTCRtpSender__stats"].values() if v.type.startswith("remote")
        )
        outbound = next(
            v
            for v in vars(receiver)["_RTCRtpReceiver__stats"].values()
            if v.type.startswith("remote")
        )
        results.append(
            (
                vars(sender)["_RTCRtpSender__rtt"],
                vars(receiver)["_RTCRtpReceiver__lsr"],
                vars(receiver)["_RTCRtpReceiver__lsr_time"],
                (inbound.timestamp, inbound.packetsLost, inbound.jitter, inbound.roundTripTime),
                (outbound.timestamp, outbound.packetsSent, outbound.remoteTimestamp),
            )
        )
    together, one_by_one = results
    assert together == one_by_one
    assert together[3][1:3] == (6, 8) and together[4][1] == 20
    await dtls.stop()
