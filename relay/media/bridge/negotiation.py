"""Negotiating both legs: browser offer → browser answer, our offer → upstream answer.

``Negotiation.run`` returns a ``Negotiated`` (the browser's answer and the codecs both legs
agreed on); the bridge wires audio from it. What the bridge must release even when
negotiation fails half-way is reported as it comes into being, through callbacks: the
upstream peer (``open_upstream_peer``, which the bridge creates and keeps) and the upstream
call (``on_upstream_call``). Before each step that creates something, ``check_open`` raises
``BridgeClosed`` if teardown began meanwhile (a hang-up during negotiation): nothing created
after teardown would be closed by it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.media.bridge.audio_wiring import NegotiatedCodecs
from relay.media.bridge.base import UpstreamAnswerInvalid
from relay.media.events import UPSTREAM_LABEL, EventRelay
from relay.media.peers import set_local_description
from relay.media.sdp import AudioNegotiation, InvalidOffer, RtpLeg, audio_negotiation, rtp_leg
from relay.media.tracks import BoundedQueueTrack
from relay.observability.logging import stage
from relay.observability.request_context import record_stage
from relay.tasks import spawn
from relay.upstream.base import MintedSession, SdpAnswer, UpstreamClient

log = logging.getLogger("relay.media")


@dataclass(frozen=True)
class Negotiated:
    """Both legs negotiated: what the browser is answered, and what audio will carry."""

    answer_sdp: str
    codecs: NegotiatedCodecs


@dataclass(frozen=True)
class UpstreamLeg:
    """The upstream leg negotiated: its answer's codecs, the Opus payload types of our
    offer, its answer's RTP parameters."""

    codecs: AudioNegotiation
    our_opus: frozenset[int]
    rtp: RtpLeg


class Negotiation:
    """One bridge's offer/answer on both legs (run once)."""

    def __init__(
        self,
        *,
        browser_pc: RTCPeerConnection,
        to_browser: BoundedQueueTrack,
        to_upstream: BoundedQueueTrack,
        events: EventRelay,
        upstream: UpstreamClient,
        minted: MintedSession,
        request_id: str,
        gather_timeout_s: float,
        open_upstream_peer: Callable[[], RTCPeerConnection],
        on_upstream_call: Callable[[str | None], None],
        check_open: Callable[[], None],
    ) -> None:
        self._browser_pc = browser_pc
        self._to_browser = to_browser
        self._to_upstream = to_upstream
        self._events = events
        self._upstream = upstream
        self._minted = minted
        self._request_id = request_id
        self._gather_timeout_s = gather_timeout_s
        self._open_upstream_peer = open_upstream_peer
        self._on_upstream_call = on_upstream_call
        self._check_open = check_open

    async def run(self, offer_sdp: str) -> Negotiated:
        """Answer the browser, offer to the upstream, apply its answer."""
        answer = await self._answer_browser(offer_sdp)
        self._check_open()
        upstream = await self.run_upstream()
        return Negotiated(
            answer_sdp=str(answer.sdp),
            codecs=NegotiatedCodecs(
                browser=audio_negotiation(answer.sdp),
                upstream=upstream.codecs,
                our_upstream_opus=upstream.our_opus,
                browser_rtp=rtp_leg(answer.sdp),
                upstream_rtp=upstream.rtp,
            ),
        )

    async def run_upstream(self) -> UpstreamLeg:
        """The upstream leg alone: our offer to the upstream, its answer applied (the
        exchange's, and a new leg healing a lost one: ``Bridge._heal_upstream``)."""
        upstream_pc, offer = await self._offer_upstream()
        self._check_open()
        reply_sdp = await self._exchange(offer.sdp)
        self._check_open()  # the bridge hangs the new call up
        try:
            await upstream_pc.setRemoteDescription(
                RTCSessionDescription(sdp=reply_sdp, type="answer")
            )
            upstream_codecs = audio_negotiation(reply_sdp)
            upstream_rtp = rtp_leg(reply_sdp)
        except Exception as exc:
            raise UpstreamAnswerInvalid(f"{type(exc).__name__}: {exc}") from None
        self._check_open()
        return UpstreamLeg(
            codecs=upstream_codecs,
            our_opus=audio_negotiation(offer.sdp).opus_payload_types,
            rtp=upstream_rtp,
        )

    async def _answer_browser(self, offer_sdp: str) -> RTCSessionDescription:
        return await answer_browser(
            self._browser_pc, self._to_browser, offer_sdp, self._gather_timeout_s
        )

    async def _offer_upstream(self) -> tuple[RTCPeerConnection, RTCSessionDescription]:
        started = time.perf_counter()
        upstream_pc = self._open_upstream_peer()
        upstream_pc.addTransceiver(self._to_upstream, direction="sendrecv")
        self._events.attach_upstream(upstream_pc.createDataChannel(UPSTREAM_LABEL))
        offer = await set_local_description(
            upstream_pc, await upstream_pc.createOffer(), self._gather_timeout_s
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        record_stage("offer", elapsed_ms)
        stage(log, "UPSTREAM_OFFER_COMPLETE", elapsed_ms)
        return upstream_pc, offer

    async def _exchange(self, offer_sdp: str) -> str:
        """Our offer to the upstream; its answer SDP (the call is reported first)."""
        started = time.perf_counter()
        # In a task of its own: should this wait be cancelled (a heal cut short by the
        # session's end, a start whose caller went away), the upstream may open the call
        # all the same, and nobody would learn its id to hang it up.
        exchange = asyncio.ensure_future(
            self._upstream.exchange_sdp(self._minted, offer_sdp, request_id=self._request_id)
        )
        try:
            reply = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            exchange.add_done_callback(self._hang_up_late_answer)
            raise
        self._on_upstream_call(reply.call_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        record_stage("upstream", elapsed_ms)
        stage(log, "UPSTREAM_SDP_COMPLETE", elapsed_ms)
        return reply.sdp

    def _hang_up_late_answer(self, exchange: asyncio.Future[SdpAnswer]) -> None:
        """The answer of an exchange given up on: its call is hung up (nobody uses it)."""
        if exchange.cancelled() or exchange.exception() is not None:
            return  # no call (its failure was the client's to log)
        call_id = exchange.result().call_id
        if call_id:
            log.info(
                "hanging up upstream call %s, answered after its exchange was given up", call_id
            )
            spawn(self._upstream.hangup(call_id), name="negotiation-hangup-late-call", log=log)


async def answer_browser(
    browser: RTCPeerConnection,
    to_browser: BoundedQueueTrack,
    offer_sdp: str,
    gather_timeout_s: float,
) -> RTCSessionDescription:
    """Answer a browser's offer on ``browser``, sending ``to_browser`` (the exchange's
    leg, and a resumed one's)."""
    started = time.perf_counter()
    try:
        await browser.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except Exception as exc:  # aiortc refuses what our own checks let through
        raise InvalidOffer(f"the offer was refused ({type(exc).__name__}: {exc})") from None
    browser.addTrack(to_browser)
    answer = await set_local_description(browser, await browser.createAnswer(), gather_timeout_s)
    elapsed_ms = (time.perf_counter() - started) * 1000
    record_stage("answer", elapsed_ms)
    stage(log, "BROWSER_ANSWER_COMPLETE", elapsed_ms)
    return answer
