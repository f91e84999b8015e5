"""Moving audio from one leg's receiver to the other leg's sender, one direction each.

Two ways, chosen per direction when both legs are negotiated:

* ``OpusPassthrough`` (both legs speak Opus, the normal case): every RTP packet is
  taken from the receiver as it arrives (the raw hook in ``aiortc_private``), and its
  Opus payload goes, still encoded, into the other leg's ``BoundedQueueTrack`` as an
  ``av.Packet``; aiortc's sender packs it into RTP without encoding. No decoder, no
  jitter buffer, no thread hop: nothing holds a packet back, so the added latency is the
  relay's own handling (docs/benchmarks.md).
* ``DecodedRelay`` (a leg negotiated PCMU/PCMA/G.722): aiortc's normal path decodes
  into frames (its jitter buffer and decoder thread), the frames go into the other
  leg's queue track, and the sender encodes them for its codec.

Both keep per-direction counters in a ``DirectionStats`` (plain ints: the hot path
does no locking and no metric-label lookups; the bridge publishes deltas to the
metrics registry about once a second).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import av
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from relay.media import aiortc_private
from relay.media.tap import PacketTap, TappedPacket
from relay.media.tracks import BoundedQueueTrack
from relay.tasks import cancel_and_wait, spawn

Direction = Literal["browser_to_upstream", "upstream_to_browser"]
Mode = Literal["pending", "passthrough", "decode"]

OPUS_CLOCK_RATE = 48000
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_CLOCK_RATE)
# Where a new SSRC's timeline continues after the previous one: one 20 ms frame later.
_SSRC_SWITCH_GAP = 960
_DUPLICATE_WINDOW = 64
# RTP clock rates of the codecs the decode path may see (G.722's RTP clock is 8 kHz).
CLOCK_RATES = {"opus": OPUS_CLOCK_RATE, "pcmu": 8000, "pcma": 8000, "g722": 8000}


@dataclass
class DirectionStats:
    """Counters of one direction; ints only, updated on the event loop."""

    direction: Direction
    mode: Mode = "pending"
    codec_in: str | None = None
    codec_out: str | None = None
    packets_in: int = 0
    bytes_in: int = 0
    # Packets (passthrough) or frames (decode) handed to the other leg's sender.
    forwarded: int = 0
    forwarded_bytes: int = 0
    frames_decoded: int = 0
    dropped_other_codec: int = 0
    dropped_duplicate: int = 0
    # Decode path: packets dropped because aiortc's decoder fell this far behind.
    dropped_decoder_backlog: int = 0
    # Fast path: packets that failed SRTP authentication or RTP checks, and packets that
    # arrived while the other leg had no SRTP session or selected pair yet (or any more).
    # Refused by SRTP's replay check instead: a copy of a packet already taken counts as
    # ``dropped_duplicate``, one too far behind the newest as ``dropped_late``. libsrtp
    # checks the index before authenticating, so those include forged packets that name
    # the stream's SSRC with an old index (docs/media.md, "Duplicates").
    dropped_invalid: int = 0
    dropped_late: int = 0
    dropped_not_connected: int = 0
    ssrc_changes: int = 0
    # True when the direction runs on ``relay.media.fastpath`` rather than aiortc's sender.
    fast_path: bool = False
    # True while the compiled loop (``relay.media.fastloop``) carries its packets.
    compiled: bool = False
    first_packet_at: float | None = None
    last_packet_at: float | None = None

    def last_media_age_s(self, now: float) -> float | None:
        return None if self.last_packet_at is None else now - self.last_packet_at


class RtpTimeline:
    """Maps 32-bit RTP timestamps (48 kHz for Opus) to a continuous sender pts.

    Unwraps with signed 32-bit differences, so reordered packets move back a little
    instead of looking like a wrap-around (aiortc's ``TimestampMapper`` treats any
    decrease as a wrap, which is only safe behind its jitter buffer). A new SSRC
    continues the timeline one frame after the latest pts seen.
    """

    def __init__(self) -> None:
        self._last_ts: int | None = None
        self._ext = 0
        self._base = 0
        self._max_pts: int | None = None

    def restart(self) -> None:
        """The next timestamp starts a new stream (the source changed SSRC)."""
        if self._max_pts is not None:
            self._base = self._max_pts + _SSRC_SWITCH_GAP
        self._last_ts = None
        self._ext = 0

    def map(self, timestamp: int) -> int:
        last = self._last_ts
        if last is not None:
            delta = (timestamp - last) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            self._ext += delta
        self._last_ts = timestamp
        pts = self._base + self._ext
        if self._max_pts is None or pts > self._max_pts:
            self._max_pts = pts
        return pts


class DuplicateFilter:
    """Recognises RTP sequence numbers seen among the last 64 (arrival-order forwarding
    has no jitter buffer to drop network duplicates)."""

    def __init__(self) -> None:
        self._highest: int | None = None
        self._mask = 0

    def reset(self) -> None:
        self._highest = None
        self._mask = 0

    def seen(self, seq: int) -> bool:
        highest = self._highest
        if highest is None:
            self._highest, self._mask = seq, 1
            return False
        delta = (seq - highest) & 0xFFFF
        if delta == 0:
            return True
        if delta < 0x8000:  # newer
            self._mask = ((self._mask << delta) | 1) & ((1 << _DUPLICATE_WINDOW) - 1)
            self._highest = seq
            return False
        age = 0x10000 - delta
        if age >= _DUPLICATE_WINDOW:
            return False  # too old to tell; forward it, the far end's jitter buffer decides
        bit = 1 << age
        if self._mask & bit:
            return True
        self._mask |= bit
        return False


class OpusPassthrough:
    """Forwards encoded Opus from ``receiver`` into ``sink`` without decoding."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        sink: BoundedQueueTrack,
        stats: DirectionStats,
        opus_payload_types: frozenset[int],
        *,
        keep_receiver_reports: bool = True,
        tap: PacketTap | None = None,
    ) -> None:
        self._receiver = receiver
        self._tap = tap
        self._sink = sink
        self._stats = stats
        self._opus = opus_payload_types
        self._keep_reports = keep_receiver_reports
        self._timeline = RtpTimeline()
        self._duplicates = DuplicateFilter()
        self._ssrc: int | None = None
        self._rtcp_stats: Any = None
        self._clock = time.monotonic

    def continue_from(self, previous: OpusPassthrough) -> None:
        """Send on from where ``previous`` (this direction's forwarder before the browser's
        leg was replaced by a resumed one) stopped: the same sender timeline, the first
        packet of the new source continuing it (call before ``start``)."""
        self._timeline = previous._timeline
        # Taken for a source change, which continues the timeline one frame later.
        self._ssrc = previous._ssrc

    def start(self) -> None:
        self._stats.mode = "passthrough"
        aiortc_private.install_rtp_hook(self._receiver, self.on_rtp)

    async def stop(self) -> None:
        aiortc_private.remove_rtp_hook(self._receiver)

    def refresh(self) -> None:
        pass  # counted per packet

    async def on_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """One encoded packet, as aiortc's receiver hands it over (the hook ``start``
        installs; a benchmark may feed packets directly)."""
        stats = self._stats
        payload = packet.payload
        stats.packets_in += 1
        stats.bytes_in += len(payload)
        now = self._clock()
        if stats.first_packet_at is None:
            stats.first_packet_at = now
        stats.last_packet_at = now
        if packet.ssrc != self._ssrc:
            self._switch_source(packet.ssrc)
        if self._rtcp_stats is not None:
            self._rtcp_stats.add(packet)
        if packet.payload_type not in self._opus:
            stats.dropped_other_codec += 1
            return
        if not payload:
            return  # padding-only packet
        if self._duplicates.seen(packet.sequence_number):
            stats.dropped_duplicate += 1
            return
        if self._tap is not None:
            self._tap.on_packet(
                TappedPacket(
                    "opus",
                    OPUS_CLOCK_RATE,
                    payload,
                    packet.sequence_number,
                    packet.timestamp,
                    packet.ssrc,
                    bool(packet.marker),
                    now,
                )
            )
        out = av.Packet(payload)
        out.pts = self._timeline.map(packet.timestamp)
        out.time_base = OPUS_TIME_BASE
        self._sink.put(out)
        stats.forwarded += 1
        stats.forwarded_bytes += len(payload)

    def _switch_source(self, ssrc: int) -> None:
        if self._ssrc is not None:
            self._stats.ssrc_changes += 1
            self._timeline.restart()
        self._ssrc = ssrc
        self._duplicates.reset()
        if self._keep_reports:
            self._rtcp_stats = aiortc_private.receiver_statistics(
                self._receiver, ssrc, OPUS_CLOCK_RATE
            )


class DecodedRelay:
    """Fallback: aiortc decodes ``receiver``'s audio; frames go into ``sink`` for encoding.

    With ``count_packets`` False (an aiortc without the receiver hook, relay.media.
    capabilities) nothing is installed on the receiver: packets take aiortc's path
    untouched, the counters count decoded frames, and the tap sees nothing."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        sink: BoundedQueueTrack,
        stats: DirectionStats,
        *,
        max_backlog: int,
        tap: PacketTap | None = None,
        codec: str = "opus",
        count_packets: bool = True,
        bound_backlog: bool = True,
        fast_audio_level: bool = True,
    ) -> None:
        self._receiver = receiver
        self._tap = tap
        self._codec = codec
        self._sink = sink
        self._stats = stats
        self._max_backlog = max_backlog
        self._count_packets = count_packets
        self._bound_backlog = bound_backlog
        self._fast_audio_level = fast_audio_level
        self._original = aiortc_private.original_rtp_handler(receiver) if count_packets else None
        self._pump: asyncio.Task[None] | None = None
        self._clock = time.monotonic

    def start(self) -> None:
        self._stats.mode = "decode"
        if self._fast_audio_level:
            # aiortc's sender measures each frame's audio level on the event loop, in a
            # pure-Python loop over every sample: this path's largest single cost.
            aiortc_private.install_fast_audio_level()
        if self._count_packets:
            aiortc_private.install_rtp_hook(self._receiver, self._count_then_handle)
        self._pump = spawn(self._run(), name=f"decode-{self._stats.direction}")

    async def stop(self) -> None:
        if self._count_packets:
            aiortc_private.remove_rtp_hook(self._receiver)
        pump, self._pump = self._pump, None
        await cancel_and_wait(pump)

    def refresh(self) -> None:
        pass  # counted per packet

    async def _count_then_handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        stats = self._stats
        stats.packets_in += 1
        stats.bytes_in += len(packet.payload)
        now = self._clock()
        if stats.first_packet_at is None:
            stats.first_packet_at = now
        stats.last_packet_at = now
        if self._tap is not None and packet.payload:
            self._tap.on_packet(
                TappedPacket(
                    self._codec,
                    CLOCK_RATES.get(self._codec, OPUS_CLOCK_RATE),
                    packet.payload,
                    packet.sequence_number,
                    packet.timestamp,
                    packet.ssrc,
                    bool(packet.marker),
                    now,
                )
            )
        if (
            self._bound_backlog
            and aiortc_private.decoder_backlog(self._receiver) >= self._max_backlog
        ):
            # The decoder thread is behind (CPU overload): shed load instead of queueing.
            stats.dropped_decoder_backlog += 1
            return
        assert self._original is not None
        await self._original(packet, arrival_time_ms)

    async def _run(self) -> None:
        track = self._receiver.track
        stats = self._stats
        try:
            while True:
                frame = await track.recv()
                stats.frames_decoded += 1
                if not self._count_packets:
                    # No hook counts packets: a decoded frame stands for one (the idle-media
                    # timeout reads the last-media clock).
                    now = self._clock()
                    stats.packets_in += 1
                    if stats.first_packet_at is None:
                        stats.first_packet_at = now
                    stats.last_packet_at = now
                self._sink.put(frame)
                stats.forwarded += 1
        except MediaStreamError:
            return  # the receiving leg ended


class Forwarder(Protocol):
    """One direction's audio path: every packet of that direction passes through it."""

    def start(self) -> None:
        """Begin taking packets (or frames) from the receiver into the sink."""

    async def stop(self) -> None:
        """Stop taking them; idempotent."""

    def refresh(self) -> None:
        """Bring the direction's counters up to date before they are read (the compiled
        loop copies them into ``DirectionStats`` in batches; other paths count as they go)."""
