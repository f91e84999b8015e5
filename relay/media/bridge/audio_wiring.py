"""Audio wiring: one ``Forwarder`` per direction, chosen from the negotiated codecs.

This is the seam for anything that touches audio packets: every packet of a direction
passes through the forwarder ``choose_forwarder`` returns for it (browser → upstream
and upstream → browser), and nowhere else. A new way of forwarding (or a tap on the
packets) is a new ``Forwarder`` picked here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiortc import RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from relay.media import aiortc_private
from relay.media.capabilities import MediaCapabilities, probe
from relay.media.fastpath import FastOpusForwarder
from relay.media.forwarding import DecodedRelay, DirectionStats, Forwarder, OpusPassthrough
from relay.media.sdp import AudioNegotiation, RtpLeg
from relay.media.tap import PacketTap
from relay.media.tracks import BoundedQueueTrack

if TYPE_CHECKING:
    from relay.media.bridge.core import Bridge

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


def wire_audio(bridge: Bridge, codecs: NegotiatedCodecs) -> None:
    """Pick and start both directions' forwarders (stored in ``bridge.forwarders``)."""
    assert bridge.upstream_pc is not None
    up, down = bridge.browser_to_upstream, bridge.upstream_to_browser
    up.codec_in, up.codec_out = codecs.browser.primary, codecs.upstream.primary
    down.codec_in, down.codec_out = codecs.upstream.primary, codecs.browser.primary
    recorder = bridge.recorder
    plans = [
        DirectionPlan(
            audio_receiver(bridge.browser_pc),
            bridge.to_upstream,
            audio_sender(bridge.upstream_pc),
            codecs.browser_rtp,
            codecs.upstream_rtp,
            up,
            codecs.browser.opus_payload_types,
            codec=codecs.browser.primary or "opus",
            tap=recorder.tap("candidate") if recorder else None,
        ),
        DirectionPlan(
            audio_receiver(bridge.upstream_pc),
            bridge.to_browser,
            audio_sender(bridge.browser_pc),
            codecs.upstream_rtp,
            codecs.browser_rtp,
            down,
            codecs.upstream.opus_payload_types | codecs.our_upstream_opus,
            codec=codecs.upstream.primary or "opus",
            tap=recorder.tap("interviewer") if recorder else None,
        ),
    ]
    passthrough = codecs.passthrough and not bridge.force_decode
    media = bridge.settings.media
    capabilities = bridge.settings.capabilities
    bridge.forwarders = [
        choose_forwarder(
            plan,
            passthrough=passthrough,
            fast_path=media.fast_path,
            max_backlog=media.queue_max_frames,
            capabilities=capabilities,
        )
        for plan in plans
    ]
    for forwarder in bridge.forwarders:
        forwarder.start()
    if capabilities.available("retransmission_history"):
        for pc in (bridge.browser_pc, bridge.upstream_pc):
            aiortc_private.disable_retransmission_history(audio_sender(pc))
    for stats in (up, down):
        bridge.metrics.forwarding_modes.inc(direction=stats.direction, mode=stats.mode)
    log.info(
        "session %s: audio %s (browser %s, upstream %s)",
        bridge.session_id,
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
