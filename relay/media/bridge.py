"""One interview's media bridge: browser peer ⇄ relay ⇄ upstream peer.

``start(offer)`` answers the browser's offer with one aiortc peer, offers to the
upstream with a second peer (Opus audio sendrecv + data channel ``oai-events``),
applies the upstream's answer, chooses how each audio direction is forwarded and
returns the browser's answer. Any failure on the way tears both legs down and
finishes the session as failed with a reason, then re-raises.

After that a supervisor task owns the lifecycle: both legs connected within
``connect_timeout_s`` (else failed ``connect_timeout``), then active until one of:
idle media, maximum duration, a hang-up (``close``), either peer failing or closing,
or either data channel closing. Teardown closes both peers, hangs up the upstream
call and reports the real duration to the session layer, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from relay.config import EventsConfig, IceConfig, MediaConfig, SessionConfig
from relay.media import aiortc_private
from relay.media.events import UPSTREAM_LABEL, EventRelay, Side
from relay.media.fastpath import FastOpusForwarder
from relay.media.forwarding import DecodedRelay, DirectionStats, Forwarder, OpusPassthrough
from relay.media.metrics import MediaMetrics
from relay.media.peers import IceGatherTimeout, close_peer, new_peer, set_local_description
from relay.media.sdp import InvalidOffer, audio_negotiation, rtp_leg
from relay.media.tracks import BoundedQueueTrack
from relay.observability.logging import stage
from relay.observability.request_context import record_stage
from relay.upstream.base import MintedSession, UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger("relay.media")

EndState = Literal["ended", "failed"]
BridgeState = Literal["new", "negotiating", "connecting", "active", "closing", "closed"]

QUALITY_REFRESH_S = 2.0
MAX_TICK_S = 1.0


@dataclass(frozen=True)
class BridgeSettings:
    session: SessionConfig
    media: MediaConfig
    events: EventsConfig
    ice: IceConfig


class BridgeHooks(Protocol):
    """What the session layer does at the bridge's milestones."""

    async def on_connecting(self) -> None: ...

    async def on_active(self, upstream_call_id: str | None) -> None: ...

    async def on_finished(self, state: EndState, reason: str, duration_s: float) -> None: ...


class UpstreamAnswerInvalid(Exception):
    """The upstream answered with SDP aiortc could not apply."""


class BridgeClosed(Exception):
    """The bridge was ended (hang-up, shutdown) while it was still negotiating."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """The end reason recorded when ``start`` fails with ``exc``."""
    if isinstance(exc, InvalidOffer):
        return "invalid_offer"
    if isinstance(exc, UpstreamTimeout):
        return "upstream_timeout"
    if isinstance(exc, UpstreamError):
        return "upstream_error"
    if isinstance(exc, UpstreamAnswerInvalid):
        return "upstream_answer_invalid"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, IceGatherTimeout):
        return "ice_gather_timeout"
    return "internal_error"


class Bridge:
    def __init__(
        self,
        *,
        session_id: str,
        request_id: str,
        settings: BridgeSettings,
        upstream: UpstreamClient,
        minted: MintedSession,
        max_duration_s: float,
        metrics: MediaMetrics,
        hooks: BridgeHooks,
        force_decode: bool = False,
    ) -> None:
        self.session_id = session_id
        self.request_id = request_id
        self._settings = settings
        self._upstream = upstream
        self._minted = minted
        self._max_duration_s = max_duration_s
        self._metrics = metrics
        self._hooks = hooks
        self._force_decode = force_decode

        self.state: BridgeState = "new"
        self.end_state: EndState | None = None
        self.end_reason: str | None = None
        self.upstream_call_id: str | None = None
        # The browser's answer SDP, once ``start`` succeeded.
        self.answer: str | None = None
        self.started_at = time.monotonic()
        self.connected_at: float | None = None
        self.ended_at: float | None = None

        queue_max = settings.media.queue_max_frames
        self.to_upstream = BoundedQueueTrack(queue_max)
        self.to_browser = BoundedQueueTrack(queue_max)
        self.browser_to_upstream = DirectionStats("browser_to_upstream")
        self.upstream_to_browser = DirectionStats("upstream_to_browser")
        self.events = EventRelay(
            settings.events, metrics, on_closed=self._on_channel_closed, session_id=session_id
        )
        self.browser_pc: RTCPeerConnection = new_peer(settings.ice)
        self.upstream_pc: RTCPeerConnection | None = None
        self._forwarders: list[Forwarder | FastOpusForwarder] = []
        self._both_connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._teardown_task: asyncio.Task[None] | None = None
        # Whether teardown asked upstream to hang up (it may run before the call exists).
        self._hangup_sent = False
        self._closed = asyncio.Event()
        self._quality: dict[str, dict[str, Any]] = {}
        self._quality_at = 0.0

    # ------------------------------------------------------------------ public
    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def closing(self) -> bool:
        """True once teardown has begun (it may still be in progress)."""
        return self._teardown_task is not None

    def _is_closing(self) -> bool:
        # A call, not the property: mypy would keep the property narrowed across awaits.
        return self._teardown_task is not None

    async def start(self, offer_sdp: str) -> str:
        """Negotiate both legs; return the browser's answer SDP."""
        self.state = "negotiating"
        try:
            answer = await self._negotiate(offer_sdp)
        except BaseException as exc:
            if self._teardown_task is not None:
                await asyncio.shield(self._teardown_task)
                await self._hang_up_late_call()
                raise BridgeClosed(self.end_reason or "closed") from exc
            reason = failure_reason(exc)
            log.warning("session %s: exchange failed (%s)", self.session_id, reason)
            await asyncio.shield(self.begin_close(reason, state="failed"))
            raise
        if self._teardown_task is not None:
            await asyncio.shield(self._teardown_task)
            await self._hang_up_late_call()
            raise BridgeClosed(self.end_reason or "closed")
        self.state = "connecting"
        self.answer = answer
        self._supervisor = asyncio.create_task(self._supervise(), name=f"bridge-{self.session_id}")
        return answer

    def _raise_if_closing(self) -> None:
        """Stop negotiating once teardown began: nothing created after it would be closed."""
        if self._is_closing():
            raise BridgeClosed(self.end_reason or "closed")

    async def _hang_up_late_call(self) -> None:
        """The upstream call came into being after teardown had passed its hang-up."""
        if self.upstream_call_id and not self._hangup_sent:
            self._hangup_sent = True
            await self._upstream.hangup(self.upstream_call_id)

    def begin_close(self, reason: str, *, state: EndState = "ended") -> asyncio.Task[None]:
        """Start tearing down (once); the first reason wins."""
        if self._teardown_task is None:
            self.state = "closing"
            self._wake.set()
            self._teardown_task = asyncio.create_task(
                self._teardown(state, reason), name=f"bridge-close-{self.session_id}"
            )
        return self._teardown_task

    async def close(self, reason: str, *, state: EndState = "ended") -> None:
        """End the session (both legs, upstream hang-up, session finished) and wait."""
        await asyncio.shield(self.begin_close(reason, state=state))

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of this bridge (cheap; no awaits)."""
        now = time.monotonic()
        first = self.upstream_to_browser.first_packet_at
        return {
            "state": self.state,
            "end_state": self.end_state,
            "end_reason": self.end_reason,
            "age_s": round(now - self.started_at, 3),
            "active_s": round(self._active_seconds(now), 3),
            "upstream_call_id": self.upstream_call_id,
            "time_to_first_upstream_audio_ms": (
                None if first is None else round((first - self.started_at) * 1000, 1)
            ),
            "browser_to_upstream": self._direction_stats(
                self.browser_to_upstream, self.to_upstream, now
            ),
            "upstream_to_browser": self._direction_stats(
                self.upstream_to_browser, self.to_browser, now
            ),
            "events": dict(self.events.counts),
            "legs": {
                "browser": self._leg_stats("browser", self.browser_pc),
                "upstream": self._leg_stats("upstream", self.upstream_pc),
            },
        }

    # ------------------------------------------------------------------ negotiation
    async def _negotiate(self, offer_sdp: str) -> str:
        gather_timeout = self._settings.session.ice_gather_timeout_s
        browser = self.browser_pc
        browser.on("datachannel", self._on_browser_channel)
        browser.on("connectionstatechange", lambda: self._on_peer_state("browser", browser))
        started = time.perf_counter()
        try:
            await browser.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc refuses what our own checks let through
            raise InvalidOffer(f"the offer was refused ({type(exc).__name__}: {exc})") from None
        browser.addTrack(self.to_browser)
        answer = await set_local_description(browser, await browser.createAnswer(), gather_timeout)
        stage(log, "BROWSER_ANSWER_COMPLETE", (time.perf_counter() - started) * 1000)
        self._raise_if_closing()

        started = time.perf_counter()
        upstream = self.upstream_pc = new_peer(self._settings.ice)
        upstream.on("connectionstatechange", lambda: self._on_peer_state("upstream", upstream))
        upstream.addTransceiver(self.to_upstream, direction="sendrecv")
        self.events.attach_upstream(upstream.createDataChannel(UPSTREAM_LABEL))
        offer = await set_local_description(upstream, await upstream.createOffer(), gather_timeout)
        stage(log, "UPSTREAM_OFFER_COMPLETE", (time.perf_counter() - started) * 1000)
        self._raise_if_closing()

        started = time.perf_counter()
        reply = await self._upstream.exchange_sdp(
            self._minted, offer.sdp, request_id=self.request_id
        )
        self.upstream_call_id = reply.call_id
        elapsed_ms = (time.perf_counter() - started) * 1000
        record_stage("upstream", elapsed_ms)
        stage(log, "UPSTREAM_SDP_COMPLETE", elapsed_ms)
        self._raise_if_closing()  # start() hangs the new call up
        try:
            await upstream.setRemoteDescription(RTCSessionDescription(sdp=reply.sdp, type="answer"))
            downstream_codecs = audio_negotiation(reply.sdp)
        except Exception as exc:
            raise UpstreamAnswerInvalid(f"{type(exc).__name__}: {exc}") from None
        self._raise_if_closing()
        self._wire_audio(
            browser_codecs=audio_negotiation(answer.sdp),
            upstream_codecs=downstream_codecs,
            our_upstream_opus=audio_negotiation(offer.sdp).opus_payload_types,
            browser_sdp=answer.sdp,
            upstream_sdp=reply.sdp,
        )
        return str(answer.sdp)

    def _wire_audio(
        self,
        *,
        browser_codecs: Any,
        upstream_codecs: Any,
        our_upstream_opus: frozenset[int],
        browser_sdp: str,
        upstream_sdp: str,
    ) -> None:
        assert self.upstream_pc is not None
        browser_rx = _audio_receiver(self.browser_pc)
        upstream_rx = _audio_receiver(self.upstream_pc)
        passthrough = browser_codecs.is_opus and upstream_codecs.is_opus and not self._force_decode
        up, down = self.browser_to_upstream, self.upstream_to_browser
        up.codec_in, up.codec_out = browser_codecs.primary, upstream_codecs.primary
        down.codec_in, down.codec_out = upstream_codecs.primary, browser_codecs.primary
        if passthrough and self._settings.media.fast_path:
            browser_leg, upstream_leg = rtp_leg(browser_sdp), rtp_leg(upstream_sdp)
            upstream_tx = _audio_sender(self.upstream_pc)
            browser_tx = _audio_sender(self.browser_pc)
            self._forwarders = [
                FastOpusForwarder(
                    browser_rx,
                    upstream_tx,
                    up,
                    browser_codecs.opus_payload_types,
                    incoming=browser_leg,
                    outgoing=upstream_leg,
                ),
                FastOpusForwarder(
                    upstream_rx,
                    browser_tx,
                    down,
                    upstream_codecs.opus_payload_types | our_upstream_opus,
                    incoming=upstream_leg,
                    outgoing=browser_leg,
                ),
            ]
        elif passthrough:
            self._forwarders = [
                OpusPassthrough(
                    browser_rx, self.to_upstream, up, browser_codecs.opus_payload_types
                ),
                OpusPassthrough(
                    upstream_rx,
                    self.to_browser,
                    down,
                    upstream_codecs.opus_payload_types | our_upstream_opus,
                ),
            ]
        else:
            backlog = self._settings.media.queue_max_frames
            self._forwarders = [
                DecodedRelay(browser_rx, self.to_upstream, up, max_backlog=backlog),
                DecodedRelay(upstream_rx, self.to_browser, down, max_backlog=backlog),
            ]
        for forwarder in self._forwarders:
            forwarder.start()
        for pc in (self.browser_pc, self.upstream_pc):
            aiortc_private.disable_retransmission_history(_audio_sender(pc))
        for stats in (up, down):
            self._metrics.forwarding_modes.inc(direction=stats.direction, mode=stats.mode)
        log.info(
            "session %s: audio %s (browser %s, upstream %s)",
            self.session_id,
            up.mode,
            browser_codecs.primary,
            upstream_codecs.primary,
        )

    # ------------------------------------------------------------------ events
    def _on_browser_channel(self, channel: RTCDataChannel) -> None:
        if not self.events.attach_browser(channel):
            log.info("session %s: ignoring an extra browser data channel", self.session_id)

    def _on_channel_closed(self, side: Side) -> None:
        if self._teardown_task is None:
            self._end_on_loss(side, "channel_closed")

    def _on_peer_state(self, leg: str, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        if state == "connected":
            upstream = self.upstream_pc
            if (
                self.browser_pc.connectionState == "connected"
                and upstream is not None
                and upstream.connectionState == "connected"
            ):
                self._both_connected.set()
        elif state in ("failed", "closed") and self._teardown_task is None:
            self._end_on_loss(leg, "disconnected" if state == "closed" else "failed")

    def _end_on_loss(self, leg: str, what: str) -> None:
        if self.state == "negotiating":
            return  # start() fails and tears down on its own
        if self.connected_at is None:
            self.begin_close(f"{leg}_connect_failed", state="failed")
        else:
            self.begin_close(f"{leg}_{what}")

    # ------------------------------------------------------------------ supervision
    async def _supervise(self) -> None:
        session = self._settings.session
        await self._call_hook("on_connecting")
        remaining = session.connect_timeout_s - (time.monotonic() - self.started_at)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self._both_connected.wait()
        except TimeoutError:
            log.warning(
                "session %s: legs not connected within %.1fs (browser %s, upstream %s)",
                self.session_id,
                session.connect_timeout_s,
                self.browser_pc.connectionState,
                self.upstream_pc.connectionState if self.upstream_pc else "-",
            )
            self.begin_close("connect_timeout", state="failed")
            return
        if self.closing:
            return
        now = time.monotonic()
        self.connected_at = now
        self.state = "active"
        self._metrics.connect_ms.observe((now - self.started_at) * 1000)
        log.info("session %s: active after %.0fms", self.session_id, (now - self.started_at) * 1000)
        await self._call_hook("on_active", self.upstream_call_id)
        await self._monitor()

    async def _monitor(self) -> None:
        session = self._settings.session
        idle_timeout = session.idle_media_timeout_s
        tick = min(MAX_TICK_S, idle_timeout / 4) if idle_timeout > 0 else MAX_TICK_S
        reported_first_audio = False
        while not self._is_closing():
            assert self.connected_at is not None
            now = time.monotonic()
            remaining = self._max_duration_s - (now - self.connected_at)
            if remaining <= 0:
                self.begin_close("max_duration")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(tick, remaining)):
                    await self._wake.wait()
            if self._is_closing():
                return
            now = time.monotonic()
            if idle_timeout > 0 and now - self._last_media_at() >= idle_timeout:
                self.begin_close("idle_media")
                return
            if not reported_first_audio and self.upstream_to_browser.first_packet_at is not None:
                reported_first_audio = True
                self._metrics.first_upstream_audio_ms.observe(
                    (self.upstream_to_browser.first_packet_at - self.started_at) * 1000
                )
            self._publish_metrics()
            if now - self._quality_at >= QUALITY_REFRESH_S:
                self._quality_at = now
                await self._refresh_quality()

    def _last_media_at(self) -> float:
        assert self.connected_at is not None
        times = [
            t
            for t in (
                self.connected_at,
                self.browser_to_upstream.last_packet_at,
                self.upstream_to_browser.last_packet_at,
            )
            if t is not None
        ]
        return max(times)

    async def _call_hook(self, name: str, *args: Any) -> None:
        try:
            await getattr(self._hooks, name)(*args)
        except Exception:  # bookkeeping must not take the media down
            log.exception("session %s: %s failed", self.session_id, name)

    # ------------------------------------------------------------------ teardown
    async def _teardown(self, state: EndState, reason: str) -> None:
        self.ended_at = time.monotonic()
        self.end_state, self.end_reason = state, reason
        duration = self._active_seconds(self.ended_at)
        log.info(
            "session %s: closing (%s, %s) after %.1fs active",
            self.session_id,
            state,
            reason,
            duration,
        )
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        try:
            for forwarder in self._forwarders:
                if isinstance(forwarder, DecodedRelay):
                    await forwarder.stop()
                else:
                    forwarder.stop()
            self.to_upstream.stop()
            self.to_browser.stop()
            closing: list[Any] = [close_peer(self.browser_pc)]
            if self.upstream_pc is not None:
                closing.append(close_peer(self.upstream_pc))
            if self.upstream_call_id:
                self._hangup_sent = True
                closing.append(self._upstream.hangup(self.upstream_call_id))
            results = await asyncio.gather(*closing, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.error(
                        "session %s: error while closing: %s: %s",
                        self.session_id,
                        type(result).__name__,
                        result,
                    )
            self._publish_metrics()
            self._metrics.forget(self.browser_to_upstream)
            self._metrics.forget(self.upstream_to_browser)
            self._metrics.bridges_ended.inc(reason=reason)
        finally:
            self.state = "closed"
            await self._call_hook("on_finished", state, reason, duration)
            self._closed.set()

    # ------------------------------------------------------------------ stats
    def _active_seconds(self, now: float) -> float:
        if self.connected_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.connected_at)

    def _publish_metrics(self) -> None:
        for stats, queue in (
            (self.browser_to_upstream, self.to_upstream),
            (self.upstream_to_browser, self.to_browser),
        ):
            self._metrics.publish(stats, queue.dropped, queue.dropped_before_start)

    @staticmethod
    def _direction_stats(
        stats: DirectionStats, queue: BoundedQueueTrack, now: float
    ) -> dict[str, Any]:
        age = stats.last_media_age_s(now)
        return {
            "mode": stats.mode,
            "decoder_used": stats.mode == "decode",
            "fast_path": stats.fast_path,
            "codec_in": stats.codec_in,
            "codec_out": stats.codec_out,
            "packets_in": stats.packets_in,
            "bytes_in": stats.bytes_in,
            "forwarded": stats.forwarded,
            "forwarded_bytes": stats.forwarded_bytes,
            "frames_decoded": stats.frames_decoded,
            "dropped": {
                "queue_full": queue.dropped,
                "other_codec": stats.dropped_other_codec,
                "duplicate": stats.dropped_duplicate,
                "decoder_backlog": stats.dropped_decoder_backlog,
                "before_connect": queue.dropped_before_start + stats.dropped_not_connected,
                "invalid": stats.dropped_invalid,
            },
            "queue_depth": queue.depth,
            "queue_max_depth": queue.max_depth,
            "last_media_age_s": None if age is None else round(age, 3),
        }

    def _leg_stats(self, leg: str, pc: RTCPeerConnection | None) -> dict[str, Any]:
        out: dict[str, Any] = {"connection_state": pc.connectionState if pc else "new"}
        out.update(self._quality.get(leg, {}))
        return out

    async def _refresh_quality(self) -> None:
        """Loss, jitter and RTT per leg from aiortc's RTCP-based stats."""
        for leg, pc in (("browser", self.browser_pc), ("upstream", self.upstream_pc)):
            if pc is None:
                continue
            try:
                receiver = _audio_receiver(pc)
                sender = _audio_sender(pc)
                quality: dict[str, Any] = {}
                for report in (await receiver.getStats()).values():
                    if report.type == "inbound-rtp":
                        quality["packets_lost"] = report.packetsLost
                        quality["jitter_ms"] = round(report.jitter / 48.0, 2)
                for report in (await sender.getStats()).values():
                    if report.type == "outbound-rtp":
                        quality["packets_sent"] = report.packetsSent
                    elif report.type == "remote-inbound-rtp":
                        rtt = report.roundTripTime
                        quality["rtt_ms"] = None if rtt is None else round(rtt * 1000, 2)
                        quality["remote_packets_lost"] = report.packetsLost
                self._quality[leg] = quality
            except Exception:  # stats are best effort
                log.debug("session %s: stats refresh failed", self.session_id, exc_info=True)


def _audio_receiver(pc: RTCPeerConnection) -> RTCRtpReceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver.receiver
    raise RuntimeError("the peer has no audio transceiver")


def _audio_sender(pc: RTCPeerConnection) -> RTCRtpSender:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            return transceiver.sender
    raise RuntimeError("the peer has no audio transceiver")
