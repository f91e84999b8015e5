"""The forwarding fast path: Opus RTP from one leg's socket to the other leg's socket.

aiortc's own path for a relayed packet is: aioice queues the datagram, the DTLS task
wakes, unprotects and parses it into an ``RtpPacket``, the receiver hook puts an
``av.Packet`` into a queue track, the other leg's sender task wakes, builds a new
``RtpPacket`` with header extensions, serialises, protects and sends it through two
more coroutines. A bridged session therefore cost as much CPU as two aiortc endpoints.

``FastOpusForwarder`` does, synchronously inside the receiving leg's datagram callback:

    datagram in → SRTP unprotect → header rewrite → SRTP protect → datagram out

rewriting only what must change between the legs:

* SSRC: the sending leg's sender SSRC (what that leg announced, and what its RTCP
  sender reports describe);
* sequence number and timestamp: the incoming ones plus per-source offsets, so gaps
  (loss) stay visible to the far end, and a new incoming SSRC continues both
  timelines (one sequence number and at least one frame later);
* payload type: the sending leg's negotiated Opus payload type;
* header extensions: hop-by-hop ones (transport-wide sequence numbers, send times)
  are dropped, ``sdes:mid`` is the sending leg's own, and the audio level is carried
  over only when both legs negotiated it (with the sending leg's id). CSRCs and
  padding are dropped.

The Opus payload is copied byte for byte. RTCP keeps working through aiortc: the
receiving leg's ``StreamStatistics`` is fed per packet (its receiver reports, loss
and jitter), the incoming SSRC is bound in aiortc's RTCP router (so sender reports
reach the receiver and its receiver reports carry LSR/DLSR for the far end's RTT),
and the sending leg's sender gets the packet/octet counts and the RTP/NTP time pair
its RTCP task puts in every sender report. Every private name used lives in
``relay.media.aiortc_private``.

When the compiled loop is built and reads the legs' sockets (``relay.media.fastloop``),
the forwarder hands it the direction once its first packet went out in Python: a route
with the SRTP sessions, both sockets and everything the rewrite and the counters need.
From then on the loop forwards the direction's packets in C, exactly as ``_forward`` and
``_send`` would; the forwarder gets the route back (``compiled_plain``) for whatever
needs Python (a new SSRC), copies the route's counters into the objects that publish them
(``compiled_sync``), and takes the route away when the legs change or it stops. The loop
reads the receiving leg's SRTCP too: the far end's reports reach aiortc's receivers and
senders with the counters (``relay.media.rtcp_in.apply_reports``), other compounds come
back decrypted (``compiled_rtcp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import random
import struct
import time
from typing import Any

from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from relay.media import aiortc_private, fastloop, rtcp_in, rtcp_reports, udp
from relay.media.forwarding import OPUS_CLOCK_RATE, DirectionStats
from relay.media.sdp import AUDIO_LEVEL_EXTENSION, MID_EXTENSION, RtpLeg
from relay.media.tap import PacketTap, TappedPacket
from relay.tasks import spawn

log = logging.getLogger("relay.media")

_SEQ_TS_SSRC = struct.Struct("!HII")
_EXT_HEAD = struct.Struct("!HH")
_HEADER = struct.Struct("!BBHII")
_ONE_BYTE_PROFILE = 0xBEDE
_FRAME = 960  # 20 ms at 48 kHz
# Seconds between the NTP epoch (1900) and the Unix epoch (1970).
_NTP_UNIX_OFFSET = 2208988800
_NTP_ONE_SECOND = 1 << 32
# The newest packet that arrived before the sending leg was up goes out the moment it is
# (rather than waiting up to a frame for the next one) if it is still this fresh: the
# current frame, with some jitter; anything older would be stale audio.
HELD_PACKET_MAX_AGE_S = 0.03
_MASK64 = (1 << 64) - 1


def is_rtp(datagram: bytes) -> bool:
    """An SRTP (not SRTCP, not DTLS/STUN) datagram, by RFC 7983 / RFC 5761 demultiplexing."""
    return len(datagram) >= 12 and 127 < datagram[0] < 192 and not 191 < datagram[1] < 209


def extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """A one-byte-header RTP extension block (RFC 8285) holding ``elements``."""
    if not elements:
        return b""
    body = b"".join(bytes(((eid << 4) | (len(value) - 1),)) + value for eid, value in elements)
    body += b"\x00" * (-len(body) % 4)
    return _EXT_HEAD.pack(_ONE_BYTE_PROFILE, len(body) // 4) + body


def extension_blocks_by_level(base: list[tuple[int, bytes]], level_id: int) -> list[bytes]:
    """``extension_block([*base, (level_id, bytes((level,)))])`` for each level 0..255.

    Built by splicing each level byte into one block (the forwarder builds these while
    the exchange waits for its answer: 256 full builds cost about a millisecond)."""
    block = extension_block([*base, (level_id, b"\x00")])
    at = _EXT_HEAD.size + sum(1 + len(value) for _, value in base) + 1
    head, tail = block[:at], block[at + 1 :]
    return [head + bytes((level,)) + tail for level in range(256)]


def find_one_byte_extension(data: bytes, start: int, end: int, wanted: int) -> int | None:
    """The first byte of extension ``wanted`` in a one-byte-header block, if present."""
    i = start
    while i < end:
        b = data[i]
        if b == 0:  # padding between elements
            i += 1
            continue
        eid = b >> 4
        if eid == 15:  # reserved: stop parsing (RFC 8285 4.2)
            return None
        if eid == wanted:
            return data[i + 1] if i + 1 < end else None
        i += 2 + (b & 0x0F)
    return None


class _SeqTs:
    """The two fields aiortc's ``StreamStatistics.add`` reads, reused per packet."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


class FastOpusForwarder:
    """Forwards one direction's Opus packets from ``receiver``'s leg to ``sender``'s leg."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        sender: RTCRtpSender,
        stats: DirectionStats,
        opus_payload_types: frozenset[int],
        *,
        incoming: RtpLeg,
        outgoing: RtpLeg,
        tap: PacketTap | None = None,
    ) -> None:
        if outgoing.payload_type is None:
            raise ValueError("the sending leg negotiated no audio payload type")
        self._tap = tap
        self._receiver = receiver
        self._sender = sender
        self._stats = stats
        self._opus = opus_payload_types
        self._in_dtls = receiver.transport
        self._out_dtls = sender.transport
        self._out_pt = outgoing.payload_type
        self._out_ssrc = aiortc_private.sender_ssrc(sender)
        self._report = aiortc_private.SenderReportState(sender)
        self._pairs = aiortc_private.nominated_pairs(self._out_dtls)
        self._in_pairs = aiortc_private.nominated_pairs(self._in_dtls)
        # The compiled loop's route while it carries this direction, the selected pairs it
        # was made for, and the pairs a route could not be made for (relay.media.fastloop).
        self._route: Any = None
        self._route_loop: Any = None
        self._route_pairs: tuple[Any, Any] | None = None
        self._route_refused: tuple[Any, Any] | None = None
        self._pair: Any = None
        self._sock: Any = None
        self._addr: tuple[str, int] | None = None
        self._rx: Any = None
        self._tx: Any = None
        # The far end's compounds the compiled loop hands over (feedback, BYE).
        self.handed_rtcp = rtcp_in.HandedRtcp(self._in_dtls)
        self._original: aiortc_private.DatagramHook | None = None
        # NTP timestamp (64-bit fixed point) = base + monotonic seconds * 2^32.
        self._ntp_base = int((time.time() + _NTP_UNIX_OFFSET - time.monotonic()) * _NTP_ONE_SECOND)
        self._seen = _SeqTs()
        self._rtcp_stats: Any = None
        self._ssrc: int | None = None
        # Output timelines start at random points, as aiortc's sender does (sequence
        # numbers in the lower half, away from a wrap-around early in the call).
        self._hi_seq = (random.getrandbits(16) % 32768 - 1) & 0xFFFF
        self._hi_ts = random.getrandbits(32)
        self._seq_off = 0
        self._ts_off = 0
        self._last_forward_at: float | None = None
        self.packets_sent = 0
        self.octets_sent = 0
        self.errors = 0
        # (marker+payload type byte, seq, ts, audio level, payload, arrival): the newest
        # packet dropped because the sending leg was not up yet (``_send_held``).
        self._held: tuple[int, int, int, int | None, bytes, float] | None = None
        self._held_task: asyncio.Task[None] | None = None

        # Header extensions: computed once per direction; per packet only a lookup.
        mid_id = outgoing.extensions.get(MID_EXTENSION)
        mid_value = (outgoing.mid or "").encode()
        base: list[tuple[int, bytes]] = []
        if mid_id is not None and 0 < len(mid_value) <= 16:
            base.append((mid_id, mid_value))
        self._ext_plain = extension_block(base)
        self._level_in = incoming.extensions.get(AUDIO_LEVEL_EXTENSION)
        level_out = outgoing.extensions.get(AUDIO_LEVEL_EXTENSION)
        self._ext_by_level: list[bytes] | None = None
        # For the compiled loop: one block, and where in it the level byte goes.
        self._level_at = 0
        if self._level_in is not None and level_out is not None:
            self._ext_by_level = extension_blocks_by_level(base, level_out)
            self._level_at = next(
                i for i, (a, b) in enumerate(zip(*self._ext_by_level[:2], strict=True)) if a != b
            )
        else:
            self._level_in = None

    # ------------------------------------------------------------------ lifecycle
    def continue_from(self, previous: FastOpusForwarder) -> None:
        """Send on from where ``previous`` stopped: it sent on the same leg (this one
        replaces it when the browser's leg is resumed), so the outgoing sequence numbers
        and timestamps continue from its last packet, as after a change of source, and
        the sender report's counts go on. Call before ``start``. The far end sees one
        stream with a pause (its SRTP replay window refuses a sequence that goes back).

        Where the compiled loop carried ``previous``'s packets, its counters are the loop's
        route: ``previous`` takes them back first (``stop`` did, if it ran), and this
        forwarder hands its own route the continued timelines once its first packet went
        out (``_attach``)."""
        previous._release()
        self._hi_seq, self._hi_ts = previous._hi_seq, previous._hi_ts
        self._last_forward_at = previous._last_forward_at
        self.packets_sent, self.octets_sent = previous.packets_sent, previous.octets_sent

    def start(self) -> None:
        self._stats.mode = "passthrough"
        self._stats.fast_path = True
        self._original = aiortc_private.install_datagram_hook(self._in_dtls, self.on_datagram)
        aiortc_private.install_decrypted_rtp_hook(self._in_dtls, self._on_decrypted)
        self._held_task = spawn(self._send_held(), name="fast-path-held", log=log)

    async def stop(self) -> None:
        # Idempotent: removing hooks that are gone is a no-op (``Forwarder`` protocol).
        self._release()
        aiortc_private.remove_datagram_hook(self._in_dtls)
        aiortc_private.remove_decrypted_rtp_hook(self._in_dtls)
        task, self._held_task = self._held_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send_held(self) -> None:
        """Once the sending leg is up, send the packet it was not up for, if still fresh.

        Packets arriving before then are dropped (``dropped_not_connected``): when the
        other leg connected first (the upstream's leg usually does: its ICE starts while
        the browser still waits for its answer), the first reply audio would otherwise
        reach the browser only with the next frame, up to 20 ms after it could."""
        await aiortc_private.wait_sender_started(self._sender)
        held, self._held = self._held, None
        if held is None or self.packets_sent:
            return  # nothing held, or a newer packet went out first
        b1, seq, ts, level, payload, arrived = held
        if time.monotonic() - arrived > HELD_PACKET_MAX_AGE_S:
            return
        try:
            if self._send(b1, seq, ts, level, payload, time.monotonic()):
                self._stats.dropped_not_connected -= 1  # sent after all
        except Exception:
            self.errors += 1
            log.exception("fast path: sending the held packet failed")

    # ------------------------------------------------------------------ per packet
    def feed_directly(self, not_rtp: aiortc_private.DatagramHook) -> None:
        """Instead of ``start`` hooking aiortc's leg: the caller hands each datagram of the
        receiving leg to ``on_datagram`` itself, and whatever is not RTP goes on to
        ``not_rtp`` (the benchmarks drive the fast path so, around stand-ins of aiortc's
        objects)."""
        self._original = not_rtp

    def on_datagram(self, data: bytes, component: int) -> None:
        """One datagram of the receiving leg, as aioice's connection hands it over (the
        hook ``start`` installs)."""
        original = self._original
        assert original is not None
        if not (len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 209):
            original(data, component)  # DTLS (data channel), SRTCP: aiortc's path
            return
        if self._route is not None:
            # RTP the compiled loop did not read (another socket of the leg): Python's
            # turn, with the loop's counters; the next packet sent hands it back.
            self._release()
        rx = self._rx
        if rx is None:
            # Until the handshake is done, and until aiortc's task has worked through
            # what arrived before it (``_on_decrypted`` forwards those), RTP keeps
            # aiortc's path: taking over earlier would overtake queued packets.
            session = aiortc_private.srtp_sessions(self._in_dtls)[0]
            if session is None or aiortc_private.queued_datagrams(self._in_dtls):
                original(data, component)
                return
            rx = self._rx = aiortc_private.SrtpCodec(session, fastloop.srtp_lock())
        plain = rx.unprotect(data)
        if plain is None:  # authentication or replay check failed
            count_refused(self._stats, rx.refused)
            return
        self._forward_guarded(plain)

    async def _on_decrypted(self, plain: bytes, arrival_time_ms: int) -> None:
        """RTP that arrived before this leg's SRTP keys, decrypted later by aiortc's task."""
        self._release()
        self._forward_guarded(plain)

    def _forward_guarded(self, plain: bytes) -> None:
        """``_forward``, counting (and logging the first of) what it raises: one odd packet
        never raises into the socket callback or the task that hands it over."""
        try:
            self._forward(plain)
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log.exception("fast path: packet forwarding failed")

    def _forward(self, plain: bytes) -> None:
        stats = self._stats
        n = len(plain)
        b0 = plain[0]
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(plain, 2)
        offset = 12 + ((b0 & 0x0F) << 2)
        level: int | None = None
        if b0 & 0x10:
            if n < offset + 4:
                stats.dropped_invalid += 1
                return
            profile, words = _EXT_HEAD.unpack_from(plain, offset)
            start = offset + 4
            offset = start + (words << 2)
            if self._level_in is not None and profile == _ONE_BYTE_PROFILE and offset <= n:
                level = find_one_byte_extension(plain, start, offset, self._level_in)
        end = n - plain[-1] if b0 & 0x20 else n
        if end < offset:
            stats.dropped_invalid += 1
            return
        payload = plain[offset:end]
        stats.packets_in += 1
        stats.bytes_in += end - offset
        now = time.monotonic()
        if stats.first_packet_at is None:
            stats.first_packet_at = now
        stats.last_packet_at = now
        if ssrc != self._ssrc:
            self._switch_source(ssrc, seq, ts, now)
        seen = self._seen
        seen.sequence_number = seq
        seen.timestamp = ts
        self._rtcp_stats.add(seen)
        b1 = plain[1]
        if (b1 & 0x7F) not in self._opus:
            stats.dropped_other_codec += 1
            return
        if offset == end:
            return  # padding only
        # No duplicate check here: SRTP's replay protection has already refused any
        # packet index seen before (counted as ``invalid``).
        tap = self._tap
        if tap is not None:
            tap.on_packet(
                TappedPacket("opus", OPUS_CLOCK_RATE, payload, seq, ts, ssrc, b1 > 127, now)
            )

        if not self._send(b1, seq, ts, level, payload, now):
            stats.dropped_not_connected += 1  # the other leg is not (or no longer) up
            if not self.packets_sent:
                self._held = (b1, seq, ts, level, payload, now)
        elif self._route is None:
            try:
                self._attach()
            except Exception:  # the packet went out; the direction stays in Python
                log.exception("fast path: handing the direction to the compiled loop failed")

    def _send(
        self, b1: int, seq: int, ts: int, level: int | None, payload: bytes, now: float
    ) -> bool:
        """Rewrite, protect and send one packet; False if the sending leg is not up."""
        stats = self._stats
        tx = self._tx
        if tx is None and aiortc_private.sender_started(self._sender):
            session = aiortc_private.srtp_sessions(self._out_dtls)[1]
            if session is not None:
                tx = self._tx = aiortc_private.SrtpCodec(session, fastloop.srtp_lock())
        pair = self._pairs.get(1)
        if tx is None or pair is None:
            return False
        if pair is not self._pair:
            self._pair = pair
            self._sock, self._addr = aiortc_private.pair_endpoint(pair)

        out_seq = (seq + self._seq_off) & 0xFFFF
        out_ts = (ts + self._ts_off) & 0xFFFFFFFF
        by_level = self._ext_by_level
        ext = self._ext_plain if by_level is None or level is None else by_level[level]
        header = _HEADER.pack(
            0x90 if ext else 0x80, (b1 & 0x80) | self._out_pt, out_seq, out_ts, self._out_ssrc
        )
        protected = tx.protect(header + ext + payload)
        if protected is None:
            count_refused(stats, tx.refused)
            return True
        self._sock.sendto(protected, self._addr)

        if ((out_seq - self._hi_seq) & 0xFFFF) < 0x8000:
            self._hi_seq = out_seq
            self._hi_ts = out_ts
        self._last_forward_at = now
        size = len(payload)
        self.packets_sent += 1
        self.octets_sent += size
        stats.forwarded += 1
        stats.forwarded_bytes += size
        # NTP time of this packet from the monotonic reading already taken (a wall-clock
        # read and a float-to-int of a 64-bit NTP value per packet cost more).
        self._report.record(
            self._ntp_base + int(now * _NTP_ONE_SECOND),
            out_ts,
            self.packets_sent & 0xFFFFFFFF,
            self.octets_sent & 0xFFFFFFFF,
        )
        return True

    # ------------------------------------------------------------------ compiled loop
    def _attach(self) -> None:
        """Hand the direction to the compiled loop, if it reads both legs' sockets."""
        pairs = (self._in_pairs.get(1), self._pair)
        if pairs == self._route_refused:
            return
        self._route_refused = pairs  # until either selected pair changes (tried once)
        in_pair, out_pair = pairs
        if in_pair is None or out_pair is None or self._ssrc is None or self._addr is None:
            return
        in_end = aiortc_private.pair_endpoint(in_pair)[0]
        compiled = udp.compiled_loop_of(in_end, self._sock)
        rx_session = aiortc_private.srtp_sessions(self._in_dtls)[0]
        tx_session = aiortc_private.srtp_sessions(self._out_dtls)[1]
        lock = fastloop.srtp_lock()
        if compiled is None or rx_session is None or tx_session is None or lock is None:
            return  # a TURN leg, no compiled loop, or not this loop's sockets
        # aiortc's own use of these sessions waits for the loop's forwarder from now on.
        aiortc_private.guard_srtp(self._in_dtls, lock)
        aiortc_private.guard_srtp(self._out_dtls, lock)
        try:
            route = fastloop.new_route(
                in_fd=in_end.fileno,
                out_fd=self._sock.fileno,
                out_addr=self._addr,
                rx_session=rx_session,
                tx_session=tx_session,
                owner=self,
            )
        except ValueError:
            return  # an address the loop cannot send to (a scoped IPv6 one)
        by_level = self._ext_by_level
        route.set_rewrite(
            self._out_ssrc,
            self._out_pt,
            self._opus,
            -1 if self._level_in is None else self._level_in,
            self._ext_plain,
            by_level[0] if by_level is not None else b"",
            self._level_at,
        )
        self._store(route)
        compiled.add_route(route)
        self._route, self._route_loop, self._route_pairs = route, compiled, pairs
        self._route_refused = None
        self._stats.compiled = True
        # The loop keeps the far end's reports until the next sync: the leg's own report
        # reads what they set (LSR), and compares with what it changes (the sender's LSR).
        rtcp_reports.before_report(self._in_dtls, self.refresh)

    def _detach(self) -> None:
        route, self._route = self._route, None
        if route is not None:
            self._route_loop.remove_route(route)
            self._route_loop = None
            self._stats.compiled = False
            rtcp_reports.forget(self._in_dtls, self.refresh)

    def _release(self) -> None:
        """Take the direction back from the compiled loop, with its counters."""
        route = self._route
        if route is not None:
            with fastloop.locked():  # no packet forwarded between the two uncounted
                self._load(route)
                self._detach()

    def _store(self, route: Any) -> None:
        """This forwarder's state into ``route`` (the loop goes on from it)."""
        stats = self._stats
        route.ssrc = self._ssrc
        route.seq_off = self._seq_off
        route.ts_off = self._ts_off
        route.tap = self._tap is not None
        route.packets_in = stats.packets_in
        route.bytes_in = stats.bytes_in
        route.forwarded = stats.forwarded
        route.forwarded_bytes = stats.forwarded_bytes
        route.dropped_invalid = stats.dropped_invalid
        route.dropped_duplicate = stats.dropped_duplicate
        route.dropped_late = stats.dropped_late
        route.dropped_other_codec = stats.dropped_other_codec
        route.first_packet_at = _or_nan(stats.first_packet_at)
        route.last_packet_at = _or_nan(stats.last_packet_at)
        route.hi_seq = self._hi_seq
        route.hi_ts = self._hi_ts
        route.last_forward_at = _or_nan(self._last_forward_at)
        route.packets_sent = self.packets_sent
        route.octets_sent = self.octets_sent
        route.ntp_base = self._ntp_base & _MASK64
        state = aiortc_private.statistics_state(self._rtcp_stats)
        (
            route.base_seq,
            route.max_seq,
            route.cycles,
            route.received,
            route.jitter_q4,
            route.last_arrival,
            route.last_timestamp,
        ) = (-1 if value is None else value for value in state)

    def _load(self, route: Any) -> None:
        """``route``'s counters into the objects that publish them (and this forwarder)."""
        # Read together in one call while the loop's forwarder thread (if any) waits: it
        # updates them per packet. Nothing else runs under the lock, so the interpreter
        # never hands itself to another thread while the forwarder waits.
        with fastloop.locked():
            (
                packets_in, bytes_in, forwarded, forwarded_bytes, dropped_invalid,
                dropped_duplicate, dropped_late, dropped_other_codec, first_packet_at,
                last_packet_at, hi_seq, hi_ts, last_forward_at, sent, octets_sent, sr_ntp,
                sr_rtp_ts, base, top, cycles, received, jitter_q4, arrival, timestamp,
            ) = _route_counters(route)  # fmt: skip
        stats = self._stats
        stats.packets_in = packets_in
        stats.bytes_in = bytes_in
        stats.forwarded = forwarded
        stats.forwarded_bytes = forwarded_bytes
        stats.dropped_invalid = dropped_invalid
        stats.dropped_duplicate = dropped_duplicate
        stats.dropped_late = dropped_late
        stats.dropped_other_codec = dropped_other_codec
        stats.first_packet_at = _or_none(first_packet_at)
        stats.last_packet_at = _or_none(last_packet_at)
        self._hi_seq = hi_seq
        self._hi_ts = hi_ts
        self._last_forward_at = _or_none(last_forward_at)
        if sent != self.packets_sent:
            self.packets_sent = sent
            self.octets_sent = octets_sent
            self._report.record(sr_ntp, sr_rtp_ts, sent & 0xFFFFFFFF, octets_sent & 0xFFFFFFFF)
        aiortc_private.set_statistics_state(
            self._rtcp_stats,
            (
                None if base < 0 else base,
                None if top < 0 else top,
                cycles,
                received,
                jitter_q4,
                None if arrival < 0 else arrival,
                None if timestamp < 0 else timestamp,
            ),
        )
        if route.rtcp_pending:
            rtcp_in.apply_reports(self._in_dtls, route.take_rtcp())

    def refresh(self) -> None:
        if self._route is not None:
            self._load(self._route)

    def compiled_sync(self, route: Any) -> None:
        if route is not self._route:
            return  # taken back meanwhile (its counters were loaded then)
        if (self._in_pairs.get(1), self._pairs.get(1)) != self._route_pairs:
            self._release()  # a leg selected another pair: Python's path picks it up
        else:
            self._load(route)

    def compiled_plain(self, route: Any, plain: bytes) -> None:
        # Under the media lock throughout: the route is paused, so its forwarder thread
        # neither forwards nor counts for it, and nothing it counts (a refusal) is lost
        # between the load and the store.
        with fastloop.locked():
            current = route is self._route
            if current:
                self._load(route)
            self._forward_guarded(plain)
            resume = False
            if current and self._route is route:
                pairs = (self._in_pairs.get(1), self._pairs.get(1))
                if route.out_fd < 0 or pairs != self._route_pairs or self._ssrc is None:
                    self._detach()  # the sending socket closed, or a leg changed its pair
                else:
                    self._store(route)
                    resume = True
            # The loop goes on from this state once every packet it handed over is handled
            # (others of the route may be queued behind this one: they must not be
            # overtaken).
            route.plain_handled(resume)

    def compiled_rtcp(self, route: Any, plain: bytes) -> None:
        if route is self._route:
            self._load(route)  # the reports queued before this compound go first
        self.handed_rtcp.handle(plain)

    def compiled_tap(
        self, payload: bytes, seq: int, ts: int, ssrc: int, marker: bool, arrival: float
    ) -> None:
        tap = self._tap
        if tap is not None:
            tap.on_packet(
                TappedPacket("opus", OPUS_CLOCK_RATE, payload, seq, ts, ssrc, marker, arrival)
            )

    def _switch_source(self, ssrc: int, seq: int, ts: int, now: float) -> None:
        """A new incoming SSRC: continue the outgoing sequence and timestamp timelines."""
        self._held = None  # its offsets were the old source's
        if self._ssrc is not None:
            self._stats.ssrc_changes += 1
        # The next frame after the last one sent, or as much later as time has passed.
        gap = _FRAME
        if self._last_forward_at is not None:
            frames = round((now - self._last_forward_at) * OPUS_CLOCK_RATE / _FRAME)
            gap = max(1, frames) * _FRAME
        self._seq_off = (self._hi_seq + 1 - seq) & 0xFFFF
        self._ts_off = (self._hi_ts + gap - ts) & 0xFFFFFFFF
        self._ssrc = ssrc
        self._rtcp_stats = aiortc_private.receiver_statistics(self._receiver, ssrc, OPUS_CLOCK_RATE)
        aiortc_private.bind_remote_ssrc(self._receiver, ssrc)


def count_refused(stats: DirectionStats, status: int) -> None:
    """A packet libsrtp refused, by why (the compiled loop's ``count_refused``)."""
    if status == aiortc_private.SRTP_REPLAY_FAIL:
        stats.dropped_duplicate += 1
    elif status == aiortc_private.SRTP_REPLAY_OLD:
        stats.dropped_late += 1
    else:
        stats.dropped_invalid += 1


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


# Every counter ``_load`` reads from a route, in one call (one C-level call: no bytecode
# runs between the reads, so the interpreter cannot switch threads under the media lock).
_route_counters = operator.attrgetter(
    "packets_in",
    "bytes_in",
    "forwarded",
    "forwarded_bytes",
    "dropped_invalid",
    "dropped_duplicate",
    "dropped_late",
    "dropped_other_codec",
    "first_packet_at",
    "last_packet_at",
    "hi_seq",
    "hi_ts",
    "last_forward_at",
    "packets_sent",
    "octets_sent",
    "sr_ntp",
    "sr_rtp_ts",
    "base_seq",
    "max_seq",
    "cycles",
    "received",
    "jitter_q4",
    "last_arrival",
    "last_timestamp",
)


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
