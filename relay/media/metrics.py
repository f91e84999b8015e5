"""The media layer's metrics, and publishing per-bridge counters as deltas."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.media.forwarding import DirectionStats
from relay.observability.metrics import SLOW_BUCKETS, MetricsRegistry

# DirectionStats fields published as counters, with their metric names.
_COUNTED = {
    "packets_in": "relay_media_packets_received_total",
    "bytes_in": "relay_media_bytes_received_total",
    "forwarded": "relay_media_packets_forwarded_total",
    "forwarded_bytes": "relay_media_bytes_forwarded_total",
    "frames_decoded": "relay_media_frames_decoded_total",
}
# The directions events are relayed in (relay.media.events).
EVENT_DIRECTIONS = ("upstream_to_browser", "browser_to_upstream")


@dataclass
class _Published:
    values: dict[str, int] = field(default_factory=dict)
    queue_drops: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class MediaMetrics:
    """Counters, gauges and summaries of the media bridges (one per registry)."""

    def __init__(self, registry: MetricsRegistry) -> None:
        # For the bridges' task groups (their background tasks' failures are counted there).
        self.registry = registry
        labels = ["direction"]
        self._counters = {
            key: registry.counter(
                name, f"Media {key.replace('_', ' ')} per direction (all bridges)", labels
            )
            for key, name in _COUNTED.items()
        }
        self.queue_drops = registry.counter(
            "relay_media_queue_drops_total",
            "Oldest items dropped because a forwarding queue was full",
            labels,
        )
        self.packets_dropped = registry.counter(
            "relay_media_packets_dropped_total",
            "Received packets not forwarded, by reason",
            ["direction", "reason"],
        )
        self.forwarding_modes = registry.counter(
            "relay_media_directions_total",
            "Bridged directions by forwarding mode (passthrough: no decoder ran)",
            ["direction", "mode"],
        )
        self.events_forwarded = registry.counter(
            "relay_media_events_forwarded_total",
            "Data-channel events relayed, by direction",
            labels,
        )
        self.events_refused = registry.counter(
            "relay_media_events_refused_total",
            "Browser data-channel events refused, by reason",
            ["reason"],
        )
        self.events_dropped = registry.counter(
            "relay_media_events_dropped_total",
            "Data-channel events dropped because the other side was not open in time",
            labels,
        )
        self.events_backlog_dropped = registry.counter(
            "relay_media_events_backlog_dropped_total",
            "Data-channel events dropped because the receiving side's channel already held"
            " events.max_buffered_bytes unsent (its peer not reading), by direction",
            labels,
        )
        self.event_channel_stalls = registry.counter(
            "relay_media_event_channel_stalls_total",
            "Times a data channel reached events.max_buffered_bytes unsent, by direction",
            labels,
        )
        self.event_channel_stalls.declare(direction=EVENT_DIRECTIONS)  # RelayEventChannelStalls
        self.events_filtered = registry.counter(
            "relay_media_events_filtered_total",
            "Upstream server events withheld from the browser by the event filter",
        )
        self.event_floods = registry.counter(
            "relay_media_event_floods_total",
            "Browser event channels closed for too many refused events, by action",
            ["action"],
        )
        self.browser_lost = registry.counter(
            "relay_media_browser_legs_lost_total",
            "Browser legs lost with the interview kept for a resume, by cause",
            ["cause"],
        )
        self.resumes = registry.counter(
            "relay_media_resumes_total",
            "Resumed browser legs: resumed (connected again) or failed (an attempt)",
            ["outcome"],
        )
        self.upstream_reconnects = registry.counter(
            "relay_media_upstream_reconnects_total",
            "Lost upstream legs healed in place: healed (a new one swapped in), "
            "attempt_failed (one attempt), gave_up (every attempt failed; the session ended)",
            ["outcome"],
        )
        self.bridges_live = registry.gauge("relay_media_bridges_live", "Live media bridges")
        self.forwarding_path = registry.gauge(
            "relay_media_forwarding_path",
            "1 for the path the fast path forwards with (compiled: relay.media._fastloop)",
            ["path"],
        )
        self.bridges_ended = registry.counter(
            "relay_media_bridges_ended_total", "Bridges ended, by reason", ["reason"]
        )
        self.exchange_s = registry.histogram(
            "relay_media_exchange_duration_seconds",
            "Time to answer a browser offer (both legs negotiated)",
            buckets=SLOW_BUCKETS,
        )
        self.connect_s = registry.histogram(
            "relay_media_connect_duration_seconds",
            "From the offer until both legs were connected",
            buckets=SLOW_BUCKETS,
        )
        self.first_upstream_audio_s = registry.histogram(
            "relay_media_first_upstream_audio_seconds",
            "From the offer until the first upstream audio packet arrived",
            buckets=SLOW_BUCKETS,
        )
        # 1 per feature of relay.media.capabilities that this aiortc/aioice allows, 0 for
        # one fallen back to aiortc's own path (why: /api/stats media_capabilities).
        self.capability_available = registry.gauge(
            "relay_media_capability_available",
            "1 when the aiortc/aioice adaptation is in use, 0 when fallen back",
            ["feature"],
        )
        self._published: dict[int, _Published] = {}

    def set_forwarding_path(self, path: str) -> None:
        for name in ("compiled", "python"):
            self.forwarding_path.set(1 if name == path else 0, path=name)

    def publish(self, stats: DirectionStats, queue_drops: int, before_start: int = 0) -> None:
        """Add what grew since the last call for this ``stats`` object.

        Only growth is added, and what was published is the high-water mark: a value may
        go back down (a packet held before the leg started is counted dropped until it is
        sent after all: ``BoundedQueueTrack.recv``), and a Prometheus counter raises on a
        negative increment, which failed the session's monitor (a resume's round came
        while a packet was held)."""
        seen = self._published.setdefault(id(stats), _Published())
        direction = stats.direction
        for key, counter in self._counters.items():
            value = getattr(stats, key)
            delta = value - seen.values.get(key, 0)
            if delta > 0:
                counter.inc(delta, direction=direction)
                seen.values[key] = value
        if queue_drops > seen.queue_drops:
            self.queue_drops.inc(queue_drops - seen.queue_drops, direction=direction)
            seen.queue_drops = queue_drops
        for reason, value in (
            ("other_codec", stats.dropped_other_codec),
            ("duplicate", stats.dropped_duplicate),
            ("decoder_backlog", stats.dropped_decoder_backlog),
            ("before_connect", before_start + stats.dropped_not_connected),
            ("late", stats.dropped_late),  # the fast path: behind SRTP's replay window
            ("invalid", stats.dropped_invalid),  # the fast path: SRTP/RTP checks failed
        ):
            delta = value - seen.dropped.get(reason, 0)
            if delta > 0:
                self.packets_dropped.inc(delta, direction=direction, reason=reason)
                seen.dropped[reason] = value

    def forget(self, stats: DirectionStats) -> None:
        self._published.pop(id(stats), None)
