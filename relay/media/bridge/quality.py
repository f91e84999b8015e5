"""Quality and statistics: the media half of ``stats()``, metric publishing, RTCP quality.

``Quality`` is given what it reads (both directions' counters and queues, the event relay,
the peers, the forwarders of the moment); the bridge adds the lifecycle half of the
snapshot (state, end, ages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiortc import RTCPeerConnection

from relay.media.bridge.audio_wiring import audio_receiver, audio_sender
from relay.media.events import EventRelay, Side
from relay.media.forwarding import DirectionStats, Forwarder
from relay.media.metrics import MediaMetrics
from relay.media.tracks import BoundedQueueTrack

log = logging.getLogger("relay.media")


class Quality:
    """One bridge's statistics (its counters live in the bridge's ``DirectionStats``)."""

    def __init__(
        self,
        *,
        session_id: str,
        started_at: float,
        browser_to_upstream: DirectionStats,
        to_upstream: BoundedQueueTrack,
        upstream_to_browser: DirectionStats,
        to_browser: BoundedQueueTrack,
        events: EventRelay,
        metrics: MediaMetrics,
        browser_pc: RTCPeerConnection,
        forwarders: Callable[[], Iterable[Forwarder]],
    ) -> None:
        self._session_id = session_id
        # The bridge's forwarders as they are now (a resumed leg brings new ones).
        self._forwarders = forwarders
        self._started_at = started_at
        self._directions = {
            "browser_to_upstream": (browser_to_upstream, to_upstream),
            "upstream_to_browser": (upstream_to_browser, to_browser),
        }
        self._events = events
        self._metrics = metrics
        self._peers: dict[Side, RTCPeerConnection | None] = {
            "browser": browser_pc,
            "upstream": None,
        }
        # Loss, jitter and RTT per leg, refreshed by the supervisor every few seconds.
        self._legs: dict[str, dict[str, Any]] = {}

    def attach_upstream(
        self, pc: RTCPeerConnection, to_upstream: BoundedQueueTrack | None = None
    ) -> None:
        """The upstream leg's peer, once negotiation created it; a new upstream leg healing
        a lost one also brings the queue it sends from (counting on from the one before)."""
        self._peers["upstream"] = pc
        if to_upstream is not None:
            self._legs.pop("upstream", None)
            stats, _ = self._directions["browser_to_upstream"]
            self._directions["browser_to_upstream"] = (stats, to_upstream)

    def attach_browser(self, pc: RTCPeerConnection, to_browser: BoundedQueueTrack) -> None:
        """A resumed browser leg's peer and the queue it sends from (which counts on from
        the one it replaces)."""
        self._peers["browser"] = pc
        self._legs.pop("browser", None)
        stats, _ = self._directions["upstream_to_browser"]
        self._directions["upstream_to_browser"] = (stats, to_browser)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The media half of the bridge's snapshot (cheap; no awaits)."""
        now = time.monotonic() if now is None else now
        self._count_up_to_date()
        first = self._directions["upstream_to_browser"][0].first_packet_at
        out: dict[str, Any] = {
            "time_to_first_upstream_audio_ms": (
                None if first is None else round((first - self._started_at) * 1000, 1)
            ),
        }
        for name, (stats, queue) in self._directions.items():
            out[name] = direction_stats(stats, queue, now)
        out["events"] = dict(self._events.counts)
        out["legs"] = {leg: self._leg_stats(leg, pc) for leg, pc in self._peers.items()}
        return out

    def publish_metrics(self) -> None:
        self._count_up_to_date()
        for stats, queue in self._directions.values():
            self._metrics.publish(stats, queue.dropped, queue.dropped_before_start)

    def _count_up_to_date(self) -> None:
        """The compiled loop copies its counters into ``DirectionStats`` in batches: bring
        them up to date before they are read (other forwarders count as they go)."""
        for forwarder in self._forwarders():
            forwarder.refresh()

    def _leg_stats(self, leg: str, pc: RTCPeerConnection | None) -> dict[str, Any]:
        out: dict[str, Any] = {"connection_state": pc.connectionState if pc else "new"}
        out.update(self._legs.get(leg, {}))
        return out

    async def refresh(self) -> None:
        """Loss, jitter and RTT per leg from aiortc's RTCP-based stats."""
        self._count_up_to_date()  # the compiled loop's far-end reports too
        for leg, pc in self._peers.items():
            if pc is None:
                continue
            try:
                self._legs[leg] = await _leg_quality(pc)
            except Exception:  # stats are best effort
                log.debug("session %s: stats refresh failed", self._session_id, exc_info=True)


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
            "late": stats.dropped_late,
            "invalid": stats.dropped_invalid,
        },
        "queue_depth": queue.depth,
        "queue_max_depth": queue.max_depth,
        "last_media_age_s": None if age is None else round(age, 3),
    }
