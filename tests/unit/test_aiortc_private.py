"""Guard: the private aiortc names relay.media.aiortc_private relies on still exist.

If this fails after an aiortc upgrade, do not just bump the pin: re-read aiortc's
RTCRtpReceiver/RTCRtpSender and docs/media.md, adapt aiortc_private, and re-run the
media tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiortc
import aiortc.rtp
import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender

from relay.media import aiortc_private
from relay.media.audio_level import compute_audio_level_dbov
from relay.media.tracks import BoundedQueueTrack
from tests.integration.media_helpers import (
    BrowserPeer,
    LoopbackUpstream,
    encode_opus,
    speech_like,
    wait_until,
)


def test_aiortc_is_the_pinned_version() -> None:
    assert aiortc.__version__ == aiortc_private.PINNED_AIORTC_VERSION == "1.16.0"
    assert aiortc_private.aiortc_version() == "1.16.0"


def test_receiver_internals_exist() -> None:
    source = inspect.getsource(RTCRtpReceiver)
    for name in ("__remote_streams", "__decoder_thread", "__decoder_queue"):
        assert f"self.{name}" in source, name
    assert inspect.iscoroutinefunction(RTCRtpReceiver._handle_rtp_packet)
    assert list(inspect.signature(RTCRtpReceiver._handle_rtp_packet).parameters) == [
        "self",
        "packet",
        "arrival_time_ms",
    ]
    # The transport calls it through an attribute lookup, so an instance hook wins.
    from aiortc import rtcdtlstransport

    assert "receiver._handle_rtp_packet(packet" in inspect.getsource(rtcdtlstransport)
    # receive() starts the decoder thread on the queue; stop paths join it.
    assert "decoder_worker" in inspect.getsource(RTCRtpReceiver.receive)
    assert "self.__decoder_thread.join()" in source
    # LazyDecoderThread: receive() makes it through its module's ``threading`` with these
    # keywords and starts it at once; the worker takes (loop, input, output, error) and
    # ends the track with None on its output when None comes in.
    from aiortc import rtcrtpreceiver

    receive = inspect.getsource(RTCRtpReceiver.receive)
    assert "self.__decoder_thread = threading.Thread(" in receive
    assert "target=decoder_worker," in receive and "self.__decoder_thread.start()" in receive
    assert list(inspect.signature(rtcrtpreceiver.decoder_worker).parameters) == [
        "loop",
        "input_q",
        "output_q",
        "decode_error",
    ]
    worker = inspect.getsource(rtcrtpreceiver.decoder_worker)
    assert "asyncio.run_coroutine_threadsafe(output_q.put(None), loop)" in worker
    for name in ("add", "packets_lost", "jitter", "fraction_lost"):
        assert hasattr(StreamStatistics, name), name


def test_sctp_internals_exist() -> None:
    """sctp_unacknowledged: a data channel's message leaves ``bufferedAmount`` once handed
    to the association's outbound queue (it may wait there for the congestion window), and
    a chunk sent stays in the sent queue until acknowledged."""
    from aiortc.rtcsctptransport import RTCSctpTransport

    flush = inspect.getsource(RTCSctpTransport._data_channel_flush)
    assert "while self._data_channel_queue and not self._outbound_queue:" in flush
    assert flush.index("await self._send(") < flush.index("channel._addBufferedAmount(-len(")
    transmit = inspect.getsource(RTCSctpTransport._transmit)
    assert "while self._outbound_queue and self._flight_size < cwnd:" in transmit
    assert "self._sent_queue.append(chunk)" in transmit
    assert "self._sent_queue.popleft()" in inspect.getsource(RTCSctpTransport._receive_sack_chunk)
    # What closing does with whatever was not acknowledged: an ABORT.
    assert "await self._abort()" in inspect.getsource(RTCSctpTransport.stop)


def test_sender_internals_exist() -> None:
    init = inspect.getsource(RTCRtpSender.__init__)
    assert "self.__rtp_history: dict[int, RtpPacket] = {}" in init
    run = inspect.getsource(RTCRtpSender._run_rtp)
    assert "self.__rtp_history[packet.sequence_number % RTP_HISTORY_SIZE] = (" in run
    assert "self.__rtp_history.get(" in inspect.getsource(RTCRtpSender._retransmit)
    # The history only serves NACKs, which aiortc negotiates for no audio codec.
    from aiortc.codecs import CODECS

    assert all(not codec.rtcpFeedback for codec in CODECS["audio"])
    source = inspect.getsource(RTCRtpSender._next_encoded_frame)
    # Packets (not Frames) are packed as they are: the passthrough's sender side.
    assert "self.__encoder.pack(data)" in source
    assert "rtp.compute_audio_level_dbov(data)" in source
    assert callable(aiortc.rtp.compute_audio_level_dbov)


async def test_private_accessors_work_on_a_live_receiver() -> None:
    upstream = LoopbackUpstream()
    browser = BrowserPeer(payloads=encode_opus(speech_like(0.5)))
    pc = RTCPeerConnection()
    try:
        await upstream.exchange_sdp(
            await upstream.mint(request_id="r"), await browser.offer(), request_id="r"
        )
        call = upstream.calls[0]
        await browser.accept(str(call.pc.localDescription.sdp))
        await browser.wait_connected()
        receiver = call.pc.getTransceivers()[0].receiver
        # The upstream decodes what it hears: its decoder thread starts with the first frame.
        await wait_until(
            lambda: (t := aiortc_private.decoder_thread(receiver)) is not None and t.is_alive(),
            5,
            "the decoder thread started",
        )
        thread = aiortc_private.decoder_thread(receiver)
        assert isinstance(thread, threading.Thread) and thread.is_alive()
        assert isinstance(vars(receiver)["_RTCRtpReceiver__decoder_queue"], queue.Queue)
        assert aiortc_private.decoder_backlog(receiver) >= 0
        stats = aiortc_private.receiver_statistics(receiver, 1234, 48000)
        assert isinstance(stats, StreamStatistics)
        assert aiortc_private.receiver_statistics(receiver, 1234, 48000) is stats

        detached = aiortc_private.detach_decoder_thread(receiver)
        assert detached is thread
        await asyncio.to_thread(detached.join, 5)
        assert not detached.is_alive()
        assert aiortc_private.decoder_thread(receiver) is None
    finally:
        await browser.close()
        await upstream.close()
        await pc.close()


async def test_retransmission_history_can_be_disabled() -> None:
    pc = RTCPeerConnection()
    sender = pc.addTransceiver("audio").sender
    aiortc_private.disable_retransmission_history(sender)
    history = vars(sender)["_RTCRtpSender__rtp_history"]
    history[5] = object()
    assert history.get(5) is None and len(history) == 0
    await pc.close()


async def test_rtp_hook_shadows_and_restores_the_method() -> None:
    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("audio").receiver

    async def hook(packet: aiortc.rtp.RtpPacket, arrival_time_ms: int) -> None:
        return None

    aiortc_private.install_rtp_hook(receiver, hook)
    assert receiver._handle_rtp_packet is hook
    aiortc_private.remove_rtp_hook(receiver)
    assert "_handle_rtp_packet" not in vars(receiver)
    # The class method applies again, and is what a hook delegates to.
    assert aiortc_private.original_rtp_handler(receiver) == receiver._handle_rtp_packet
    await pc.close()


LevelFunction = Callable[[av.AudioFrame], int]


@pytest.fixture
def restore_audio_level() -> Iterator[None]:
    current: LevelFunction = aiortc.rtp.compute_audio_level_dbov
    yield
    setattr(aiortc.rtp, "compute_audio_level_dbov", current)  # noqa: B010


@pytest.mark.usefixtures("restore_audio_level")
def test_fast_audio_level_patch_replaces_the_module_function() -> None:
    setattr(aiortc.rtp, "compute_audio_level_dbov", aiortc_private.AIORTC_AUDIO_LEVEL)  # noqa: B010
    assert not aiortc_private.fast_audio_level_installed()
    aiortc_private.install_fast_audio_level()
    assert aiortc.rtp.compute_audio_level_dbov is compute_audio_level_dbov
    assert aiortc_private.fast_audio_level_installed()


def test_dtls_transport_builds_its_srtp_sessions_from_its_modules_policy() -> None:
    """``install_srtp_replay_window`` replaces the module's ``Policy``: aiortc must still
    look it up there at call time, for both sessions, with the window it sets."""
    import aiortc.rtcdtlstransport as dtls_module

    source = inspect.getsource(dtls_module.RTCDtlsTransport._setup_srtp)
    assert source.count("= Policy(") == 2
    assert source.count("window_size = 1024") == 2
    assert "from pylibsrtp import Policy, Session" in inspect.getsource(dtls_module)


def _rtp(seq: int) -> bytes:
    return (
        bytes([0x80, 111])
        + seq.to_bytes(2, "big")
        + (seq * 960).to_bytes(4, "big")
        + (b"\x00\x00\x30\x39" + b"\x55" * 60)
    )


def test_the_sessions_aiortc_builds_keep_a_128_packet_replay_window() -> None:
    """With the window installed, what aiortc's ``_setup_srtp`` does (``Policy`` from its
    module, ``window_size = 1024``) gives a session that takes a packet 100 behind the
    newest and refuses one 200 behind; with pylibsrtp's own ``Policy``, both pass."""
    import aiortc.rtcdtlstransport as dtls_module
    import pylibsrtp

    original = getattr(dtls_module, "Policy")  # noqa: B009 (aiortc's import, not its export)
    try:
        assert aiortc_private.install_srtp_replay_window()
        assert aiortc_private.srtp_replay_window_installed()
        late_taken: dict[str, list[bool]] = {}
        for name, policy_type in (
            ("installed", getattr(dtls_module, "Policy")),  # noqa: B009
            ("pylibsrtp", pylibsrtp.Policy),
        ):
            key = bytes(range(28))  # AES-128-GCM: key and salt
            profile = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
            policies = []
            for ssrc_type in (
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                pylibsrtp.Policy.SSRC_ANY_INBOUND,
            ):
                policy = policy_type(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
                policy.allow_repeat_tx = True
                policy.window_size = 1024  # as aiortc sets it
                policies.append(policy)
            assert policies[1].window_size == (128 if name == "installed" else 1024)
            tx, rx = pylibsrtp.Session(policies[0]), pylibsrtp.Session(policies[1])
            protected = {seq: tx.protect(_rtp(seq)) for seq in range(1, 301)}
            for seq in (1, 2, *range(3, 301, 3)):  # a sparse early run, then the newest
                rx.unprotect(protected[seq])
            taken = []
            for late in (300 - 100, 300 - 200):  # never received (not multiples of 3), late
                try:
                    rx.unprotect(protected[late])
                    taken.append(True)
                except pylibsrtp.Error:
                    taken.append(False)
            late_taken[name] = taken
        assert late_taken == {"installed": [True, False], "pylibsrtp": [True, True]}
    finally:
        setattr(dtls_module, "Policy", original)  # noqa: B010


def test_queue_track_is_a_media_stream_track() -> None:
    track = BoundedQueueTrack(2)
    assert isinstance(track, aiortc.MediaStreamTrack) and track.kind == "audio"


# ---------------------------------------------------------------------- aioice (port range)


def test_aioice_is_the_pinned_version() -> None:
    assert aiortc_private.aioice_version() == aiortc_private.PINNED_AIOICE_VERSION == "0.13.0"


def test_aioice_opens_its_udp_sockets_through_its_asyncio_global() -> None:
    """The port range relies on exactly these call sites (relay/media/port_range.py)."""
    import aioice.ice
    import aioice.turn

    host = inspect.getsource(aioice.ice.Connection.get_component_candidates)
    assert "loop = asyncio.get_running_loop()" in host
    assert "loop.create_datagram_endpoint(" in host
    assert "local_addr=(address, 0)" in host
    turn = inspect.getsource(aioice.turn.create_turn_endpoint)
    assert "loop = asyncio.get_running_loop()" in turn
    assert "loop.create_datagram_endpoint(" in turn and "remote_addr=server_addr" in turn
    # Any other UDP socket aioice opens would escape the range: there is none but mDNS,
    # which passes a ready socket (sock=...), left alone by the wrapper.
    for module in (aioice.ice, aioice.turn):
        assert inspect.getsource(module).count("create_datagram_endpoint(") == 1, module
        assert getattr(module, "asyncio").__name__ in (  # noqa: B009
            "asyncio",
            "relay_asyncio_for_" + module.__name__,
        )
    from aioice import mdns

    assert "sock=sock" in inspect.getsource(mdns.create_mdns_protocol)


async def test_routed_loop_binds_aioice_host_candidates_inside_the_range() -> None:
    import aioice

    from relay.media.port_range import NoMediaPorts, PortRange, binding_in

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        held = probe.getsockname()[1]
        # A one-port range whose port is taken: gathering fails with NoMediaPorts, not
        # a peer without candidates.
        full = aioice.Connection(ice_controlling=True)
        with binding_in(PortRange(held, held)), pytest.raises(NoMediaPorts):
            await full.get_component_candidates(1, ["127.0.0.1"])
        await full.close()
    assert aiortc_private.aioice_running_loop_routed()
    free = PortRange(held, held)  # the probe has closed: the port is free again
    conn = aioice.Connection(ice_controlling=True)
    try:
        with binding_in(free):
            candidates = await conn.get_component_candidates(1, ["127.0.0.1"])
        assert [c.port for c in candidates] == [held]
    finally:
        await conn.close()
    # Outside the block nothing changes: any port.
    other = aioice.Connection(ice_controlling=True)
    try:
        candidates = await other.get_component_candidates(1, ["127.0.0.1"])
        assert len(candidates) == 1 and candidates[0].port != 0
    finally:
        await other.close()


# ---------------------------------------------------------------------- aioice (host addresses)


def test_aioice_looks_its_host_addresses_up_at_gather_time() -> None:
    """``ice.host_addresses`` relies on this call site (relay/media/ice.py)."""
    import aioice.ice

    gather = inspect.getsource(aioice.ice.Connection.gather_candidates)
    assert "addresses = get_host_addresses(" in gather
    assert "use_ipv4=self._use_ipv4, use_ipv6=self._use_ipv6" in gather
    original = aiortc_private._original_get_host_addresses
    assert original is not None
    assert original.__module__ == "aioice.ice" and original.__name__ == "get_host_addresses"
    assert list(inspect.signature(original).parameters) == ["use_ipv4", "use_ipv6"]
    # aioice skips loopback itself, which is why the relay routes the lookup.
    assert "127.0.0.1" not in aiortc_private.machine_host_addresses()


async def test_routed_host_addresses_are_what_a_connection_gathers() -> None:
    import aioice

    from relay.config import IceConfig
    from relay.media.ice import _configured_host_addresses, install_host_addresses

    install_host_addresses(["127.0.0.1"])
    assert aiortc_private.aioice_host_addresses_routed_to(_configured_host_addresses)
    conn = aioice.Connection(ice_controlling=True)
    try:
        await conn.gather_candidates()
        assert [c.host for c in conn.local_candidates] == ["127.0.0.1"]
    finally:
        await conn.close()
        install_host_addresses(IceConfig().host_addresses)


def test_fast_path_internals_exist() -> None:
    from aioice.ice import CandidatePair, Connection, StunProtocol
    from aiortc import rtcdtlstransport
    from aiortc.rtcicetransport import RTCIceTransport

    # aioice hands every non-STUN datagram to the connection through an attribute lookup.
    assert "self.receiver.data_received(data, self.local_candidate.component)" in (
        inspect.getsource(StunProtocol.datagram_received)
    )
    assert list(inspect.signature(Connection.data_received).parameters) == [
        "self",
        "data",
        "component",
    ]
    assert "self._nominated: dict[int, CandidatePair] = {}" in inspect.getsource(Connection)
    assert "self._protocols: list[StunProtocol] = []" in inspect.getsource(Connection)
    assert "message = stun.parse_message(data)" in inspect.getsource(StunProtocol.datagram_received)
    assert "self._queue.put_nowait((data, component))" in inspect.getsource(
        Connection.data_received
    )
    assert "result = await self._queue.get()" in inspect.getsource(Connection.recvfrom)
    assert "self.transport.sendto(data, addr)" in inspect.getsource(StunProtocol.send_data)
    assert isinstance(inspect.getattr_static(CandidatePair, "remote_addr"), property)
    assert "self._connection = " in inspect.getsource(RTCIceTransport)
    dtls = inspect.getsource(rtcdtlstransport.RTCDtlsTransport)
    for text in ("self._rx_srtp = Session(rx_policy)", "self._tx_srtp = Session(tx_policy)"):
        assert text in dtls, text
    assert "self._rtp_router = RtpRouter()" in dtls
    # Decrypted, unparsed RTP goes through an attribute lookup an instance hook shadows.
    recv_next = inspect.getsource(rtcdtlstransport.RTCDtlsTransport._recv_next)
    assert "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in recv_next
    assert "data = self._rx_srtp.unprotect(data)" in recv_next
    assert "self.__rtp_started.set()" in inspect.getsource(RTCRtpSender._run_rtp)
    assert "self.ssrc_table[ssrc] = receiver" in inspect.getsource(rtcdtlstransport.RtpRouter)
    assert "add_recipient(self.ssrc_table.get(packet.ssrc))" in inspect.getsource(
        rtcdtlstransport.RtpRouter.route_rtcp
    )
    # The sender's RTCP task reports exactly the four attributes the fast path writes.
    rtcp = inspect.getsource(RTCRtpSender._run_rtcp)
    for name in ("__ntp_timestamp", "__rtp_timestamp", "__packet_count", "__octet_count"):
        assert f"self.{name}" in rtcp, name
    assert "self._ssrc = random32()" in inspect.getsource(RTCRtpSender.__init__)
    assert "StreamStatistics" in inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    add = inspect.getsource(StreamStatistics.add)
    # StreamStatistics.add reads only these two fields of the packet it is given.
    assert {"packet.sequence_number", "packet.timestamp"} == {
        w.rstrip(",):") for w in add.split() if w.startswith("packet.")
    }


def test_ice_check_internals_exist() -> None:
    from aioice.ice import Connection

    # note_ice_checks: an authenticated binding request reaches check_incoming through an
    # attribute lookup (an instance attribute shadows it), early checks too.
    received = inspect.getsource(Connection.request_received)
    assert "message.check_message_integrity(" in received
    assert "self.check_incoming(message, addr, protocol)" in received
    assert "self.check_incoming(*early_check)" in inspect.getsource(Connection)
    assert list(inspect.signature(Connection.check_incoming).parameters) == [
        "self",
        "message",
        "addr",
        "protocol",
    ]


async def test_ice_checks_are_not_noted_without_the_leg_s_ice_connection() -> None:
    """``RTCIceTransport._connection`` is one of the fast path's names: a release without it
    turns the fast path off and interviews go on through aiortc's own path
    (relay.media.capabilities), so the bridge's wiring, which notes the browser's ICE checks
    on every leg, must go on without it too (the audio alone then says when it was heard)."""
    pc = RTCPeerConnection()
    try:
        dtls = pc.addTransceiver("audio").receiver.transport
        connection = vars(dtls.transport).pop("_connection")  # as if renamed
        try:
            aiortc_private.note_ice_checks(dtls, lambda: None)
        finally:
            dtls.transport._connection = connection
        assert "check_incoming" not in vars(connection)
        # With it, the check is noted (an instance attribute in front of the method).
        aiortc_private.note_ice_checks(dtls, lambda: None)
        assert "check_incoming" in vars(connection)
    finally:
        await pc.close()


def test_rtcp_task_internals_exist() -> None:
    """What relay.media.rtcp_reports relies on to stand in for aiortc's RTCP tasks."""
    from aiortc import RTCPeerConnection

    # send()/receive() start the task through an attribute lookup (an instance attribute
    # set before they run shadows the method); stop() waits for its two events.
    start = "self.__rtcp_task = asyncio.ensure_future(self._run_rtcp())"
    assert start in inspect.getsource(RTCRtpSender.send)
    assert start in inspect.getsource(RTCRtpReceiver.receive)
    for cls in (RTCRtpSender, RTCRtpReceiver):
        stop = inspect.getsource(cls.stop)
        assert "self.__rtcp_started.wait()" in stop and "self.__rtcp_exited.wait()" in stop
    # The receiver's report blocks: built from the state receiver_report_blocks reads.
    rr = inspect.getsource(RTCRtpReceiver._run_rtcp)
    for text in (
        "self.__remote_streams.items()",
        "lsr = self.__lsr[ssrc]",
        "delay = time.time() - self.__lsr_time[ssrc]",
        "fraction_lost=stream.fraction_lost",
        "packets_lost=stream.packets_lost",
        "highest_sequence=stream.max_seq",
        "jitter=stream.jitter",
        "RtcpRrPacket(ssrc=self.__rtcp_ssrc, reports=reports)",
    ):
        assert text in rr, text
    # The sender's report: what note_sender_report records, the CNAME, the BYE at the end.
    sr = inspect.getsource(RTCRtpSender._run_rtcp)
    for text in (
        "self.__lsr = ((self.__ntp_timestamp) >> 16) & 0xFFFFFFFF",
        "self.__lsr_time = time.time()",
        'items=[(1, self.__cname.encode("utf8"))]',
        "RtcpByePacket(sources=[self._ssrc])",
    ):
        assert text in sr, text
    # A receiver reports as its transceiver's sender (one SSRC per leg and direction).
    assert "transceiver.receiver._set_rtcp_ssrc(transceiver.sender._ssrc)" in (
        inspect.getsource(RTCPeerConnection)
    )


async def test_fast_path_accessors_work_on_a_live_pair() -> None:
    from aiortc import RTCSessionDescription

    from relay.media.ice import rtc_configuration

    config = rtc_configuration(aiortc_private_ice())
    a, b = RTCPeerConnection(config), RTCPeerConnection(config)
    try:
        a.addTransceiver("audio", direction="sendrecv")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(
            RTCSessionDescription(sdp=b.localDescription.sdp, type="answer")
        )
        await wait_until(
            lambda: a.connectionState == b.connectionState == "connected", 10, "connected"
        )
        transceiver = a.getTransceivers()[0]
        dtls = transceiver.sender.transport
        rx, tx = aiortc_private.srtp_sessions(dtls)
        assert rx is not None and tx is not None
        assert aiortc_private.queued_datagrams(dtls) >= 0
        pairs = aiortc_private.nominated_pairs(dtls)
        sock, addr = aiortc_private.pair_endpoint(pairs[1])
        assert addr[0] == "127.0.0.1" and not sock.is_closing()
        assert isinstance(aiortc_private.sender_ssrc(transceiver.sender), int)

        seen: list[tuple[bytes, int]] = []
        original = aiortc_private.install_datagram_hook(dtls, lambda d, c: seen.append((d, c)))
        connection = aiortc_private.ice_connection(dtls)
        assert connection.data_received is not original
        protocol = connection._protocols[0]
        protocol.datagram_received(b"\x80\x6f" + b"\x00" * 10, ("127.0.0.1", 9))
        assert seen == [(b"\x80\x6f" + b"\x00" * 10, 1)]  # RTP: straight to the hook
        aiortc_private.remove_datagram_hook(dtls)
        assert "data_received" not in vars(connection)
        assert "datagram_received" not in vars(protocol)

        async def decrypted(data: bytes, arrival_time_ms: int) -> None:
            return None

        aiortc_private.install_decrypted_rtp_hook(dtls, decrypted)
        assert dtls._handle_rtp_data is decrypted
        aiortc_private.remove_decrypted_rtp_hook(dtls)
        assert "_handle_rtp_data" not in vars(dtls)
        assert aiortc_private.sender_started(transceiver.sender)

        report = aiortc_private.SenderReportState(transceiver.sender)
        report.record(1 << 40, 1234, 7, 700)
        assert report.read() == (1 << 40, 1234, 7, 700)
        stats = await transceiver.sender.getStats()
        outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
        assert (outbound.packetsSent, outbound.bytesSent) == (7, 700)

        receiver = b.getTransceivers()[0].receiver
        aiortc_private.bind_remote_ssrc(receiver, 0xABCDEF)
        assert receiver.transport._rtp_router.ssrc_table[0xABCDEF] is receiver
    finally:
        await a.close()
        await b.close()


def aiortc_private_ice() -> Any:
    from relay.config import IceConfig

    return IceConfig()


def test_srtp_codec_matches_pylibsrtp() -> None:
    import os
    import struct

    import pylibsrtp

    assert pylibsrtp.__version__ == "1.0.0"
    key = os.urandom(30)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80

    def session(kind: int) -> pylibsrtp.Session:
        return pylibsrtp.Session(pylibsrtp.Policy(key=key, srtp_profile=profile, ssrc_type=kind))

    sender = aiortc_private.SrtpCodec(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    receiver_session = session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    receiver = aiortc_private.SrtpCodec(receiver_session)
    reference = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    for seq in range(1, 4):
        packet = struct.pack("!BBHII", 0x80, 111, seq, 960 * seq, 42) + b"opus" * 20
        protected = sender.protect(packet)
        assert protected is not None and protected == reference.protect(packet)
        assert receiver.unprotect(protected) == packet
        # The same libsrtp context: a replay is refused, here and through pylibsrtp.
        assert receiver.unprotect(protected) is None
        with pytest.raises(pylibsrtp.Error):
            receiver_session.unprotect(protected)
    assert receiver.unprotect(b"\x80" * 40) is None  # fails authentication
    assert sender.protect(b"\x80" * 1400) is None  # no room for the trailer


def test_srtp_addresses_are_the_functions_pylibsrtp_calls() -> None:
    """The compiled loop calls libsrtp by these addresses, on sessions' contexts."""
    import ctypes
    import os
    import struct

    import pylibsrtp

    protect_at, unprotect_at, unprotect_rtcp_at = aiortc_private.srtp_function_addresses()
    assert len({protect_at, unprotect_at, unprotect_rtcp_at}) == 3 and all(
        (protect_at, unprotect_at, unprotect_rtcp_at)
    )
    assert aiortc_private.srtp_library_version().startswith("libsrtp2 2.")
    key = os.urandom(44)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    tx = pylibsrtp.Session(
        pylibsrtp.Policy(
            key=key, srtp_profile=profile, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        )
    )
    rx = pylibsrtp.Session(
        pylibsrtp.Policy(key=key, srtp_profile=profile, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    )
    process = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
    )
    packet = struct.pack("!BBHII", 0x80, 111, 7, 960, 42) + b"opus" * 20
    buffer = ctypes.create_string_buffer(packet, 1500)
    length = ctypes.c_int(len(packet))
    assert process(protect_at)(aiortc_private.srtp_context_address(tx), buffer, length) == 0
    assert rx.unprotect(buffer.raw[: length.value]) == packet  # pylibsrtp's own call agrees
    # SRTCP: pylibsrtp protects, the address unprotects in place on the same context.
    report = struct.pack("!BBHI", 0x80, 201, 1, 42)
    protected = tx.protect_rtcp(report)
    buffer = ctypes.create_string_buffer(protected, 1500)
    length = ctypes.c_int(len(protected))
    rx_context = aiortc_private.srtp_context_address(rx)
    assert process(unprotect_rtcp_at)(rx_context, buffer, length) == 0
    assert buffer.raw[: length.value] == report
    length = ctypes.c_int(len(protected))  # the same again: the replay window refuses it
    buffer = ctypes.create_string_buffer(protected, 1500)
    assert process(unprotect_rtcp_at)(rx_context, buffer, length) != 0


def test_stream_statistics_state_round_trips() -> None:
    """The fields StreamStatistics.add keeps (the compiled loop copies them in and out)."""
    stats = StreamStatistics(48000)
    for seq, ts in ((65534, 0), (65535, 960), (0, 1920), (1, 2880)):
        stats.add(aiortc.rtp.RtpPacket(sequence_number=seq, timestamp=ts))
    state = aiortc_private.statistics_state(stats)
    assert state[:4] == (65534, 1, 1 << 16, 4)
    copy = StreamStatistics(48000)
    aiortc_private.set_statistics_state(copy, state)
    assert copy.packets_lost == stats.packets_lost == 0
    assert copy.jitter == stats.jitter and copy.packets_expected == 4
    source = inspect.getsource(StreamStatistics)
    for name in ("_jitter_q4", "_last_arrival", "_last_timestamp"):
        assert f"self.{name}" in source, name


# ---------------------------------------------------------------------- aioice (ICE pacing)


def test_aioice_connect_paces_through_check_periodic() -> None:
    """``connect`` asks ``_check_periodic`` (looked up on each pass) whether to go on
    pacing, and leaves its loop to wait for the check list's result when it says no."""
    import aioice.ice

    connect = inspect.getsource(aioice.ice.Connection.connect)
    assert "if not self._check_periodic():" in connect
    assert "await asyncio.sleep(0.02)" in connect
    assert "await self._check_list_state.get()" in connect
    connection = aioice.ice.Connection(ice_controlling=True)
    assert connection._check_list == []
    assert connection._remote_candidates_expected() is True  # no end-of-candidates yet
    states = aioice.ice.CandidatePair.State
    assert {states.WAITING, states.FROZEN, states.IN_PROGRESS} <= set(states)
    # A started pair keeps its state until its task runs; the task is set at once.
    start_task = inspect.getsource(aioice.ice.Connection.check_start_task)
    assert "pair.task = asyncio.create_task(self.check_start(pair))" in start_task
    # The original pacing step, kept for the replacement to call.
    original = aiortc_private._original_check_periodic
    assert original is not None
    assert "check_start_task" in inspect.getsource(original)


def test_prompt_ice_completion_installs_idempotently() -> None:
    import aioice.ice

    aiortc_private.install_prompt_ice_completion()
    aiortc_private.install_prompt_ice_completion()
    assert aiortc_private.prompt_ice_completion_installed()
    assert aioice.ice.Connection._check_periodic is not aiortc_private._original_check_periodic


# ---------------------------------------------------------------------- far-end reports
async def test_report_notes_do_what_aiortcs_rtcp_handlers_do() -> None:
    """The compiled loop's far-end reports are applied with ``note_remote_sender_report``
    and ``note_report_block``: the same state and statistics as aiortc's own handlers
    given the same packets at the same time (round-trip time and its smoothing too)."""
    import time

    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
    from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket, RtcpSenderInfo, RtcpSrPacket

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    theirs, ours = RTCRtpSender("audio", dtls), RTCRtpSender("audio", dtls)
    ours._ssrc = theirs._ssrc
    ntp = (3_900_000_000 << 32) | 0x12345678
    for sender in (theirs, ours):
        aiortc_private.note_sender_report(sender, ntp, time.time() - 0.5)
        setattr(sender, aiortc_private.SENDER_PACKETS, 400)
    lsr = (ntp >> 16) & 0xFFFFFFFF

    def block(dlsr_s: float, lost: int) -> RtcpReceiverInfo:
        return RtcpReceiverInfo(
            ssrc=theirs._ssrc,
            fraction_lost=9,
            packets_lost=lost,
            highest_sequence=777,
            jitter=321,
            lsr=lsr,
            dlsr=int(dlsr_s * 65536),
        )

    def remote_inbound(sender: RTCRtpSender) -> Any:
        report = vars(sender)["_RTCRtpSender__stats"]
        return next(s for s in report.values() if s.type == "remote-inbound-rtp")

    for dlsr_s, lost in ((0.3, 5), (0.1, 6)):  # the second one is smoothed
        packet = RtcpRrPacket(ssrc=0x5151, reports=[block(dlsr_s, lost)])
        await theirs._handle_rtcp_packet(packet)
        aiortc_private.note_report_block(ours, 0x5151, block(dlsr_s, lost), time.time())
        mine, aiortcs = remote_inbound(ours), remote_inbound(theirs)
        for field in ("ssrc", "kind", "transportId", "packetsReceived", "packetsLost"):
            assert getattr(mine, field) == getattr(aiortcs, field), field
        assert (mine.jitter, mine.fractionLost) == (aiortcs.jitter, aiortcs.fractionLost)
        assert abs(mine.roundTripTime - aiortcs.roundTripTime) < 0.005
        assert mine.roundTripTime == vars(ours)["_RTCRtpSender__rtt"]
        assert mine.id == f"remote-inbound-rtp_{id(ours)}"
    # A block about another SSRC is ignored, as aiortc's router and handler ignore it.
    other = RtcpReceiverInfo(
        ssrc=theirs._ssrc ^ 1,
        fraction_lost=0,
        packets_lost=99,
        highest_sequence=1,
        jitter=1,
        lsr=0,
        dlsr=0,
    )
    aiortc_private.note_report_block(ours, 0x5151, other, time.time())
    assert remote_inbound(ours).packetsLost == 6

    theirs_rx, ours_rx = RTCRtpReceiver("audio", dtls), RTCRtpReceiver("audio", dtls)
    info = RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=48000, packet_count=50, octet_count=5000)
    await theirs_rx._handle_rtcp_packet(RtcpSrPacket(ssrc=0xABC, sender_info=info))
    arrival = time.time()
    aiortc_private.note_remote_sender_report(ours_rx, 0xABC, ntp, 50, 5000, arrival)
    for name in ("_RTCRtpReceiver__lsr", "_RTCRtpReceiver__lsr_time"):
        assert vars(ours_rx)[name].keys() == vars(theirs_rx)[name].keys() == {0xABC}
    assert vars(ours_rx)["_RTCRtpReceiver__lsr"] == vars(theirs_rx)["_RTCRtpReceiver__lsr"]
    assert vars(ours_rx)["_RTCRtpReceiver__lsr_time"][0xABC] == arrival

    def remote_outbound(receiver: RTCRtpReceiver) -> Any:
        report = vars(receiver)["_RTCRtpReceiver__stats"]
        return next(s for s in report.values() if s.type == "remote-outbound-rtp")

    mine, aiortcs = remote_outbound(ours_rx), remote_outbound(theirs_rx)
    for field in ("ssrc", "kind", "transportId", "packetsSent", "bytesSent", "remoteTimestamp"):
        assert getattr(mine, field) == getattr(aiortcs, field), field
    assert abs((mine.timestamp - aiortcs.timestamp).total_seconds()) < 0.5
    await dtls.stop()


def test_the_rtcp_handlers_that_run_in_one_step_never_suspend() -> None:
    """``RtcpDelivery`` runs the handlers of SR, RR, SDES and BYE to their end at once: the
    receiver's awaits nothing, the sender's only in its NACK branch."""
    receiver_source = inspect.getsource(RTCRtpReceiver._handle_rtcp_packet)
    assert "await" not in "\n".join(receiver_source.splitlines()[1:])
    sender_source = inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    awaits = [line.strip() for line in sender_source.splitlines() if "await" in line]
    assert awaits == ["await self._retransmit(seq)"]


def _lazy_thread(
    loop: asyncio.AbstractEventLoop,
) -> tuple[aiortc_private.LazyDecoderThread, queue.Queue[Any], asyncio.Queue[Any], list[Any]]:
    """A LazyDecoderThread as receive() makes it, over a worker that records what it takes."""
    taken: list[Any] = []
    input_q: queue.Queue[Any] = queue.Queue()
    output_q: asyncio.Queue[Any] = asyncio.Queue()

    def worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
        while (item := input_q.get()) is not None:
            taken.append(item)
        asyncio.run_coroutine_threadsafe(output_q.put(None), loop)

    thread = aiortc_private.LazyDecoderThread(
        target=worker, name="audio-decoder", args=(loop, input_q, output_q, threading.Event())
    )
    return thread, input_q, output_q, taken


async def test_a_lazy_decoder_thread_starts_with_its_first_frame() -> None:
    thread, input_q, output_q, taken = _lazy_thread(asyncio.get_running_loop())
    thread.start()
    assert thread.ident is None and not thread.is_alive()  # armed, not running
    input_q.put("frame 1")
    assert thread.is_alive()
    input_q.put("frame 2")
    input_q.put(None)  # aiortc's stop
    await asyncio.to_thread(thread.join, 5)
    assert not thread.is_alive() and taken == ["frame 1", "frame 2"]
    assert await asyncio.wait_for(output_q.get(), 5) is None  # the track ended


async def test_a_lazy_decoder_thread_stopped_before_any_frame_never_runs() -> None:
    """aiortc's stop puts None and joins: the track still ends, no thread ever ran, and the
    join returns at once (Thread.join would raise for a thread never started)."""
    threads = threading.active_count()
    thread, input_q, output_q, taken = _lazy_thread(asyncio.get_running_loop())
    thread.start()
    input_q.put(None)
    thread.join()
    assert thread.ident is None and threading.active_count() == threads and taken == []
    assert await asyncio.wait_for(output_q.get(), 5) is None
    assert "put" not in vars(input_q)  # the queue's own put again


async def test_lazy_decoder_threads_install_idempotently_for_receivers_only() -> None:
    from aiortc import rtcrtpreceiver

    assert aiortc_private.install_lazy_decoder_threads()
    assert aiortc_private.install_lazy_decoder_threads()
    assert aiortc_private.lazy_decoder_threads_installed()
    # What the receiver module sees: its decoder threads lazy, every other name the
    # threading module's own.
    seen: Any = vars(rtcrtpreceiver)["threading"]
    made = seen.Thread(
        target=rtcrtpreceiver.decoder_worker,
        name="audio-decoder",
        args=(asyncio.get_running_loop(), queue.Queue(), asyncio.Queue(), threading.Event()),
    )
    assert isinstance(made, aiortc_private.LazyDecoderThread)
    other = seen.Thread(target=print)
    assert type(other) is threading.Thread
    assert seen.Event is threading.Event


async def test_a_lazy_decoder_thread_that_cannot_start_ends_its_track(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No thread to be had (a task limit): the first frame ends the receiver's track instead
    of raising into aiortc's DTLS task (which would close the transport); what comes after
    is dropped, and aiortc's stop still returns."""
    thread, input_q, output_q, taken = _lazy_thread(asyncio.get_running_loop())
    thread.start()

    def refused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading, "_start_new_thread", refused)  # fault injection
    with caplog.at_level("ERROR", logger="relay.media.aiortc_private"):
        input_q.put("frame 1")
    assert await asyncio.wait_for(output_q.get(), 5) is None
    input_q.put("frame 2")
    input_q.put(None)
    thread.join()
    assert thread.ident is None and input_q.qsize() == 0 and taken == []
    assert any("could not start" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="once"):
        thread.start()
