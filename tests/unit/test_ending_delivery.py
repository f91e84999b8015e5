"""The relay's ending event reaches the page before its leg closes: the bridge waits (up to
its flush time) until the page's SCTP has acknowledged what was sent to it, not only until
the data channel's buffer is empty (``EventRelay.drain_browser``; the ``ending_acknowledged``
capability). A message that has left the buffer may still wait in SCTP's outbound queue for
the congestion window, and closing the association would abort it."""

from __future__ import annotations

import time

from relay.media import aiortc_private, relay_events
from tests.integration.media_helpers import stop_reading_events, transcript_delta, wait_until
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)

BURST = 400


async def test_the_ending_follows_a_burst_of_events_to_the_page(rig: Rig) -> None:  # noqa: F811
    """A burst of transcript deltas is on its way to the page when the team ends the
    interview: every delta forwarded before the ending reaches the page, in order, then the
    ending, and nothing after it."""
    bridge = rig.bridge()
    browser = rig.browser()
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    call = rig.upstream.calls[0]
    for i in range(BURST):
        call.channel.send(transcript_delta(i))
    await wait_until(
        lambda: "response.output_audio_transcript.delta" in browser.event_types(),
        5,
        "the burst reaching the page",
    )
    await bridge.close("operator_hangup")
    await wait_until(lambda: browser.channel.readyState == "closed", 5, "the page's channel closed")
    assert browser.event_types()[-1] == "relay.session.ending"
    assert browser.events[-1]["reason"] == "operator"
    deltas = [e["event_id"] for e in browser.events if e["type"].endswith("transcript.delta")]
    assert deltas == [f"event_d{i}" for i in range(len(deltas))]
    assert len(deltas) + bridge.events.counts["dropped_after_ending"] <= BURST


async def test_nothing_reaches_the_page_after_the_ending(rig: Rig) -> None:  # noqa: F811
    """Once the ending event is on its way, what the upstream still sends (the rest of a
    reply in progress) is held back from the page and counted."""
    bridge = rig.bridge()
    browser = rig.browser()
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    events = bridge.events
    events.end_browser_delivery(relay_events.ending("operator"))
    call = rig.upstream.calls[0]
    for i in range(10):
        call.channel.send(transcript_delta(i))
    await wait_until(lambda: events.counts["dropped_after_ending"] == 10, 5, "the deltas held back")
    events.send_to_browser(relay_events.time_left(30))  # the relay's own events too
    assert await events.drain_browser(2)
    assert browser.event_types()[-1] == "relay.session.ending"  # not the time left
    assert "response.output_audio_transcript.delta" not in browser.event_types()


async def test_draining_waits_for_the_pages_acknowledgement(rig: Rig) -> None:  # noqa: F811
    bridge = rig.bridge()
    assert bridge._settings.capabilities.available("ending_acknowledged")
    browser = rig.browser()
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    events = bridge.events
    announced = browser.event_types().count("relay.session.time_left")  # at the start
    # A page that reads: drained once acknowledged, and by then the page has the event.
    events.send_to_browser(relay_events.time_left(90))
    assert await events.drain_browser(2)
    assert browser.event_types().count("relay.session.time_left") == announced + 1
    # A page that stopped reading (its SCTP drops DATA and acknowledges none): the event
    # leaves the channel's buffer, which is all the buffer alone can tell, but it is never
    # acknowledged, so draining runs to its time limit and says so.
    stop_reading_events(browser.pc)
    events.send_to_browser(relay_events.time_left(60))
    channel = events.browser
    assert channel is not None
    await wait_until(lambda: channel.bufferedAmount == 0, 2, "out of the channel's buffer")
    assert aiortc_private.sctp_unacknowledged(channel) > 0
    started = time.monotonic()
    assert not await events.drain_browser(0.3)
    assert time.monotonic() - started >= 0.29
    assert browser.event_types().count("relay.session.time_left") == announced + 1
