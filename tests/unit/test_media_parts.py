"""Pure parts of the media layer: offer validation, queue track, RTP timeline, duplicate
filter, audio level, the event allow-list and metric publishing."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from relay.config import EventsConfig
from relay.media import aiortc_private
from relay.media.audio_level import compute_audio_level_dbov
from relay.media.events import EventRelay, Side
from relay.media.forwarding import DirectionStats, DuplicateFilter, RtpTimeline
from relay.media.metrics import MediaMetrics
from relay.media.sdp import InvalidOffer, audio_negotiation, validate_offer
from relay.media.tracks import BoundedQueueTrack
from relay.observability.metrics import MetricsRegistry

# A Chrome offer (audio + data channel), trimmed of nothing that matters.
CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 5c1d3e",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1467250027 1 udp 2122260223 192.168.1.10 51472 typ host generation 0",
        "a=ice-ufrag:F7gI",
        "a=ice-pwd:x9cml/YzichV2+XlhiMu8g1m",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(["7B", "8B", "F0", "65", "B8", "2A", "C1", "1D"] * 4),
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=sendrecv",
        "a=msid:5c1d3e 1f0a",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:3735928559 cname:abc",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:F7gI",
        "a=ice-pwd:x9cml/YzichV2+XlhiMu8g1m",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + ":".join(["7B", "8B", "F0", "65", "B8", "2A", "C1", "1D"] * 4),
        "a=setup:actpass",
        "a=mid:1",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
        "",
    ]
)


# ---------------------------------------------------------------------- offers


def test_a_browser_offer_is_accepted_and_summarised() -> None:
    summary = validate_offer(CHROME_OFFER, max_bytes=20000)
    assert summary.audio_codecs[:5] == ("opus", "red", "g722", "pcmu", "pcma")
    assert summary.opus_payload_type == 111
    assert summary.data_channel_proto == "UDP/DTLS/SCTP"


def _without(line_start: str) -> str:
    return "\r\n".join(x for x in CHROME_OFFER.split("\r\n") if not x.startswith(line_start))


@pytest.mark.parametrize(
    ("offer", "reason"),
    [
        (None, "non-empty string"),
        ("", "non-empty string"),
        ("v=0\r\n" + "a=x\r\n" * 500, "lines"),
        (CHROME_OFFER.replace("s=-", "s=" + "x" * 2000), "characters long"),
        (CHROME_OFFER.replace("s=-", "s=\x00"), "control character (0x00)"),
        (CHROME_OFFER.replace("s=-", "s=\x1b[31m"), "control character (0x1b)"),
        (CHROME_OFFER.replace("t=0 0", "garbage"), "<letter>=<value>"),
        (CHROME_OFFER.replace("v=0", "v=1"), "v=0"),
        (CHROME_OFFER.replace("m=application", "m=video"), "exactly one audio"),
        (
            CHROME_OFFER + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" * 300,
            "more than 2",
        ),
        (_without("m=application").split("c=IN IP4 0.0.0.0\r\na=ice-ufrag")[0], "got 1"),
        (CHROME_OFFER.replace("m=audio 9 ", "m=audio 0 "), "port 0"),
        (CHROME_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "secure RTP"),
        (CHROME_OFFER.replace("opus/48000/2", "opus/16000/2"), "Opus"),
        (_without("a=rtpmap:111"), "Opus"),
        (CHROME_OFFER.replace("111 63 9", "111 x 9"), "payload type"),
        (CHROME_OFFER.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PC MU"), "rtpmap"),
        (_without("a=fingerprint"), "DTLS fingerprint"),
        (CHROME_OFFER.replace("sha-256 7B", "sha-256 ZZ"), "fingerprint"),
        (_without("a=ice-ufrag"), "ICE credentials"),
        (_without("a=ice-pwd"), "ICE credentials"),
        (CHROME_OFFER.replace("a=ice-pwd:x9cml/", "a=ice-pwd:x"), "ice-pwd"),
        (CHROME_OFFER.replace("a=ice-ufrag:F7gI", "a=ice-ufrag:F7g\u00e9"), "ice-ufrag"),
        (CHROME_OFFER.replace("a=setup:actpass", "a=setup:whatever"), "setup"),
        (CHROME_OFFER.replace("a=sendrecv", "a=recvonly"), "sendrecv"),
        (CHROME_OFFER.replace("webrtc-datachannel", "something"), "webrtc-datachannel"),
        (
            CHROME_OFFER.replace(
                "a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g1m\r\na=ice-options:trickle\r\n"
                "a=fingerprint",
                "a=candidate:1 1 udp 1 10.0.0.1 1 typ host\r\n" * 40
                + "a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g1m\r\na=fingerprint",
                1,
            ),
            "ICE candidates",
        ),
    ],
)
def test_bad_offers_are_refused_with_a_reason(offer: Any, reason: str) -> None:
    with pytest.raises(InvalidOffer) as caught:
        validate_offer(offer, max_bytes=1_000_000)
    assert reason in caught.value.reason


def test_the_size_cap_comes_first() -> None:
    with pytest.raises(InvalidOffer, match="at most 100 are accepted"):
        validate_offer(CHROME_OFFER, max_bytes=100)


def test_session_level_credentials_are_inherited() -> None:
    lines = CHROME_OFFER.split("\r\n")
    media_level = [x for x in lines if x.startswith(("a=ice-ufrag", "a=ice-pwd", "a=fingerprint"))]
    stripped = [x for x in lines if x not in media_level]
    at = stripped.index("a=group:BUNDLE 0 1")
    offer = "\r\n".join(stripped[: at + 1] + media_level[:3] + stripped[at + 1 :])
    assert validate_offer(offer, max_bytes=20000).opus_payload_type == 111


def test_audio_negotiation_reads_the_codec_order() -> None:
    negotiation = audio_negotiation(CHROME_OFFER)
    assert negotiation.primary == "opus" and negotiation.is_opus
    assert negotiation.codecs == ("opus", "g722", "pcmu", "pcma")
    assert negotiation.opus_payload_types == frozenset({111})
    # aiortc takes the a=rtpmap order (browsers write it in the m= line's order).
    pcmu_first = CHROME_OFFER.replace("a=rtpmap:0 PCMU/8000\r\n", "").replace(
        "a=rtpmap:111", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:111"
    )
    assert audio_negotiation(pcmu_first).primary == "pcmu"
    assert not audio_negotiation(pcmu_first).is_opus


# ---------------------------------------------------------------------- queue track


async def test_queue_track_keeps_nothing_until_its_consumer_starts() -> None:
    track = BoundedQueueTrack(3, held_max_age_s=0.01)
    track.put("stale")
    assert track.depth == 0 and track.dropped_before_start == 1 and track.dropped == 0
    await asyncio.sleep(0.02)  # the held item ages past held_max_age_s
    first = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    assert not first.done()
    track.put("fresh")
    assert await asyncio.wait_for(first, 1) == "fresh"
    assert track.dropped_before_start == 1


async def test_queue_track_starts_with_the_newest_item_if_still_fresh() -> None:
    track = BoundedQueueTrack(3, held_max_age_s=60)
    track.put("older")
    track.put("newest")
    assert track.depth == 0 and track.dropped_before_start == 2
    assert await asyncio.wait_for(track.recv(), 1) == "newest"
    assert track.dropped_before_start == 1  # only "older" was lost
    track.put("next")
    assert await asyncio.wait_for(track.recv(), 1) == "next"


async def test_queue_track_drops_the_oldest_and_counts() -> None:
    track = BoundedQueueTrack(3)
    first = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    track.put(0)
    assert await asyncio.wait_for(first, 1) == 0
    for i in range(1, 6):
        track.put(i)
    assert track.depth == 3 and track.dropped == 2 and track.max_depth == 3
    assert [await track.recv() for _ in range(3)] == [3, 4, 5]


async def test_queue_track_recv_waits_for_put_and_ends_on_stop() -> None:
    track = BoundedQueueTrack(2)
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    assert not waiting.done()
    track.put("x")
    assert await asyncio.wait_for(waiting, 1) == "x"
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1)
    track.put("after")
    assert track.depth == 0
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_queue_track_refuses_a_zero_bound() -> None:
    with pytest.raises(ValueError, match="max_items"):
        BoundedQueueTrack(0)


# ---------------------------------------------------------------------- timeline


def test_timeline_unwraps_reorders_and_switches_sources() -> None:
    timeline = RtpTimeline()
    start = 2**32 - 1920
    assert timeline.map(start) == 0
    assert timeline.map(start + 960) == 960
    assert timeline.map((start + 2880) % 2**32) == 2880  # wrapped past 2**32
    assert timeline.map((start + 1920) % 2**32) == 1920  # late, reordered: goes back
    assert timeline.map((start + 3840) % 2**32) == 3840
    timeline.restart()  # a new SSRC with an unrelated timestamp origin
    assert timeline.map(12345) == 3840 + 960
    assert timeline.map(12345 + 960) == 3840 + 1920


def test_duplicate_filter() -> None:
    seen = DuplicateFilter()
    assert not seen.seen(65534)
    assert not seen.seen(65535)
    assert not seen.seen(1)  # wraps, skips 0
    assert seen.seen(65535)  # duplicate
    assert not seen.seen(0)  # late but new
    assert seen.seen(0)
    assert not seen.seen(1 + 200)  # big jump forward
    assert not seen.seen(1)  # too old to tell: forwarded
    seen.reset()
    assert not seen.seen(201)


# ---------------------------------------------------------------------- audio level


def _frame(samples: np.ndarray, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
    frame.sample_rate = 48000
    return frame


@pytest.mark.parametrize(("amplitude", "expected"), [(0, -127), (32767, 0), (3277, -20)])
def test_audio_level_matches_rfc6465(amplitude: int, expected: int) -> None:
    square = np.where(np.arange(960) % 2 == 0, amplitude, -amplitude).astype(np.int16)
    assert compute_audio_level_dbov(_frame(square, "mono")) == expected
    aiortc_level = aiortc_private.AIORTC_AUDIO_LEVEL
    assert aiortc_level is not None
    assert aiortc_level(_frame(square, "mono")) == expected


def test_audio_level_of_stereo_is_not_3db_too_loud() -> None:
    tone = (np.sin(np.arange(960) / 7) * 10000).astype(np.int16)
    mono = compute_audio_level_dbov(_frame(tone, "mono"))
    stereo = compute_audio_level_dbov(_frame(np.repeat(tone, 2), "stereo"))
    assert stereo == mono
    aiortc_level = aiortc_private.AIORTC_AUDIO_LEVEL
    assert aiortc_level is not None
    assert aiortc_level(_frame(np.repeat(tone, 2), "stereo")) == mono + 3


# ---------------------------------------------------------------------- events


class FakeChannel:
    """A data channel's surface as EventRelay uses it (label, state, send, events)."""

    def __init__(self, label: str = "oai-events", state: str = "open") -> None:
        self.label = label
        self.readyState = state
        # Nothing held unsent (the relay reads it before sending: a stalled peer's backlog).
        self.bufferedAmount = 0
        self.sent: list[str | bytes] = []
        self.handlers: dict[str, Callable[..., None]] = {}

    def on(self, name: str, handler: Callable[..., None]) -> None:
        self.handlers[name] = handler

    def send(self, message: str | bytes) -> None:
        self.sent.append(message)

    def emit(self, name: str, *args: Any) -> None:
        self.handlers[name](*args)


def _relay(**config: Any) -> tuple[EventRelay, list[Side], MetricsRegistry]:
    registry = MetricsRegistry()
    closed: list[Side] = []
    relay = EventRelay(EventsConfig(**config), MediaMetrics(registry), on_closed=closed.append)
    return relay, closed, registry


def test_events_wait_for_the_other_side_and_flow_in_order() -> None:
    relay, closed, _ = _relay()
    upstream, browser = FakeChannel(), FakeChannel(state="connecting")
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    upstream.emit("message", '{"type":"session.created"}')
    upstream.emit("message", '{"type":"output_audio_buffer.started"}')
    assert relay.attach_browser(browser)  # type: ignore[arg-type]
    assert browser.sent == []
    browser.readyState = "open"
    browser.emit("open")
    upstream.emit("message", '{"type":"response.done"}')
    assert [json.loads(m)["type"] for m in browser.sent] == [
        "session.created",
        "output_audio_buffer.started",
        "response.done",
    ]
    assert not relay.attach_browser(FakeChannel())  # type: ignore[arg-type]
    browser.emit("close")
    assert closed == ["browser"]


def test_browser_events_are_checked_against_the_allow_list() -> None:
    relay, _, registry = _relay(
        browser_allowed=("response.cancel", "response.create"), max_message_bytes=200
    )
    upstream, browser = FakeChannel(), FakeChannel()
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    relay.attach_browser(browser)  # type: ignore[arg-type]
    for message in (
        '{"type":"response.create","event_id":"e1"}',
        '{"type":"conversation.item.delete","event_id":"e2","item_id":"item_1"}',
        '{"type":"conversation.item.create"}',
        '{"event_id":"e4"}',
        "[1, 2]",
        "{nope",
        b"\x00binary",
        json.dumps({"type": "response.cancel", "pad": "x" * 300}),
        '{"type":"response.cancel"}',
    ):
        browser.emit("message", message)
    assert upstream.sent == [
        '{"type":"response.create","event_id":"e1"}',
        '{"type":"response.cancel"}',
    ]
    errors = [json.loads(m) for m in browser.sent]
    assert [(e["error"]["code"], e["error"]["event_id"]) for e in errors] == [
        ("event_not_allowed", "e2"),
        ("event_not_allowed", None),
        ("invalid_event", "e4"),
        ("invalid_event", None),
        ("invalid_event", None),
        ("invalid_event", None),
        ("event_too_large", None),
    ]
    assert all(
        e["type"] == "error" and e["error"]["type"] == "invalid_request_error" for e in errors
    )
    assert all(e["event_id"].startswith("event_relay_") for e in errors)
    assert relay.counts["refused"] == 7 and relay.counts["browser_to_upstream"] == 2
    refused = registry.snapshot()["relay_media_events_refused_total"]
    assert {r["reason"]: r["value"] for r in refused} == {
        "event_not_allowed": 2,
        "invalid_event": 4,
        "event_too_large": 1,
    }


def test_deeply_nested_json_is_refused_not_raised() -> None:
    relay, _, _ = _relay(browser_allowed=("response.cancel",), max_message_bytes=16384)
    upstream, browser = FakeChannel(), FakeChannel()
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    relay.attach_browser(browser)  # type: ignore[arg-type]
    browser.emit("message", "[" * 16000)  # recursion, within the size cap
    assert upstream.sent == []
    assert json.loads(browser.sent[0])["error"]["code"] == "invalid_event"


SESSION_CREATED = {
    "type": "session.created",
    "event_id": "event_1",
    "session": {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_1",
        "model": "gpt-realtime-2.1",
        "instructions": "The interviewer's rubric",
        "tools": [{"type": "function", "name": "score"}],
        "audio": {"output": {"voice": "marin"}},
    },
}


def test_session_update_is_answered_by_the_relay_and_never_forwarded_even_if_configured() -> None:
    # Settings validation refuses it too; the relay does not rely on that alone.
    registry = MetricsRegistry()
    config = EventsConfig()
    object.__setattr__(config, "browser_allowed", ("session.update",))
    events = EventRelay(config, MediaMetrics(registry), on_closed=lambda side: None)
    upstream, browser = FakeChannel(), FakeChannel()
    events.attach_upstream(upstream)  # type: ignore[arg-type]
    events.attach_browser(browser)  # type: ignore[arg-type]
    upstream.emit("message", json.dumps(SESSION_CREATED))
    asked = {"type": "realtime", "instructions": "Be my friend", "model": "gpt-4o", "tools": []}
    browser.emit("message", json.dumps({"type": "session.update", "session": asked}))
    assert upstream.sent == []
    created, updated = (json.loads(m) for m in browser.sent)
    assert updated["type"] == "session.updated"
    assert updated["event_id"].startswith("event_relay_")
    # The effective session, as the page may see session.created's: what was asked for
    # changes nothing, and the interviewer's configuration is not in it.
    assert updated["session"] == created["session"]
    assert updated["session"]["model"] == "gpt-realtime-2.1"
    assert "instructions" not in updated["session"] and "tools" not in updated["session"]
    assert events.counts["session_updates_answered"] == 1 and events.counts["refused"] == 0


def test_a_session_update_before_the_upstream_session_is_answered_right_after_it() -> None:
    relay, _, _ = _relay()
    upstream, browser = FakeChannel(), FakeChannel()
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    relay.attach_browser(browser)  # type: ignore[arg-type]
    browser.emit("message", '{"type":"session.update","event_id":"e1","session":{}}')
    assert browser.sent == [] and upstream.sent == []
    upstream.emit("message", json.dumps(SESSION_CREATED))
    assert [json.loads(m)["type"] for m in browser.sent] == ["session.created", "session.updated"]
    # Only once: a later upstream event owes nothing more.
    upstream.emit("message", '{"type":"response.done"}')
    assert [json.loads(m)["type"] for m in browser.sent][2:] == ["response.done"]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ('{"type":"session.update","session":"be nice"}', "invalid_value"),
        ('{"type":"session.update","session":{},"extra":1}', "unknown_parameter"),
        ('{"type":"session.update","session":{},"type":"session.update"}', "invalid_event"),
    ],
)
def test_a_malformed_session_update_is_refused(message: str, code: str) -> None:
    relay, _, _ = _relay()
    upstream, browser = FakeChannel(), FakeChannel()
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    relay.attach_browser(browser)  # type: ignore[arg-type]
    upstream.emit("message", json.dumps(SESSION_CREATED))
    browser.emit("message", message)
    answer = json.loads(browser.sent[-1])
    assert (answer["type"], answer["error"]["code"]) == ("error", code)
    assert upstream.sent == []


def test_session_updates_are_rate_limited_like_any_event_type() -> None:
    relay, _, _ = _relay(browser_burst=3, browser_rate_per_s=0.001)
    upstream, browser = FakeChannel(), FakeChannel()
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    relay.attach_browser(browser)  # type: ignore[arg-type]
    upstream.emit("message", json.dumps(SESSION_CREATED))
    for i in range(5):
        browser.emit("message", json.dumps({"type": "session.update", "event_id": f"u{i}"}))
    answers = [json.loads(m) for m in browser.sent[1:]]
    assert [a["type"] for a in answers] == ["session.updated"] * 3 + ["error"] * 2
    assert answers[-1]["error"]["code"] == "rate_limited"
    assert answers[-1]["error"]["event_id"] == "u4"


def test_pending_events_are_bounded() -> None:
    relay, _, registry = _relay()
    upstream = FakeChannel()
    relay.attach_upstream(upstream)  # type: ignore[arg-type]
    for i in range(300):
        upstream.emit("message", json.dumps({"type": "response.output_text.delta", "i": i}))
    browser = FakeChannel()
    relay.attach_browser(browser)  # type: ignore[arg-type]
    assert len(browser.sent) == 256
    assert json.loads(browser.sent[0])["i"] == 44
    assert relay.counts["dropped"] == 44
    dropped = registry.snapshot()["relay_media_events_dropped_total"]
    assert dropped == [{"direction": "upstream_to_browser", "value": 44}]


# ---------------------------------------------------------------------- metrics


def test_metrics_are_published_as_deltas() -> None:
    registry = MetricsRegistry()
    metrics = MediaMetrics(registry)
    stats = DirectionStats("browser_to_upstream", packets_in=10, forwarded=9, bytes_in=800)
    stats.dropped_duplicate = 1
    metrics.publish(stats, queue_drops=2)
    stats.packets_in, stats.forwarded = 15, 14
    stats.dropped_late = 3
    metrics.publish(stats, queue_drops=2)
    snap = registry.snapshot()
    assert snap["relay_media_packets_received_total"] == [
        {"direction": "browser_to_upstream", "value": 15}
    ]
    assert snap["relay_media_packets_forwarded_total"][0]["value"] == 14
    assert snap["relay_media_queue_drops_total"][0]["value"] == 2
    assert snap["relay_media_packets_dropped_total"] == [
        {"direction": "browser_to_upstream", "reason": "duplicate", "value": 1},
        {"direction": "browser_to_upstream", "reason": "late", "value": 3},
    ]
    received = registry.counter("relay_media_bytes_received_total", "", ["direction"])
    assert math.isclose(received.value(direction="browser_to_upstream"), 800)
    # A forgotten stats object starts from zero again (a new bridge reusing the id).
    metrics.forget(stats)
    metrics.publish(DirectionStats("browser_to_upstream", bytes_in=5), queue_drops=0)
    assert math.isclose(received.value(direction="browser_to_upstream"), 805)


async def test_a_held_packet_sent_after_all_is_published_without_a_negative_count() -> None:
    """A packet held before the leg starts counts as dropped until it is sent; a round of
    the monitor between the two published it, and the next saw the count go down: a
    negative increment, which a Prometheus counter refuses (the session's monitor failed)."""
    metrics = MediaMetrics(MetricsRegistry(process_metrics=False))
    stats = DirectionStats("browser_to_upstream")
    track = BoundedQueueTrack(3, held_max_age_s=60)
    track.put("held")
    metrics.publish(stats, track.dropped, track.dropped_before_start)
    assert await asyncio.wait_for(track.recv(), 1) == "held"  # sent after all
    metrics.publish(stats, track.dropped, track.dropped_before_start)
    dropped = metrics.packets_dropped
    # The high-water mark stays published (a counter cannot go down).
    assert dropped.value(direction="browser_to_upstream", reason="before_connect") == 1
