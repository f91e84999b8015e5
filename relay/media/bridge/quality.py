"""Quality and statistics: the ``stats()`` snapshot, metric publishing, RTCP quality."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection

from relay.media.bridge.audio_wiring import audio_receiver, audio_sender
from relay.media.forwarding import DirectionStats
from relay.media.tracks import BoundedQueueTrack

if TYPE_CHECKING:
    from relay.media.bridge.core import Bridge

log = logging.getLogger("relay.media")


class Quality:
    """One bridge's statistics (its counters live in the bridge's ``DirectionStats``)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        # Loss, jitter and RTT per leg, refreshed by the supervisor every few seconds.
        self._legs: dict[str, dict[str, Any]] = {}

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the bridge (cheap; no awaits)."""
        b = self._bridge
        for forwarder in b.forwarders:
            forwarder.refresh()
        now = time.monotonic()
        first = b.upstream_to_browser.first_packet_at
        return {
            "state": b.state,
            "end_state": b.end_state,
            "end_reason": b.end_reason,
            "age_s": round(now - b.started_at, 3),
            "active_s": round(b.active_seconds(now), 3),
            "upstream_call_id": b.upstream_call_id,
            "time_to_first_upstream_audio_ms": (
                None if first is None else round((first - b.started_at) * 1000, 1)
            ),
            "browser_to_upstream": direction_stats(b.browser_to_upstream, b.to_upstream, now),
            "upstream_to_browser": direction_stats(b.upstream_to_browser, b.to_browser, now),
            "events": dict(b.events.counts),
            "legs": {
                "browser": self._leg_stats("browser", b.browser_pc),
                "upstream": self._leg_stats("upstream", b.upstream_pc),
            },
        }

    def publish_metrics(self) -> None:
        b = self._bridge
        for forwarder in b.forwarders:
            forwarder.refresh()
        for stats, queue in (
            (b.browser_to_upstream, b.to_upstream),
            (b.upstream_to_browser, b.to_browser),
        ):
            b.metrics.publish(stats, queue.dropped, queue.dropped_before_start)

    def _leg_stats(self, leg: str, pc: RTCPeerConnection | None) -> dict[str, Any]:
        out: dict[str, Any] = {"connection_state": pc.connectionState if pc else "new"}
        out.update(self._legs.get(leg, {}))
        return out

    async def refresh(self) -> None:
        """Loss, jitter and RTT per leg from aiortc's RTCP-based stats."""
        b = self._bridge
        for leg, pc in (("browser", b.browser_pc), ("upstream", b.upstream_pc)):
            if pc is None:
                continue
            try:
                self._legs[leg] = await _leg_quality(pc)
            except Exception:  # stats are best effort
                log.debug("session %s: stats refresh failed", b.session_id, exc_info=True)


async def _leg_quality(pc: RTCPeerConnection) -> dict[str, Any]:
    quality: dict[str, Any] = {}
    for report in (await audio_receiver(pc).getStats()).values():
        if report.type == "inbound-rtp":
            quality["packets_lost"] = report.packetsLost
            quality["jitter_ms"] = round(report.jitter / 48.0, 2)
    for report in (await audio_sender(pc).getStats()).values():
        if report.type == "outbound-rtp":
            quality["packets_sent"] = report.packetsSent
        elif report.type == "remote-inbound-rtp":
            rtt = report.roundTripTime
            quality["rtt_ms"] = None if rtt is None else round(rtt * 1000, 2)
            quality["remote_packets_lost"] = report.packetsLost
    return quality


def direction_stats(stats: DirectionStats, queue: BoundedQueueTrack, now: float) -> dict[str, Any]:
    age = stats.last_media_age_s(now)
    return {
        "mode": stats.mode,
        "decoder_used": stats.mode == "decode",
        "fast_path": stats.fast_path,
        "compiled": stats.compiled,
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
