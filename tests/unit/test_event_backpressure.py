"""Data-channel events behind a stalled leg, with real aiortc peers on loopback (a browser
peer, the bridge, an in-process upstream peer): what the relay holds for a peer that stops
reading stays within events.max_buffered_bytes; the rest is dropped and counted, and the
interview's audio goes on."""

from __future__ import annotations

from relay.config import EventsConfig
from tests.integration.media_helpers import (
    encode_opus,
    speech_like,
    stop_reading_events,
    transcript_delta,
    wait_until,
)
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)

SPEECH = encode_opus(speech_like(1.5))
LIMIT = 4096
MESSAGES = 200


def _user_text(i: int) -> dict[str, object]:
    return {
        "type": "conversation.item.create",
        "event_id": f"c{i}",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "answer " * 150}],
        },
    }


async def test_events_for_a_browser_that_stopped_reading_are_bounded_then_dropped(
    rig: Rig,  # noqa: F811
) -> None:
    bridge = rig.bridge(events=EventsConfig(max_buffered_bytes=LIMIT))
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    call = rig.upstream.calls[0]
    stop_reading_events(browser.pc)
    for i in range(MESSAGES):
        call.channel.send(transcript_delta(i))
    counts = bridge.events.counts
    # Every message reached the relay and was either sent on or dropped (session.created
    # was sent before the stall).
    await wait_until(
        lambda: counts["upstream_to_browser"] + counts.get("dropped_backlog", 0) == MESSAGES + 1,
        10,
        "every upstream event handled",
    )
    to_browser = bridge.events.browser
    assert to_browser is not None
    assert to_browser.bufferedAmount <= LIMIT
    assert counts.get("dropped_backlog", 0) > MESSAGES // 2
    assert rig.counter(
        "relay_media_events_backlog_dropped_total", direction="upstream_to_browser"
    ) == counts.get("dropped_backlog")
    # A stall is counted once per episode (the channel over the limit until it drains to
    # half), not per dropped event. One episode, as a rule; CI on a busy machine once
    # counted two (the buffer went below half and over the limit again before the burst
    # ended): at least one, and far fewer than the drops.
    stalls = rig.counter("relay_media_event_channel_stalls_total", direction="upstream_to_browser")
    assert 1 <= stalls <= counts["dropped_backlog"] // 10, (stalls, counts)
    # The interview goes on: audio still flows both ways.
    forwarded = bridge.stats()["upstream_to_browser"]["forwarded"]
    await wait_until(
        lambda: bridge.stats()["upstream_to_browser"]["forwarded"] > forwarded + 25,
        10,
        "audio still forwarded to the browser",
    )
    assert bridge.state == "active"


async def test_events_for_an_upstream_that_stopped_reading_are_bounded_then_dropped(
    rig: Rig,  # noqa: F811
) -> None:
    bridge = rig.bridge(
        events=EventsConfig(
            max_buffered_bytes=LIMIT,
            browser_allowed=("conversation.item.create",),
            browser_burst=1000,
            browser_rate_per_s=1000,
        )
    )
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    call = rig.upstream.calls[0]
    stop_reading_events(call.pc)
    sent = 40
    for i in range(sent):
        browser.send_event(_user_text(i))
    counts = bridge.events.counts
    await wait_until(
        lambda: counts["browser_to_upstream"] + counts.get("dropped_backlog", 0) == sent,
        10,
        "every browser event handled",
    )
    to_upstream = bridge.events.upstream
    assert to_upstream is not None
    assert to_upstream.bufferedAmount <= LIMIT
    assert counts.get("dropped_backlog", 0) > sent // 2
    assert (
        rig.counter("relay_media_event_channel_stalls_total", direction="browser_to_upstream") == 1
    )
    assert counts["refused"] == 0  # dropped for the stall, not refused
    assert bridge.state == "active"
