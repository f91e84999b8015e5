"""Every private aiortc name the relay relies on, in one place.

aiortc has no public way to receive *encoded* audio, to keep RTCP receiver reports
when a receiver is bypassed, or to stop a receiver's decoder thread without blocking
the event loop. The functions below do exactly that and nothing more. They depend on
aiortc internals that have changed between minor releases, so aiortc is pinned
exactly (pyproject.toml) and ``tests/unit/test_aiortc_private.py`` fails loudly when an
upgrade renames or removes any of them. Read docs/media.md before changing anything.

Importing this module reads none of them, so a release without one still imports: the
relay checks every name at start (``relay.media.capabilities``) and falls back to aiortc's
own path for each feature whose names are missing; the process-wide replacements below
report whether they could be installed instead of raising.

Private names used (aiortc 1.16.0):

* ``RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms)``: the per-packet entry
  point, called by ``RTCDtlsTransport._handle_rtp_data`` through an ordinary attribute
  lookup, so an instance attribute shadows the method.
* ``RTCRtpReceiver._RTCRtpReceiver__remote_streams``: ssrc → ``StreamStatistics``; the
  receiver's RTCP task builds its receiver reports from it and ``getStats()`` reads it.
* ``aiortc.rtcrtpreceiver.StreamStatistics``: the per-SSRC loss/jitter bookkeeping.
* ``RTCRtpReceiver._RTCRtpReceiver__decoder_thread`` / ``__decoder_queue``: the decoder
  thread ``receive()`` starts for every receiver, and its (unbounded) input queue.
* ``RTCSctpTransport._data_channel_queue``, ``_outbound_queue``, ``_sent_queue``: what
  an association has not had acknowledged yet (``sctp_unacknowledged``).
* ``aiortc.rtcrtpreceiver.threading`` and ``decoder_worker(loop, input_q, output_q,
  decode_error)``: ``receive()`` makes the decoder thread with
  ``threading.Thread(target=decoder_worker, name=..., args=(...))``, looking
  ``threading`` up in its module when it runs; the worker ends the track by putting None
  on ``output_q`` when it takes None from ``input_q`` (``install_lazy_decoder_threads``).
* ``RTCRtpSender._RTCRtpSender__rtp_history``: the last 128 sent RTP packets per sender,
  kept for NACK retransmission (which aiortc only negotiates for video).
* ``aiortc.rtp.compute_audio_level_dbov``: a module-level function the sender calls per
  decoded frame (public module, but replacing it is a monkeypatch).
* ``aiortc.rtcdtlstransport.Policy``: pylibsrtp's ``Policy`` as that module sees it;
  ``RTCDtlsTransport._setup_srtp`` looks it up at call time to build each leg's two SRTP
  sessions, and sets ``window_size = 1024`` on both (``install_srtp_replay_window``).

aioice (pinned 0.13.0), for the UDP port range (relay/media/port_range.py):

* ``aioice.ice.asyncio`` and ``aioice.turn.asyncio``: the ``asyncio`` module as those two
  modules see it. ``Connection.get_component_candidates`` (host candidates) and
  ``turn.create_turn_endpoint`` (the TURN client's UDP socket) open every UDP socket with
  ``asyncio.get_running_loop().create_datagram_endpoint(...)``, looked up at call time, with
  port 0. aioice has no port-range option, so each module gets its own copy of ``asyncio``
  whose ``get_running_loop`` can hand back a loop wrapper that binds inside the range.

aioice, for a prompt end of ICE (``install_prompt_ice_completion``, relay/media/peers.py):

* ``aioice.ice.Connection._check_periodic()``: called by ``Connection.connect`` before
  each 20 ms pacing sleep to start the next check; ``connect`` leaves its pacing loop
  when it returns False. Read with ``Connection._check_list`` (the ``CandidatePair``
  objects, ``.state`` a ``CandidatePair.State``, ``.task`` the check's task once
  started) and
  ``Connection._remote_candidates_expected()``.

aioice, for the host addresses (relay/media/ice.py, ``ice.host_addresses``):

* ``aioice.ice.get_host_addresses(use_ipv4, use_ipv6)``: the module-level function
  ``Connection.gather_candidates`` looks up at gather time to list the machine's addresses
  (it skips 127.0.0.1 and ::1, and aioice has no per-connection option). Replacing the
  module attribute changes what every connection of the process gathers.

For the forwarding fast path (``relay.media.fastpath``), which receives datagrams below
aiortc's DTLS task and sends them below aiortc's sender:

* ``RTCIceTransport._connection``: the aioice ``Connection`` of a leg.
* aioice ``Connection.check_incoming(message, addr, protocol)``: called (attribute lookup)
  for each STUN binding request of the far end that passed authentication; an instance
  attribute shadows it (``note_ice_checks``: when the browser was last heard).
* aioice ``Connection.data_received(data, component)``: where every non-STUN datagram
  of a leg arrives (called by the aioice protocol through an attribute lookup, so an
  instance attribute shadows it); it queues the datagram for the DTLS transport's task.
* ``RTCDtlsTransport._handle_rtp_data(data, arrival_time_ms)``: called by its receive
  task (attribute lookup) with each decrypted, unparsed RTP packet.
* aioice ``Connection._protocols`` and ``StunProtocol.datagram_received`` (instance
  override; asyncio calls it through an attribute lookup), ``.local_candidate``: the
  sockets' protocols, to skip the STUN parse attempt for RTP/RTCP.
* aioice ``Connection._queue``: the datagrams waiting for the DTLS task.
* aioice ``Connection._nominated``: component → the selected ``CandidatePair`` (its
  ``protocol.transport`` is the asyncio datagram transport, ``remote_addr`` the peer).
* ``RTCDtlsTransport._rx_srtp`` / ``_tx_srtp``: the leg's pylibsrtp sessions (set when
  the DTLS handshake completes).
* ``RTCDtlsTransport._rtp_router.ssrc_table``: remote SSRC → receiver; RTCP sender
  reports are routed to the receiver through it (aiortc fills it while routing RTP).
* ``RTCDtlsTransport._send_rtp(data)``: protect and send one RTP or RTCP packet (the
  relay's RTCP reports; tests).
* pylibsrtp ``Session._srtp`` and its ``_binding`` module (``SrtpCodec``): libsrtp
  calls without the wrapper's per-call allocations; the compiled loop
  (``relay.media.fastloop``) gets the addresses of ``srtp_protect``/``srtp_unprotect``
  and of each session's ``srtp_t`` from them (``srtp_function_addresses``,
  ``srtp_context_address``).
* aiortc ``StreamStatistics._jitter_q4`` / ``_last_arrival`` / ``_last_timestamp`` (with
  its public ``base_seq``, ``max_seq``, ``cycles``, ``packets_received``): the compiled
  loop keeps the same statistics per packet and copies them in and out
  (``statistics_state``, ``set_statistics_state``).
* ``RTCRtpSender._RTCRtpSender__rtp_started``: set when the sender's RTP task runs.
* ``RTCRtpSender._ssrc`` and ``_RTCRtpSender__ntp_timestamp`` / ``__rtp_timestamp`` /
  ``__packet_count`` / ``__octet_count``: the sender's SSRC and the state its RTCP task
  reads for every sender report.

For the relay's own RTCP reports (``relay.media.rtcp_reports``), which replace the RTCP
task aiortc starts for every sender and every receiver:

* ``RTCRtpSender._run_rtcp`` / ``RTCRtpReceiver._run_rtcp``: ``send()`` and ``receive()``
  start ``asyncio.ensure_future(self._run_rtcp())`` through an attribute lookup, so an
  instance attribute set before they run shadows the method.
* ``_RTCRtpSender__rtcp_started`` / ``__rtcp_exited`` and the receiver's two: the events
  ``stop()`` waits for around cancelling that task.
* ``_RTCRtpSender__cname``, ``__lsr``, ``__lsr_time``: the CNAME of the sender's SDES, and
  the last sender report's middle NTP bits and time, from which the sender computes the
  round-trip time when the far end's report blocks echo them.
* ``_RTCRtpReceiver__lsr`` / ``__lsr_time`` / ``__rtcp_ssrc`` (with ``__remote_streams``):
  what the receiver's own task puts in each report block, and the SSRC it reports as.
* ``RTCRtpSender._send_rtcp(packets)``: serialise and send (the BYE a stopping sender
  sends).

For the far ends' SRTCP read in the compiled loop (``relay.media.rtcp_in``): the loop
unprotects and parses the far end's compounds itself and keeps what aiortc's handlers
would act on; Python then does what those handlers do with it, at the arrival time the
loop noted, and hands every other compound (feedback, BYE) to aiortc's own handlers:

* pylibsrtp's ``lib.srtp_unprotect_rtcp``: its address, for the loop
  (``srtp_function_addresses``), called on the same ``srtp_t`` aiortc's task uses (one
  replay window for both).
* ``RTCDtlsTransport._rtp_router.senders`` (with ``ssrc_table``): where aiortc's router
  sends report blocks (by the SSRC reported on) and sender reports (by the sender's SSRC).
* ``_RTCRtpReceiver__stats`` / ``__kind`` and ``_RTCRtpSender__stats`` / ``__kind`` /
  ``__rtt`` (with ``__lsr``, ``__lsr_time``, ``__packet_count``), the DTLS transport's
  ``_stats_id``, and ``aiortc.rtcrtpsender.RTT_ALPHA``: what the receiver's and the
  sender's ``_handle_rtcp_packet`` set from a sender report and from a report block
  (``note_remote_sender_report``, ``note_report_block``).
* ``RTCDtlsTransport._rtp_router.route_rtcp(packet)``, ``RTCRtpReceiver.
  _handle_rtcp_packet`` / ``RTCRtpSender._handle_rtcp_packet``, ``aiortc.rtp.RtcpPacket``
  and the packet classes ``RtcpSrPacket``, ``RtcpRrPacket``, ``RtcpSdesPacket``,
  ``RtcpByePacket``: aiortc's parser, router and handlers for the compounds the loop
  hands over (``RtcpDelivery``), driven as ``RTCDtlsTransport._handle_rtcp_data`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import functools
import logging
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aioice
import aioice.ice
import aioice.turn
import aiortc
import aiortc.clock
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtp
import pylibsrtp
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from relay.media.audio_level import compute_audio_level_dbov

log = logging.getLogger(__name__)

# The exact version these internals were read from. The guard test checks it.
PINNED_AIORTC_VERSION = "1.16.0"
PINNED_AIOICE_VERSION = "0.13.0"

RtpHook = Callable[[RtpPacket, int], Awaitable[None]]
OriginalHandler = Callable[..., Awaitable[None]]

# Public (as are the sender's below): what a stand-in of aiortc's receiver or sender must
# hold for the fast path, named once (the benchmarks build the fast path around stand-ins).
REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
_RTP_HISTORY = "_RTCRtpSender__rtp_history"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


def aiortc_version() -> str:
    return str(aiortc.__version__)


def original_rtp_handler(receiver: RTCRtpReceiver) -> OriginalHandler:
    """The receiver's own ``_handle_rtp_packet`` (bound), to delegate to from a hook."""
    handler: OriginalHandler = RTCRtpReceiver._handle_rtp_packet.__get__(receiver)
    return handler


def install_rtp_hook(receiver: RTCRtpReceiver, hook: RtpHook) -> None:
    """Route every RTP packet of ``receiver`` to ``hook(packet, arrival_time_ms)``.

    The packet arrives parsed and SRTP-decrypted, before aiortc's jitter buffer and
    decoder. This is how encoded Opus is forwarded without decoding (and with no
    jitter-buffer delay). The hook decides whether to call ``original_rtp_handler``.
    """
    # setattr: an instance attribute deliberately shadowing the method.
    setattr(receiver, "_handle_rtp_packet", hook)  # noqa: B010


def remove_rtp_hook(receiver: RTCRtpReceiver) -> None:
    """Drop the instance override (the class method applies again)."""
    receiver.__dict__.pop("_handle_rtp_packet", None)


def receiver_statistics(receiver: RTCRtpReceiver, ssrc: int, clock_rate: int) -> Any:
    """The ``StreamStatistics`` aiortc keeps for ``ssrc`` (created if missing).

    A hook that bypasses ``_handle_rtp_packet`` calls ``.add(packet)`` on it per packet
    (about a microsecond) so the receiver keeps sending RTCP receiver reports: the far
    end keeps its round-trip-time and loss statistics, and ``receiver.getStats()``
    keeps reporting inbound packets, loss and jitter.
    """
    streams: dict[int, Any] = getattr(receiver, REMOTE_STREAMS)
    stats = streams.get(ssrc)
    if stats is None:
        stream_statistics = aiortc.rtcrtpreceiver.StreamStatistics
        stats = streams[ssrc] = stream_statistics(clock_rate)
    return stats


class _NoHistory(dict[int, Any]):
    """Stands in for a sender's retransmission history: remembers nothing."""

    def __setitem__(self, key: int, value: Any) -> None:
        return None


def disable_retransmission_history(sender: RTCRtpSender) -> None:
    """Stop ``sender`` keeping its last 128 RTP packets for retransmission.

    aiortc keeps them for NACKs, which it negotiates for video only: for audio they are
    never used. They are, however, long-lived young objects (3 GC-tracked objects per
    packet, 128 per sender), so they pile up in the youngest GC generation in proportion
    to the sessions, and every collection of that generation scans them all with the
    event loop stopped: forwarding stalls, and latency's tail grows with the load (the
    figures: docs/benchmarks.md, "Figures behind the code's choices"). Without the
    history a sent packet is freed at once. A NACK for audio, should one arrive, is
    ignored.
    """
    setattr(sender, _RTP_HISTORY, _NoHistory())


def detach_decoder_thread(receiver: RTCRtpReceiver) -> threading.Thread | None:
    """Ask the receiver's decoder thread to exit and return it, for joining off the loop.

    ``receive()`` starts one decoder thread per receiver, even when a hook means it
    never decodes anything. aiortc stops it in ``RTCRtpReceiver.stop()`` with a
    blocking ``join()`` on the event loop. Handing it the same ``None`` sentinel here
    and clearing the attribute makes aiortc skip that join (and stop queueing frames
    for it); the caller joins the returned thread in a worker thread instead.
    """
    thread: threading.Thread | None = getattr(receiver, _DECODER_THREAD, None)
    decoder_queue = getattr(receiver, _DECODER_QUEUE, None)
    if thread is None or decoder_queue is None:
        return None  # none started, or an aiortc without these names: it joins its own
    decoder_queue.put(None)
    setattr(receiver, _DECODER_THREAD, None)
    if thread.ident is None:
        return None  # a LazyDecoderThread that never got a frame: nothing to join
    return thread


def decoder_backlog(receiver: RTCRtpReceiver) -> int:
    """Encoded frames waiting for the receiver's decoder thread.

    aiortc's decoder input is an unbounded ``queue.Queue``; on the decode path the relay
    checks its depth per packet and drops instead of letting it grow (overload).
    """
    backlog: int = getattr(receiver, _DECODER_QUEUE).qsize()
    return backlog


def decoder_thread(receiver: RTCRtpReceiver) -> threading.Thread | None:
    """The receiver's decoder thread, if it has one (tests and stats)."""
    thread: threading.Thread | None = getattr(receiver, _DECODER_THREAD, None)
    return thread


def _never_started(timeout: float | None = None) -> None:
    """A ``LazyDecoderThread``'s join while no thread runs: nothing to wait for."""


def _dropped(item: object, block: bool = True, timeout: float | None = None) -> None:
    """The input queue's put once its decoder thread could not start: nobody reads it."""


class LazyDecoderThread(threading.Thread):
    """aiortc's decoder thread for one receiver, started by the first frame queued for it.

    ``RTCRtpReceiver.receive()`` starts a decoder thread for every receiver. On the fast
    path the raw hook takes every packet, so that thread would wait idle for the whole
    interview: two per interview (1,007 threads at 500 interviews), each started at setup
    and joined at close. This one is started by the first item put on its input queue:
    a frame (the decode path) starts the real thread; the stop sentinel before any frame
    ends the receiver's track as ``decoder_worker`` would, and no thread ever runs.
    ``receive()`` and every put run on the event loop's thread, so start and the first
    put cannot race.
    """

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        super().__init__(group, target, name, args, kwargs, daemon=daemon)
        # decoder_worker(loop, input_q, output_q, decode_error)
        self._event_loop: asyncio.AbstractEventLoop = args[0]
        self._input: Any = args[1]
        self._output: asyncio.Queue[Any] = args[2]
        self._armed = False

    def start(self) -> None:
        """Armed: the input queue's first put starts the thread (or ends the track)."""
        if self._armed or self.ident is not None:
            raise RuntimeError("threads can only be started once")
        self._armed = True
        input_queue = self._input

        def first_put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            del input_queue.put  # the queue's own put again, for this item and the rest
            if item is None:
                self._end_track()
                return
            try:
                threading.Thread.start(self)
            except RuntimeError as exc:
                # No thread to be had (a task limit): this receiver cannot decode. Its
                # track ends, so the relay sees that leg end, and what aiortc queues from
                # now on is dropped; raised here, the error would reach aiortc's DTLS task
                # and close the transport.
                log.error("a decoder thread could not start (%s): its track ends", exc)
                input_queue.put = _dropped
                self._end_track()
                return
            del self.join  # threading.Thread's own join from now on
            input_queue.put(item, block, timeout)

        # Instance attributes shadowing the methods: queue.Queue.put for this one queue,
        # and join, which returns at once while no thread was started (aiortc joins its
        # decoder thread when the receiver stops; Thread.join would raise). A started
        # thread is joined by Thread.join itself, not through a frame of the relay's.
        try:
            input_queue.put = first_put
        except AttributeError:  # a queue whose methods cannot be shadowed: as aiortc does
            threading.Thread.start(self)
            return
        self.join = _never_started  # type: ignore[method-assign]

    def _end_track(self) -> None:
        """What ``decoder_worker`` does with the stop sentinel: the track's queue gets
        None (its ``recv`` then ends the track)."""
        with contextlib.suppress(RuntimeError):  # the event loop closed: nobody waits
            self._event_loop.call_soon_threadsafe(self._output.put_nowait, None)


class _ReceiverThreading:
    """The ``threading`` module as ``aiortc.rtcrtpreceiver`` sees it once
    ``install_lazy_decoder_threads`` ran: its decoder threads are ``LazyDecoderThread``s,
    everything else is the module itself."""

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)

    @staticmethod
    def Thread(*args: Any, **kwargs: Any) -> threading.Thread:  # noqa: N802 (the module's name)
        worker = getattr(aiortc.rtcrtpreceiver, "decoder_worker", None)
        if kwargs.get("target") is worker and worker is not None and not args:
            return LazyDecoderThread(**kwargs)
        return threading.Thread(*args, **kwargs)


_RECEIVER_THREADING = _ReceiverThreading()


def install_lazy_decoder_threads() -> bool:
    """Start each receiver's decoder thread with its first frame (``LazyDecoderThread``).
    Process-wide and idempotent: ``receive()`` looks ``threading`` up in its module when it
    runs. False (aiortc starts its threads as ever) when that module lacks ``threading`` or
    ``decoder_worker``."""
    module = aiortc.rtcrtpreceiver
    if not hasattr(module, "threading") or not hasattr(module, "decoder_worker"):
        return False
    setattr(module, "threading", _RECEIVER_THREADING)  # noqa: B010
    return True


def lazy_decoder_threads_installed() -> bool:
    return getattr(aiortc.rtcrtpreceiver, "threading", None) is _RECEIVER_THREADING


# An SCTP association's messages waiting for it, chunks waiting for the congestion window,
# and chunks sent and not yet acknowledged.
_SCTP_QUEUES = ("_data_channel_queue", "_outbound_queue", "_sent_queue")


def sctp_unacknowledged(channel: RTCDataChannel) -> int:
    """Messages and chunks of ``channel``'s SCTP association not yet acknowledged by the far
    end: waiting for the association, waiting for the congestion window, or sent.

    ``bufferedAmount`` reaches 0 as soon as a message is handed to SCTP's outbound queue,
    where it may still wait for the congestion window; closing the association then
    aborts it and the message is lost. Every data channel of the association counts
    (a relay leg has one)."""
    sctp = channel.transport
    return sum(len(getattr(sctp, name)) for name in _SCTP_QUEUES)


# ----------------------------------------------------------------------- fast path

DatagramHook = Callable[[bytes, int], None]

_SRTP_BUFFER = 1500
_SRTP_MAX_TRAILER = 16 + 128  # pylibsrtp's SRTP_MAX_TRAILER_LEN
# libsrtp's statuses for what its replay check refused (srtp_err_status_replay_fail and
# _replay_old): a copy of a packet already taken, and one too far behind the newest.
SRTP_REPLAY_FAIL = 9
SRTP_REPLAY_OLD = 10
# SrtpCodec.refused for a packet larger than its buffer (never a libsrtp status).
SRTP_TOO_LARGE = -1
SENDER_NTP = "_RTCRtpSender__ntp_timestamp"
SENDER_RTP_STARTED = "_RTCRtpSender__rtp_started"
SENDER_RTP_TS = "_RTCRtpSender__rtp_timestamp"
SENDER_PACKETS = "_RTCRtpSender__packet_count"
SENDER_OCTETS = "_RTCRtpSender__octet_count"
_SENDER_RTCP_EVENTS = ("_RTCRtpSender__rtcp_started", "_RTCRtpSender__rtcp_exited")
_RECEIVER_RTCP_EVENTS = ("_RTCRtpReceiver__rtcp_started", "_RTCRtpReceiver__rtcp_exited")
_SENDER_CNAME = "_RTCRtpSender__cname"
_SENDER_LSR = "_RTCRtpSender__lsr"
_SENDER_LSR_TIME = "_RTCRtpSender__lsr_time"
_RECEIVER_LSR = "_RTCRtpReceiver__lsr"
_RECEIVER_LSR_TIME = "_RTCRtpReceiver__lsr_time"
_RECEIVER_RTCP_SSRC = "_RTCRtpReceiver__rtcp_ssrc"
_RECEIVER_STATS = "_RTCRtpReceiver__stats"
_RECEIVER_KIND = "_RTCRtpReceiver__kind"
_SENDER_STATS = "_RTCRtpSender__stats"
_SENDER_KIND = "_RTCRtpSender__kind"
_SENDER_RTT = "_RTCRtpSender__rtt"


class _OversizedSrtp:
    """Datagrams ``refuse_oversized_srtp`` kept from aiortc, since the process started."""

    refused = 0


def refuse_oversized_srtp() -> bool:
    """Drop, before aiortc's DTLS task sees them, SRTP and SRTCP datagrams larger than
    pylibsrtp's buffer (1500 bytes).

    pylibsrtp refuses such a packet with ``ValueError``, not ``pylibsrtp.Error``, and
    aiortc's receive task (``RTCDtlsTransport._recv_next``) catches only the latter: the
    task ends and the leg closes. aioice hands every non-STUN datagram to its connection
    whatever its source, so one such datagram from anyone who can reach a leg's UDP port
    would end that leg. ``aioice.Connection.data_received`` is where every leg's
    datagrams enter aiortc's path (the fast path's hook passes what it does not handle to
    the same method), so it is wrapped there, once, process-wide. Idempotent; False when
    aioice has no such method (the start-up check reports it)."""
    connection_type = aioice.Connection
    original = getattr(connection_type, "data_received", None)
    if original is None:
        return False
    if getattr(original, "_relay_refuses_oversized_srtp", False):
        return True

    # wraps: aioice's own method stays reachable (``__wrapped__``) for the guard tests
    # that read its source and signature.
    @functools.wraps(original)
    def data_received(self: Any, data: bytes, component: int) -> None:
        # 128..191: RTP or RTCP by RFC 7983, which aiortc hands to pylibsrtp.
        if len(data) > _SRTP_BUFFER and 127 < data[0] < 192:
            _OversizedSrtp.refused += 1
            return
        original(self, data, component)

    data_received._relay_refuses_oversized_srtp = True  # type: ignore[attr-defined]
    # setattr: replacing the class's method on purpose (mypy refuses an assignment).
    setattr(connection_type, "data_received", data_received)  # noqa: B010
    return True


def oversized_srtp_refused() -> int:
    """How many datagrams ``refuse_oversized_srtp`` dropped in this process."""
    return _OversizedSrtp.refused


def ice_connection(dtls: RTCDtlsTransport) -> Any:
    """The aioice ``Connection`` under a leg's DTLS transport."""
    return dtls.transport._connection


def note_ice_checks(dtls: RTCDtlsTransport, heard: Callable[[], None]) -> None:
    """Call ``heard()`` on each authenticated ICE check (STUN binding request) the far end
    of the leg sends: its connectivity checks and consent freshness (RFC 7675), which every
    WebRTC endpoint sends every few seconds while its network reaches the relay, whether it
    sends audio or not. A page cannot stop them, unlike its RTP.

    Without either name (another aiortc or aioice) nothing is noted and the audio alone
    says when the browser was heard (bounded): ``RTCIceTransport._connection`` is a fast
    path name, whose absence turns only that feature off (relay.media.capabilities), so it
    must not fail the bridge's wiring of every leg here."""
    connection = getattr(dtls.transport, "_connection", None)
    method = getattr(type(connection), "check_incoming", None)
    if connection is None or method is None:
        return
    checked = method.__get__(connection)

    def check_incoming(message: Any, addr: Any, protocol: Any) -> None:
        heard()
        checked(message, addr, protocol)

    # setattr: an instance attribute deliberately shadowing the method.
    setattr(connection, "check_incoming", check_incoming)  # noqa: B010


def install_datagram_hook(dtls: RTCDtlsTransport, hook: DatagramHook) -> DatagramHook:
    """Route every non-STUN datagram of the leg to ``hook(data, component)``.

    Returns aioice's own ``data_received`` (bound): the hook hands it whatever it does
    not handle itself (DTLS, SRTCP), which then takes aiortc's normal path. Handling a
    datagram here, synchronously, saves the queue hop and the task wake-up of aiortc's
    DTLS receive loop.
    """
    connection = ice_connection(dtls)
    original: DatagramHook = type(connection).data_received.__get__(connection)
    # setattr: an instance attribute deliberately shadowing the method.
    setattr(connection, "data_received", hook)  # noqa: B010
    # Below that, each socket's protocol first tries to parse every datagram as STUN
    # (a failed parse raises and catches ValueError per packet). A first byte of
    # 128..191 is RTP or RTCP, never STUN (RFC 7983): those skip the attempt.
    for protocol in connection._protocols:
        stun_path = type(protocol).datagram_received.__get__(protocol)
        component: int = protocol.local_candidate.component

        def datagram_received(
            data: bytes, addr: Any, stun_path: Any = stun_path, component: int = component
        ) -> None:
            if data and 127 < data[0] < 192:
                hook(data, component)
            else:
                stun_path(data, addr)

        setattr(protocol, "datagram_received", datagram_received)  # noqa: B010
    return original


def remove_datagram_hook(dtls: RTCDtlsTransport) -> None:
    connection = ice_connection(dtls)
    connection.__dict__.pop("data_received", None)
    for protocol in connection._protocols:
        protocol.__dict__.pop("datagram_received", None)


DecryptedRtpHook = Callable[[bytes, int], Awaitable[None]]


def install_decrypted_rtp_hook(dtls: RTCDtlsTransport, hook: DecryptedRtpHook) -> None:
    """Route the RTP that does take aiortc's DTLS path to ``hook(data, arrival_time_ms)``.

    ``data`` is SRTP-decrypted and not yet parsed. Datagrams that arrived before the
    leg's SRTP keys existed wait in aioice's queue and are decrypted by aiortc's task
    afterwards; this is where the fast path picks those up.
    """
    # setattr: an instance attribute deliberately shadowing the method.
    setattr(dtls, "_handle_rtp_data", hook)  # noqa: B010


def remove_decrypted_rtp_hook(dtls: RTCDtlsTransport) -> None:
    dtls.__dict__.pop("_handle_rtp_data", None)


def queued_datagrams(dtls: RTCDtlsTransport) -> int:
    """Datagrams waiting in aioice's queue for aiortc's DTLS task.

    Packets that arrived before the leg's SRTP keys wait there; the fast path leaves
    RTP to aiortc's path until they are drained, so packets are not reordered.
    """
    waiting: int = ice_connection(dtls)._queue.qsize()
    return waiting


def nominated_pairs(dtls: RTCDtlsTransport) -> dict[int, Any]:
    """The live component → selected ``CandidatePair`` dict of a leg (not a copy)."""
    pairs: dict[int, Any] = ice_connection(dtls)._nominated
    return pairs


def pair_endpoint(pair: Any) -> tuple[Any, tuple[str, int]]:
    """A selected pair's asyncio datagram transport and remote address."""
    return pair.protocol.transport, pair.remote_addr


def srtp_sessions(dtls: RTCDtlsTransport) -> tuple[Any, Any]:
    """The leg's (receive, transmit) pylibsrtp sessions; ``None`` before the handshake."""
    return _unlocked(dtls._rx_srtp), _unlocked(dtls._tx_srtp)


# A lock as two functions (take, let go): the media lock's (relay.media.fastloop).
LockPair = tuple[Callable[[], Any], Callable[[], Any]]


class LockedSrtpSession:
    """A leg's pylibsrtp session whose every use by aiortc takes a lock first.

    A compiled route uses the leg's libsrtp contexts on the compiled loop's forwarder
    thread (relay/media/_fastloop.c, "the media lock"), while aiortc keeps using the same
    sessions on the event loop's: it unprotects what reaches it on the leg's other sockets
    and protects its RTCP, a new SSRC's first packet adding a stream to the session's list
    that the forwarder walks. ``guard_srtp`` puts this in place of ``RTCDtlsTransport``'s
    ``_rx_srtp`` and ``_tx_srtp``; aiortc calls only the four methods below."""

    __slots__ = ("session", "_acquire", "_release")

    def __init__(self, session: Any, lock: LockPair) -> None:
        self.session = session
        self._acquire, self._release = lock

    def _call(self, method: Callable[[bytes], bytes], packet: bytes) -> bytes:
        self._acquire()
        try:
            return method(packet)
        finally:
            self._release()

    def protect(self, packet: bytes) -> bytes:
        return self._call(self.session.protect, packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._call(self.session.protect_rtcp, packet)

    def unprotect(self, packet: bytes) -> bytes:
        return self._call(self.session.unprotect, packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._call(self.session.unprotect_rtcp, packet)


def guard_srtp(dtls: RTCDtlsTransport, lock: LockPair) -> None:
    """aiortc's own use of the leg's SRTP sessions under ``lock`` from now on (idempotent;
    nothing before the handshake)."""
    for name in ("_rx_srtp", "_tx_srtp"):
        session = getattr(dtls, name)
        if session is not None and not isinstance(session, LockedSrtpSession):
            setattr(dtls, name, LockedSrtpSession(session, lock))


def _unlocked(session: Any) -> Any:
    return session.session if isinstance(session, LockedSrtpSession) else session


def bind_remote_ssrc(receiver: RTCRtpReceiver, ssrc: int) -> None:
    """Route RTCP from remote ``ssrc`` (sender reports, BYE) to ``receiver``.

    aiortc learns this mapping while routing RTP; a fast path that takes RTP before
    aiortc's router must teach it, or the receiver never sees the sender reports it
    needs for the LSR/DLSR fields of its receiver reports (the far end's RTT).
    """
    router = receiver.transport._rtp_router
    router.ssrc_table[ssrc] = receiver


async def send_rtp_datagram(dtls: RTCDtlsTransport, data: bytes) -> None:
    """SRTP- or SRTCP-protect and send one serialised RTP or RTCP packet on a leg (the
    relay's RTCP reports; tests and the bench use it to play a far end that changes SSRC,
    pads, duplicates). Raises ``ConnectionError`` when the leg is not connected."""
    await dtls._send_rtp(data)


async def wait_sender_started(sender: RTCRtpSender) -> None:
    """Until ``sender_started`` (the flag is an ``asyncio.Event``)."""
    started: asyncio.Event = getattr(sender, SENDER_RTP_STARTED)
    await started.wait()


def sender_started(sender: RTCRtpSender) -> bool:
    """Whether aiortc has started the sender (its RTP task is running).

    aiortc starts it once the leg's DTLS handshake is done and both ends of the leg
    are being set up; sending before that reaches a far end that may not have set up
    its receiver yet, which drops the packets.
    """
    started: Any = getattr(sender, SENDER_RTP_STARTED)
    return bool(started.is_set())


def sender_ssrc(sender: RTCRtpSender) -> int:
    ssrc: int = sender._ssrc
    return ssrc


class SenderReportState:
    """Writes what a sender's RTCP task reports (counts, NTP/RTP time) for packets sent
    past the sender. Its task reads these four attributes for every sender report."""

    __slots__ = ("_fields",)

    def __init__(self, sender: RTCRtpSender) -> None:
        fields: dict[str, Any] = vars(sender)
        for name in (SENDER_NTP, SENDER_RTP_TS, SENDER_PACKETS, SENDER_OCTETS):
            if name not in fields:
                raise AttributeError(name)
        self._fields = fields

    def record(self, ntp_timestamp: int, rtp_timestamp: int, packets: int, octets: int) -> None:
        fields = self._fields
        fields[SENDER_NTP] = ntp_timestamp
        fields[SENDER_RTP_TS] = rtp_timestamp
        fields[SENDER_PACKETS] = packets
        fields[SENDER_OCTETS] = octets

    def read(self) -> tuple[int, int, int, int]:
        fields = self._fields
        return (
            fields[SENDER_NTP],
            fields[SENDER_RTP_TS],
            fields[SENDER_PACKETS],
            fields[SENDER_OCTETS],
        )


RtcpTask = Callable[[], Awaitable[None]]


def replace_rtcp_task(party: RTCRtpSender | RTCRtpReceiver, run: RtcpTask) -> None:
    """Have ``send()``/``receive()`` start ``run()`` instead of aiortc's RTCP task. Call it
    before they run (before the peer connects); ``run`` must set ``rtcp_task_events``'
    first event when it starts and the second when it ends, as ``stop()`` waits for both."""
    # setattr: an instance attribute deliberately shadowing the method.
    setattr(party, "_run_rtcp", run)  # noqa: B010


def rtcp_task_events(party: RTCRtpSender | RTCRtpReceiver) -> tuple[asyncio.Event, asyncio.Event]:
    """(started, exited): the RTCP task's two events ``stop()`` waits for."""
    names = _SENDER_RTCP_EVENTS if isinstance(party, RTCRtpSender) else _RECEIVER_RTCP_EVENTS
    return getattr(party, names[0]), getattr(party, names[1])


def sender_cname(sender: RTCRtpSender) -> str | None:
    """The CNAME the sender's reports carry (None until it was started)."""
    cname: str | None = getattr(sender, _SENDER_CNAME)
    return cname


def note_sender_report(sender: RTCRtpSender, ntp_timestamp: int, sent_at: float) -> None:
    """A sender report went out: what aiortc's task records for the round-trip time (the
    far end's report blocks echo the middle 32 bits; ``sent_at`` is ``time.time()``)."""
    setattr(sender, _SENDER_LSR, (ntp_timestamp >> 16) & 0xFFFFFFFF)
    setattr(sender, _SENDER_LSR_TIME, sent_at)


def receiver_report_blocks(receiver: RTCRtpReceiver, now: float) -> list[Any]:
    """The receiver's report blocks (``aiortc.rtp.RtcpReceiverInfo``), one per remote
    stream, built as aiortc's receiver task builds them (``now`` is ``time.time()``).
    Reading ``fraction_lost`` starts the next reporting interval, as there."""
    lsrs: dict[int, int] = getattr(receiver, _RECEIVER_LSR)
    lsr_times: dict[int, float] = getattr(receiver, _RECEIVER_LSR_TIME)
    blocks = []
    for ssrc, stream in getattr(receiver, REMOTE_STREAMS).items():
        lsr = dlsr = 0
        if ssrc in lsrs:
            lsr = lsrs[ssrc]
            delay = now - lsr_times[ssrc]
            if 0 < delay < 65536:
                dlsr = int(delay * 65536)
        blocks.append(
            aiortc.rtp.RtcpReceiverInfo(
                ssrc=ssrc,
                fraction_lost=stream.fraction_lost,
                packets_lost=stream.packets_lost,
                highest_sequence=stream.max_seq,
                jitter=stream.jitter,
                lsr=lsr,
                dlsr=dlsr,
            )
        )
    return blocks


def receiver_rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the receiver reports as (aiortc gives it its transceiver's sender's)."""
    ssrc: int | None = getattr(receiver, _RECEIVER_RTCP_SSRC)
    return ssrc


async def send_bye(sender: RTCRtpSender) -> None:
    """An RTCP BYE for the sender's stream, as aiortc's own task sends when it stops."""
    await sender._send_rtcp([aiortc.rtp.RtcpByePacket(sources=[sender_ssrc(sender)])])


def _srtp_binding() -> Any:
    """pylibsrtp's cffi module, looked up when used (never at import)."""
    return getattr(pylibsrtp, "_binding")  # noqa: B009


class SrtpCodec:
    """SRTP protect/unprotect on a pylibsrtp ``Session``'s own libsrtp context.

    pylibsrtp's ``Session.protect``/``unprotect`` allocate a C int and check types on
    every call, which costs about as much again as the cipher itself; the fast path does
    two per packet. This calls the same libsrtp functions on the same context (so replay
    windows and rollover counters are shared with aiortc's own use of the session) with
    buffers allocated once. pylibsrtp is pinned exactly for this (private names:
    ``Session._srtp``, the ``pylibsrtp._binding`` module). ``None`` means refused, and
    ``refused`` says why: libsrtp's status (``SRTP_REPLAY_FAIL``, ``SRTP_REPLAY_OLD``, or
    another failure) or ``SRTP_TOO_LARGE``.
    """

    __slots__ = (
        "_session",
        "_context",
        "_cdata",
        "_buffer",
        "_length",
        "_protect",
        "_unprotect",
        "_lock",
        "refused",
    )

    def __init__(self, session: Any, lock: LockPair | None = None) -> None:
        """``lock``: taken around each call into libsrtp (the media lock, when a compiled
        route may use the same context on its forwarder thread; ``LockedSrtpSession``)."""
        binding = _srtp_binding()
        ffi = binding.ffi
        self._session = session  # keeps the context alive: pylibsrtp frees it with the session
        self._context = session._srtp[0]
        self._cdata = ffi.new("char[]", _SRTP_BUFFER)
        self._buffer = ffi.buffer(self._cdata)
        self._length = ffi.new("int *")
        self._protect = binding.lib.srtp_protect
        self._unprotect = binding.lib.srtp_unprotect
        self._lock = lock
        self.refused = 0

    def _run(self, function: Any) -> int:
        lock = self._lock
        if lock is None:
            status: int = function(self._context, self._cdata, self._length)
            return status
        lock[0]()
        try:
            status = function(self._context, self._cdata, self._length)
        finally:
            lock[1]()
        return status

    def protect(self, packet: bytes) -> bytes | None:
        n = len(packet)
        if n > _SRTP_BUFFER - _SRTP_MAX_TRAILER:
            self.refused = SRTP_TOO_LARGE
            return None
        self._buffer[0:n] = packet
        self._length[0] = n
        status = self._run(self._protect)
        if status:
            self.refused = status
            return None
        out: bytes = self._buffer[0 : self._length[0]]
        return out

    def unprotect(self, packet: bytes) -> bytes | None:
        n = len(packet)
        if n > _SRTP_BUFFER:
            self.refused = SRTP_TOO_LARGE
            return None
        self._buffer[0:n] = packet
        self._length[0] = n
        status = self._run(self._unprotect)
        if status:
            self.refused = status
            return None
        out: bytes = self._buffer[0 : self._length[0]]
        return out


StatisticsState = tuple[int | None, int | None, int, int, int, int | None, int | None]


def statistics_state(stats: Any) -> StatisticsState:
    """What ``StreamStatistics.add`` reads and writes: (base_seq, max_seq, cycles,
    packets_received, jitter_q4, last_arrival, last_timestamp)."""
    return (
        stats.base_seq,
        stats.max_seq,
        stats.cycles,
        stats.packets_received,
        stats._jitter_q4,
        stats._last_arrival,
        stats._last_timestamp,
    )


def set_statistics_state(stats: Any, state: StatisticsState) -> None:
    """Write back what ``statistics_state`` read, after packets were counted elsewhere."""
    (
        stats.base_seq,
        stats.max_seq,
        stats.cycles,
        stats.packets_received,
        stats._jitter_q4,
        stats._last_arrival,
        stats._last_timestamp,
    ) = state


def rtcp_routes(dtls: RTCDtlsTransport) -> tuple[dict[int, Any], dict[int, Any]]:
    """A leg's RTCP routing, as aiortc's router reads it: remote SSRC → receiver (sender
    reports go there) and own SSRC → sender (report blocks about it go there). Both are
    the router's live dicts."""
    router = dtls._rtp_router
    return router.ssrc_table, router.senders


def _utc(wall: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC)


def note_remote_sender_report(
    receiver: RTCRtpReceiver, ssrc: int, ntp: int, packets: int, octets: int, arrival: float
) -> None:
    """What ``RTCRtpReceiver._handle_rtcp_packet`` does with the far end's sender report
    (from ``ssrc``) that arrived at ``arrival`` (``time.time()``): the remote-outbound
    statistics of ``getStats()``, and the LSR and its time for the receiver's report
    blocks (their DLSR counts from the arrival, as there)."""
    getattr(receiver, _RECEIVER_STATS).add(
        aiortc.RTCRemoteOutboundRtpStreamStats(
            timestamp=_utc(arrival),
            type="remote-outbound-rtp",
            id=f"remote-outbound-rtp_{id(receiver)}",
            ssrc=ssrc,
            kind=getattr(receiver, _RECEIVER_KIND),
            transportId=receiver.transport._stats_id,
            packetsSent=packets,
            bytesSent=octets,
            remoteTimestamp=aiortc.clock.datetime_from_ntp(ntp),
        )
    )
    getattr(receiver, _RECEIVER_LSR)[ssrc] = (ntp >> 16) & 0xFFFFFFFF
    getattr(receiver, _RECEIVER_LSR_TIME)[ssrc] = arrival


def note_report_block(
    sender: RTCRtpSender,
    reporter: int,
    block: aiortc.rtp.RtcpReceiverInfo,
    arrival: float,
    *,
    statistics: bool = True,
) -> None:
    """What ``RTCRtpSender._handle_rtcp_packet`` does with one report block of an SR or RR
    from ``reporter`` that arrived at ``arrival`` (``time.time()``): a round-trip time
    when the block echoes the sender's last report (smoothed with aiortc's ``RTT_ALPHA``),
    and the remote-inbound statistics of ``getStats()`` (``statistics=False``: not those,
    for a block a later one replaces before anything reads them). A block about another
    SSRC is ignored, as there."""
    if block.ssrc != sender._ssrc:
        return
    if getattr(sender, _SENDER_LSR) == block.lsr and block.dlsr:
        rtt = arrival - getattr(sender, _SENDER_LSR_TIME) - block.dlsr / 65536
        previous: float | None = getattr(sender, _SENDER_RTT)
        if previous is not None:
            alpha: float = aiortc.rtcrtpsender.RTT_ALPHA
            rtt = alpha * previous + (1 - alpha) * rtt
        setattr(sender, _SENDER_RTT, rtt)
    if not statistics:
        return
    getattr(sender, _SENDER_STATS).add(
        aiortc.RTCRemoteInboundRtpStreamStats(
            timestamp=_utc(arrival),
            type="remote-inbound-rtp",
            id="remote-inbound-rtp_" + str(id(sender)),
            ssrc=reporter,  # the reporter's, as aiortc fills it
            kind=getattr(sender, _SENDER_KIND),
            transportId=sender.transport._stats_id,
            packetsReceived=getattr(sender, SENDER_PACKETS) - block.packets_lost,
            packetsLost=block.packets_lost,
            jitter=block.jitter,
            roundTripTime=getattr(sender, _SENDER_RTT),
            fractionLost=block.fraction_lost,
        )
    )


class RtcpDelivery:
    """aiortc's handling of one leg's decrypted RTCP, in the steps its DTLS task takes:
    ``parse``, then for each packet ``recipients`` and each recipient's ``handler``
    coroutine (``RTCDtlsTransport._handle_rtcp_data``). The names are looked up here, when
    the first compound needs them, never at import (a release without them still
    imports; ``relay.media.capabilities`` keeps the compiled loop off then)."""

    __slots__ = ("_bye", "_parse", "_router", "_synchronous")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        rtp = aiortc.rtp
        self._parse: Callable[[bytes], list[Any]] = rtp.RtcpPacket.parse
        self._router = dtls._rtp_router
        self._bye = rtp.RtcpByePacket
        # The packet types whose handlers never suspend (aiortc 1.16.0, read there):
        # RTCRtpReceiver._handle_rtcp_packet awaits nothing at all (an SR adds stats and
        # the LSR; a BYE stops the decoder thread); RTCRtpSender._handle_rtcp_packet
        # awaits only in its NACK branch (an RTPFB packet, ``await self._retransmit``);
        # SDES is routed to nobody. tests/unit/test_aiortc_private.py checks the handlers'
        # source still says so.
        self._synchronous = frozenset(
            (rtp.RtcpSrPacket, rtp.RtcpRrPacket, rtp.RtcpSdesPacket, rtp.RtcpByePacket)
        )

    def parse(self, data: bytes) -> list[Any]:
        """The packets of a decrypted compound; ValueError when aiortc refuses it."""
        return self._parse(data)

    def synchronous(self, packet: Any) -> bool:
        """Whether every handler this packet reaches completes without suspending."""
        return type(packet) in self._synchronous

    def is_bye(self, packet: Any) -> bool:
        return type(packet) is self._bye

    def recipients(self, packet: Any) -> set[Any]:
        recipients: set[Any] = self._router.route_rtcp(packet)
        return recipients

    @staticmethod
    def handler(recipient: Any, packet: Any) -> Coroutine[Any, Any, None]:
        handle: Coroutine[Any, Any, None] = recipient._handle_rtcp_packet(packet)
        return handle


def srtp_function_addresses() -> tuple[int, int, int]:
    """The addresses of ``srtp_protect``, ``srtp_unprotect`` and ``srtp_unprotect_rtcp`` in
    the libsrtp pylibsrtp loaded (the one every session's context belongs to)."""
    binding = _srtp_binding()
    ffi, lib = binding.ffi, binding.lib
    return (
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect"))),
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect"))),
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect_rtcp"))),
    )


def srtp_context_address(session: Any) -> int:
    """The address of a pylibsrtp ``Session``'s ``srtp_t`` (valid while the session lives)."""
    address: int = int(_srtp_binding().ffi.cast("uintptr_t", session._srtp[0]))
    return address


def srtp_library_version() -> str:
    """libsrtp's own version string, as pylibsrtp loaded it (e.g. "libsrtp2 2.7.0")."""
    # pylibsrtp does not declare the function; its extension module exports it (libsrtp
    # is linked in statically), and dlopen of an already loaded library is that library.
    try:
        library = ctypes.CDLL(_srtp_binding().__file__)
        library.srtp_get_version_string.restype = ctypes.c_char_p
        version: bytes = library.srtp_get_version_string()
    except (OSError, AttributeError):
        return "unknown"
    return version.decode(errors="replace")


# aiortc's own version, kept for tests and comparisons (None: this aiortc has none).
AIORTC_AUDIO_LEVEL: Callable[[Any], int] | None = getattr(
    aiortc.rtp, "compute_audio_level_dbov", None
)


def install_fast_audio_level() -> bool:
    """Replace aiortc's per-frame audio-level function with a numpy version.

    On the decode/re-encode path the sender calls ``aiortc.rtp.compute_audio_level_dbov``
    on the event loop for every frame; aiortc's version loops over every sample in
    Python, the largest single cost of that path (docs/benchmarks.md, "Figures behind
    the code's choices"). The sender looks it
    up as a module attribute at call time, so replacing the attribute is enough.
    Process-wide and idempotent. False (nothing replaced) when aiortc has no such function.
    """
    if not hasattr(aiortc.rtp, "compute_audio_level_dbov"):
        return False
    aiortc.rtp.compute_audio_level_dbov = compute_audio_level_dbov
    return True


def fast_audio_level_installed() -> bool:
    return getattr(aiortc.rtp, "compute_audio_level_dbov", None) is compute_audio_level_dbov


# Each leg's SRTP replay window, in packets: 2.56 s of 20 ms audio (RFC 3711: at least 64).
SRTP_REPLAY_WINDOW = 128


class ReplayWindowPolicy(pylibsrtp.Policy):
    """pylibsrtp's ``Policy`` with the replay window capped at ``SRTP_REPLAY_WINDOW``."""

    @property
    def window_size(self) -> int:
        size: int = pylibsrtp.Policy.window_size.fget(self)  # type: ignore[attr-defined]
        return size

    @window_size.setter
    def window_size(self, value: int) -> None:
        capped = min(value, SRTP_REPLAY_WINDOW)
        pylibsrtp.Policy.window_size.fset(self, capped)  # type: ignore[attr-defined]


def install_srtp_replay_window() -> bool:
    """Have aiortc build each leg's SRTP sessions with a ``SRTP_REPLAY_WINDOW`` window.

    aiortc asks libsrtp for a 1,024-packet replay window on both sessions (20 s of audio).
    libsrtp shifts that bitmap word by word on every packet it protects or unprotects, and
    the copy pylibsrtp ships is built without optimisation: on the compiled loop the shift
    was about 4 % of the relay's CPU at 300 interviews, the largest single function of
    libsrtp's (docs/benchmarks.md, "A 128-packet SRTP replay window"). 128 packets are
    2.56 s of audio: a packet later than that is dropped as a replay, as it would have
    been useless to any jitter buffer. ``RTCDtlsTransport._setup_srtp`` looks ``Policy``
    up in its module at call time, so replacing that name is enough. Process-wide and
    idempotent; False when the module has no such name."""
    import aiortc.rtcdtlstransport as dtls_module

    if not isinstance(getattr(dtls_module, "Policy", None), type):
        return False
    # setattr: replacing the module's name on purpose (mypy refuses an assignment).
    setattr(dtls_module, "Policy", ReplayWindowPolicy)  # noqa: B010
    return True


def srtp_replay_window_installed() -> bool:
    import aiortc.rtcdtlstransport as dtls_module

    return getattr(dtls_module, "Policy", None) is ReplayWindowPolicy


# The aioice modules that open UDP sockets through ``asyncio.get_running_loop()``.
AIOICE_SOCKET_MODULES: tuple[types.ModuleType, ...] = (aioice.ice, aioice.turn)
_SHIM_PREFIX = "relay_asyncio_for_"


def aioice_version() -> str:
    return str(aioice.__version__)


def route_aioice_running_loop(get_loop: Callable[[], asyncio.AbstractEventLoop]) -> bool:
    """Make ``asyncio.get_running_loop()`` inside aioice's ice and turn modules call ``get_loop``.

    Each module's global ``asyncio`` is replaced by a copy of the real module whose only
    difference is ``get_running_loop`` (no per-call cost for anything else aioice uses).
    ``get_loop`` must return the running loop, or an object that behaves like it: the
    port range returns a wrapper only while a relay peer gathers candidates. Process-wide
    and idempotent. False (nothing routed) unless every module has its ``asyncio`` global:
    routing only some of the sockets would leave the others outside the range.
    """
    if not all(hasattr(module, "asyncio") for module in AIOICE_SOCKET_MODULES):
        return False
    for module in AIOICE_SOCKET_MODULES:
        current: types.ModuleType = getattr(module, "asyncio")  # noqa: B009
        if not current.__name__.startswith(_SHIM_PREFIX):
            shim = types.ModuleType(_SHIM_PREFIX + module.__name__)
            shim.__dict__.update(asyncio.__dict__)
            shim.__name__ = _SHIM_PREFIX + module.__name__  # the copy brought "asyncio"
            current = shim
        setattr(current, "get_running_loop", get_loop)  # noqa: B010
        setattr(module, "asyncio", current)  # noqa: B010
    return True


def aioice_running_loop_routed() -> bool:
    return all(
        getattr(m, "asyncio", asyncio).__name__.startswith(_SHIM_PREFIX)
        for m in AIOICE_SOCKET_MODULES
    )


# aioice's own address lister, kept before any replacement (see the module docstring).
_original_get_host_addresses: Callable[[bool, bool], list[str]] | None = getattr(
    aioice.ice, "get_host_addresses", None
)


def machine_host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    """What aioice gathers unless told otherwise: every interface address but 127.0.0.1,
    ::1 and scoped (link-local) IPv6 ones (aiortc's connections ask for both families).
    Empty when this aioice has no such function."""
    if _original_get_host_addresses is None:
        return []
    return _original_get_host_addresses(use_ipv4, use_ipv6)


def route_aioice_host_addresses(get_addresses: Callable[[bool, bool], list[str]]) -> bool:
    """Make aioice gather the addresses ``get_addresses(use_ipv4, use_ipv6)`` returns
    instead of its own list. Process-wide and idempotent. False (nothing replaced) when
    aioice has no module-level ``get_host_addresses`` to replace."""
    if not hasattr(aioice.ice, "get_host_addresses"):
        return False
    setattr(aioice.ice, "get_host_addresses", get_addresses)  # noqa: B010
    return True


def aioice_host_addresses_routed_to(get_addresses: Callable[[bool, bool], list[str]]) -> bool:
    return getattr(aioice.ice, "get_host_addresses", None) is get_addresses


# aioice's own pacing step, kept before any replacement (see install_prompt_ice_completion).
_original_check_periodic: Callable[[Any], bool] | None = getattr(
    aioice.ice.Connection, "_check_periodic", None
)


def _check_periodic_then_stop_pacing(connection: Any) -> bool:
    """aioice's step, but the pacing loop ends as soon as there is nothing left to start.

    ``Connection.connect`` starts one check, sleeps 20 ms (RFC 8445's Ta), and only then
    notices that nothing is left to start and waits for the check list's result. With the
    complete candidate lists SDP without trickle gives (one pair on a relay's legs) the
    check succeeds in a round trip, yet ``connect`` returned no sooner than 20 ms after it
    began: on the upstream leg, whose ICE starts once the upstream's answer is set, those
    20 ms came before the relay's DTLS could even start. Checks are still paced 20 ms
    apart while other pairs wait; later pairs (a triggered check, a peer-reflexive
    candidate) are started by aioice where they appear, as after the loop's own exit.
    """
    assert _original_check_periodic is not None  # installed only when it exists
    if not _original_check_periodic(connection):
        return False
    state = aioice.ice.CandidatePair.State
    unstarted = (state.WAITING, state.FROZEN)
    # A pair just started is still Waiting until its check task runs: ``task`` tells.
    return connection._remote_candidates_expected() or any(
        pair.state in unstarted and pair.task is None for pair in connection._check_list
    )


def install_prompt_ice_completion() -> bool:
    """Replace ``aioice.ice.Connection._check_periodic`` (see above). Process-wide and
    idempotent; ``connect`` looks the method up on each pass. False (aioice's own pacing
    kept) when aioice lacks a name the replacement uses."""
    connection = aioice.ice.Connection
    if (
        _original_check_periodic is None
        or not hasattr(connection, "_check_periodic")
        or not hasattr(connection, "_remote_candidates_expected")
        or not hasattr(aioice.ice.CandidatePair, "State")
    ):
        return False
    setattr(connection, "_check_periodic", _check_periodic_then_stop_pacing)  # noqa: B010
    return True


def prompt_ice_completion_installed() -> bool:
    current = getattr(aioice.ice.Connection, "_check_periodic", None)
    return current is _check_periodic_then_stop_pacing
