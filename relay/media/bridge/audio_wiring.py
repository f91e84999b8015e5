"""Audio wiring: one ``Forwarder`` per direction, chosen from the negotiated codecs.

This is the seam for anything that touches audio packets: every packet of a direction
passes through the forwarder ``choose_forwarder`` returns for it (browser → upstream
and upstream → browser), and nowhere else. A new way of forwarding (or a tap on the
packets) is a new ``Forwarder`` picked here.

The bridge calls ``wire_audio`` (both forwarders, chosen, not yet started), keeps what it
returns (its teardown stops them), then ``start_audio``. This module holds no state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiortc import RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from relay.config import MediaConfig
from relay.media import aiortc_private
from relay.media.capabilities import MediaCapabilities, probe
from relay.media.fastpath import FastOpusForwarder
from relay.media.forwarding import (
    DecodedRelay,
    Direction,
    DirectionStats,
    Forwarder,
    OpusPassthrough,
)
from relay.media.metrics import MediaMetrics
from relay.media.sdp import AudioNegotiation, InvalidOffer, RtpLeg, audio_negotiation, rtp_leg
from relay.media.tap import PacketTap
from relay.media.tracks import BoundedQueueTrack

log = logging.getLogger("relay.media")


@dataclass(frozen=True)
class NegotiatedCodecs:
    """What both legs agreed on, as the relay will send and receive it."""

    # The browser leg, from our answer to the browser.
    browser: AudioNegotiation
    # The upstream leg, from the upstream's answer.
    upstream: AudioNegotiation
    # The Opus payload types of our own offer to the upstream (it may send with them).
    our_upstream_opus: frozenset[int]
    # Payload type, mid and header-extension ids of each leg's answer (the fast path
    # writes packets with the sending leg's and reads them with the receiving leg's).
    browser_rtp: RtpLeg
    upstream_rtp: RtpLeg

    @property
    def passthrough(self) -> bool:
        return self.browser.is_opus and self.upstream.is_opus


@dataclass(frozen=True)
class DirectionPlan:
    """One direction's ends: where packets come from, where they go, what counts them."""

    receiver: RTCRtpReceiver
    sink: BoundedQueueTrack
    # The other leg's audio sender and both legs' RTP parameters (the fast path's ends).
    sender: RTCRtpSender
    incoming: RtpLeg
    outgoing: RtpLeg
    stats: DirectionStats
    # Payload types accepted as Opus from ``receiver`` (passthrough only).
    opus_payload_types: frozenset[int]
    # The negotiated codec of ``receiver`` (what the tap is told it records).
    codec: str
    # Sees every received packet of this direction (the recorder), if any.
    tap: PacketTap | None = None


def choose_forwarder(
    plan: DirectionPlan,
    *,
    passthrough: bool,
    fast_path: bool,
    max_backlog: int,
    capabilities: MediaCapabilities | None = None,
) -> Forwarder:
    """The forwarder every packet of one direction passes through.

    What ``capabilities`` (checked now when not given) lacks is not used: the fast path
    falls back to aiortc's sender, passthrough to aiortc's decoder (docs/media.md)."""
    caps = capabilities if capabilities is not None else probe()
    passthrough = passthrough and caps.available("rtp_hook")
    fast_path = fast_path and caps.available("fast_path")
    if passthrough and fast_path:
        # Socket to socket (relay.media.fastpath); ``sink`` stays idle on this path.
        return FastOpusForwarder(
            plan.receiver,
            plan.sender,
            plan.stats,
            plan.opus_payload_types,
            incoming=plan.incoming,
            outgoing=plan.outgoing,
            tap=plan.tap,
        )
    if passthrough:
        return OpusPassthrough(
            plan.receiver,
            plan.sink,
            plan.stats,
            plan.opus_payload_types,
            keep_receiver_reports=caps.available("receiver_reports"),
            tap=plan.tap,
        )
    return DecodedRelay(
        plan.receiver,
        plan.sink,
        plan.stats,
        max_backlog=max_backlog,
        tap=plan.tap,
        codec=plan.codec,
        count_packets=caps.available("rtp_hook"),
        bound_backlog=caps.available("decoder_thread"),
        fast_audio_level=caps.available("audio_level"),
    )


@dataclass(frozen=True)
class AudioEnds:
    """What audio wiring connects: both peers, the queue each leg sends from, the
    counters of each direction and the recorder's taps."""

    browser_pc: RTCPeerConnection
    upstream_pc: RTCPeerConnection
    # What the upstream / browser leg sends (the decoded and aiortc-sender paths).
    to_upstream: BoundedQueueTrack
    to_browser: BoundedQueueTrack
    browser_to_upstream: DirectionStats
    upstream_to_browser: DirectionStats
    candidate_tap: PacketTap | None = None
    interviewer_tap: PacketTap | None = None


def wire_audio(
    ends: AudioEnds,
    codecs: NegotiatedCodecs,
    *,
    media: MediaConfig,
    capabilities: MediaCapabilities,
    force_decode: bool = False,
    previous: Sequence[Forwarder] = (),
    previous_down: Forwarder | None = None,
) -> list[Forwarder]:
    """Both directions' forwarders (browser → upstream first), chosen but not started.

    ``previous``: the forwarders of a browser leg that was lost, when ``ends`` holds the
    resumed one: the browser → upstream direction sends on the same upstream leg, so it
    continues the previous forwarder's outgoing stream (``carry_over``).
    ``previous_down``: the upstream → browser forwarder of an upstream leg that was lost,
    when ``ends`` holds the new one: it sends on the same browser leg, so the browser
    hears one stream with a pause (``carry_over``)."""
    up, down = ends.browser_to_upstream, ends.upstream_to_browser
    # ``DirectionStats`` is the direction's counters record, written by its forwarder;
    # the codecs are known only here.
    up.codec_in, up.codec_out = codecs.browser.primary, codecs.upstream.primary
    down.codec_in, down.codec_out = codecs.upstream.primary, codecs.browser.primary
    plans = [
        DirectionPlan(
            audio_receiver(ends.browser_pc),
            ends.to_upstream,
            audio_sender(ends.upstream_pc),
            codecs.browser_rtp,
            codecs.upstream_rtp,
            up,
            codecs.browser.opus_payload_types,
            codec=codecs.browser.primary or "opus",
            tap=ends.candidate_tap,
        ),
        DirectionPlan(
            audio_receiver(ends.upstream_pc),
            ends.to_browser,
            audio_sender(ends.browser_pc),
            codecs.upstream_rtp,
            codecs.browser_rtp,
            down,
            codecs.upstream.opus_payload_types | codecs.our_upstream_opus,
            codec=codecs.upstream.primary or "opus",
            tap=ends.interviewer_tap,
        ),
    ]
    passthrough = codecs.passthrough and not force_decode
    forwarders = [
        choose_forwarder(
            plan,
            passthrough=passthrough,
            fast_path=media.fast_path,
            max_backlog=media.queue_max_frames,
            capabilities=capabilities,
        )
        for plan in plans
    ]
    if previous:
        carry_over(previous[0], forwarders[0])
    if previous_down is not None:
        carry_over(previous_down, forwarders[1])
    return forwarders


def healed_codecs(
    first: NegotiatedCodecs,
    upstream: AudioNegotiation,
    our_upstream_opus: frozenset[int],
    upstream_rtp: RtpLeg,
) -> NegotiatedCodecs | None:
    """The codecs once a new upstream leg replaced a lost one: the browser leg's as they
    were, with the new upstream leg's. None if it does not allow the forwarding of the
    first (the browser leg's outgoing stream continues: ``carry_over``; the upstream
    answered another codec), so that attempt is given up."""
    codecs = NegotiatedCodecs(
        browser=first.browser,
        upstream=upstream,
        our_upstream_opus=our_upstream_opus,
        browser_rtp=first.browser_rtp,
        upstream_rtp=upstream_rtp,
    )
    return codecs if codecs.passthrough == first.passthrough else None


def resumed_codecs(first: NegotiatedCodecs, answer_sdp: str) -> NegotiatedCodecs:
    """The codecs once a resumed browser leg answered ``answer_sdp``: its own, with the
    upstream leg's as they were. It must allow the forwarding of the first (the upstream
    leg's outgoing stream continues: ``carry_over``), else ``InvalidOffer``."""
    codecs = NegotiatedCodecs(
        browser=audio_negotiation(answer_sdp),
        upstream=first.upstream,
        our_upstream_opus=first.our_upstream_opus,
        browser_rtp=rtp_leg(answer_sdp),
        upstream_rtp=first.upstream_rtp,
    )
    if codecs.passthrough != first.passthrough:
        raise InvalidOffer(
            f"a resumed connection must offer the audio codec of the first "
            f"({first.browser.primary})"
        )
    return codecs


def carry_over(previous: Forwarder, new: Forwarder) -> None:
    """``new`` sends on the leg ``previous`` sent on: continue its outgoing stream.

    Only between forwarders of one kind (a resumed leg must negotiate the codecs of the
    first, ``Bridge.resume`` checks): the decode path sends through aiortc's sender, which
    keeps its own timeline."""
    match previous, new:
        case FastOpusForwarder(), FastOpusForwarder():
            new.continue_from(previous)
        case OpusPassthrough(), OpusPassthrough():
            new.continue_from(previous)


def park_upstream_audio(
    upstream_pc: RTCPeerConnection,
    codecs: NegotiatedCodecs,
    *,
    media: MediaConfig,
    capabilities: MediaCapabilities,
    force_decode: bool = False,
) -> Forwarder:
    """While the browser's leg is lost: a forwarder that takes the upstream's audio and
    drops it (into a queue nobody reads, which holds one packet), so that nothing piles up
    in aiortc's receive path. Not recorded: the gap is silence in the recording."""
    return _parking(
        "upstream_to_browser",
        audio_receiver(upstream_pc),
        codecs.upstream.opus_payload_types | codecs.our_upstream_opus,
        codecs.upstream.primary,
        codecs,
        media=media,
        capabilities=capabilities,
        force_decode=force_decode,
    )


def park_browser_audio(
    browser_pc: RTCPeerConnection,
    codecs: NegotiatedCodecs,
    *,
    media: MediaConfig,
    capabilities: MediaCapabilities,
    force_decode: bool = False,
) -> Forwarder:
    """While the upstream's leg is lost (a new one is being opened): the same for the
    candidate's audio, which nobody hears meanwhile. Not recorded either."""
    return _parking(
        "browser_to_upstream",
        audio_receiver(browser_pc),
        codecs.browser.opus_payload_types,
        codecs.browser.primary,
        codecs,
        media=media,
        capabilities=capabilities,
        force_decode=force_decode,
    )


def _parking(
    direction: Direction,
    receiver: RTCRtpReceiver,
    opus_payload_types: frozenset[int],
    codec: str | None,
    codecs: NegotiatedCodecs,
    *,
    media: MediaConfig,
    capabilities: MediaCapabilities,
    force_decode: bool,
) -> Forwarder:
    stats = DirectionStats(direction)
    sink = BoundedQueueTrack(1)
    caps = capabilities
    if codecs.passthrough and not force_decode and caps.available("rtp_hook"):
        return OpusPassthrough(
            receiver,
            sink,
            stats,
            opus_payload_types,
            keep_receiver_reports=caps.available("receiver_reports"),
        )
    return DecodedRelay(
        receiver,
        sink,
        stats,
        max_backlog=media.queue_max_frames,
        codec=codec or "opus",
        count_packets=caps.available("rtp_hook"),
        bound_backlog=caps.available("decoder_thread"),
        fast_audio_level=caps.available("audio_level"),
    )


def start_audio(
    forwarders: list[Forwarder],
    ends: AudioEnds,
    codecs: NegotiatedCodecs,
    *,
    capabilities: MediaCapabilities,
    metrics: MediaMetrics,
    session_id: str,
) -> None:
    """Start the forwarders ``wire_audio`` chose; count and log each direction's mode."""
    for forwarder in forwarders:
        forwarder.start()
    if capabilities.available("retransmission_history"):
        for pc in (ends.browser_pc, ends.upstream_pc):
            # Idempotent: a resumed leg's wiring passes the upstream's peer again.
            aiortc_private.disable_retransmission_history(audio_sender(pc))
    up, down = ends.browser_to_upstream, ends.upstream_to_browser
    for stats in (up, down):
        metrics.forwarding_modes.inc(direction=stats.direction, mode=stats.mode)
    log.info(
        "session %s: audio %s (browser %s, upstream %s)",
        session_id,
        up.mode,
        codecs.browser.primary,
        codecs.upstream.primary,
    )


def audio_receiver(pc: RTCPeerConnection) -> RTCRtpReceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver.receiver
    raise RuntimeError("the peer has no audio transceiver")


def audio_sender(pc: RTCPeerConnection) -> RTCRtpSender:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver.sender
    raise RuntimeError("the peer has no audio transceiver")
