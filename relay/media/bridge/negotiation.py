"""Negotiating both legs: browser offer → browser answer, our offer → upstream answer.

Each step checks whether teardown began meanwhile (a hang-up during negotiation):
nothing created after teardown would be closed by it. The last step wires audio.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiortc import RTCSessionDescription

from relay.media.bridge import audio_wiring, peer_events
from relay.media.bridge.audio_wiring import NegotiatedCodecs
from relay.media.bridge.base import UpstreamAnswerInvalid
from relay.media.events import UPSTREAM_LABEL
from relay.media.peers import new_peer, set_local_description
from relay.media.sdp import InvalidOffer, audio_negotiation, rtp_leg
from relay.observability.logging import stage
from relay.observability.request_context import record_stage

if TYPE_CHECKING:
    from relay.media.bridge.core import Bridge

log = logging.getLogger("relay.media")


async def negotiate(bridge: Bridge, offer_sdp: str) -> str:
    """Negotiate both legs and wire audio; return the browser's answer SDP."""
    gather_timeout = bridge.settings.session.ice_gather_timeout_s
    browser = bridge.browser_pc
    peer_events.watch_browser(bridge, browser)
    started = time.perf_counter()
    try:
        await browser.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except Exception as exc:  # aiortc refuses what our own checks let through
        raise InvalidOffer(f"the offer was refused ({type(exc).__name__}: {exc})") from None
    browser.addTrack(bridge.to_browser)
    answer = await set_local_description(browser, await browser.createAnswer(), gather_timeout)
    elapsed_ms = (time.perf_counter() - started) * 1000
    record_stage("answer", elapsed_ms)
    stage(log, "BROWSER_ANSWER_COMPLETE", elapsed_ms)
    bridge.raise_if_closing()

    started = time.perf_counter()
    upstream = bridge.upstream_pc = new_peer(
        bridge.settings.ice,
        leg="upstream",
        session_id=bridge.session_id,
        capabilities=bridge.settings.capabilities,
    )
    peer_events.watch_upstream(bridge, upstream)
    upstream.addTransceiver(bridge.to_upstream, direction="sendrecv")
    bridge.events.attach_upstream(upstream.createDataChannel(UPSTREAM_LABEL))
    offer = await set_local_description(upstream, await upstream.createOffer(), gather_timeout)
    elapsed_ms = (time.perf_counter() - started) * 1000
    record_stage("offer", elapsed_ms)
    stage(log, "UPSTREAM_OFFER_COMPLETE", elapsed_ms)
    bridge.raise_if_closing()

    started = time.perf_counter()
    reply = await bridge.upstream.exchange_sdp(
        bridge.minted, offer.sdp, request_id=bridge.request_id
    )
    bridge.upstream_call_id = reply.call_id
    elapsed_ms = (time.perf_counter() - started) * 1000
    record_stage("upstream", elapsed_ms)
    stage(log, "UPSTREAM_SDP_COMPLETE", elapsed_ms)
    bridge.raise_if_closing()  # start() hangs the new call up
    try:
        await upstream.setRemoteDescription(RTCSessionDescription(sdp=reply.sdp, type="answer"))
        upstream_codecs = audio_negotiation(reply.sdp)
        upstream_rtp = rtp_leg(reply.sdp)
    except Exception as exc:
        raise UpstreamAnswerInvalid(f"{type(exc).__name__}: {exc}") from None
    bridge.raise_if_closing()
    audio_wiring.wire_audio(
        bridge,
        NegotiatedCodecs(
            browser=audio_negotiation(answer.sdp),
            upstream=upstream_codecs,
            our_upstream_opus=audio_negotiation(offer.sdp).opus_payload_types,
            browser_rtp=rtp_leg(answer.sdp),
            upstream_rtp=upstream_rtp,
        ),
    )
    return str(answer.sdp)
