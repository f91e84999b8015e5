"""The interviewer's side healed in place (docs/operations.md, "Continuity"): the whole
relay (real PostgreSQL), the simulator over HTTP and WebRTC as the upstream, an aiortc
peer as the page. The upstream call drops mid-interview; the page's leg stays, a new
upstream session is minted, seeded with the conversation so far and swapped in; or, when
every attempt fails, the session ends ``upstream_*`` as before."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.media.bridge.talk import CONTINUE_NOTE
from relay.upstream.simulator.app import SIMULATOR_KEY
from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from relay.upstream.simulator.state import CallRecord
from tests.integration.conftest import MakeRelay
from tests.integration.continuity_helpers import (
    SPEECH,
    Page,
    a_full_turn,
    bridge_of,
    go_live,
    state_of,
)
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import OPERATOR, wait_recording
from tests.integration.relay_harness import RelayHarness

# Long enough to measure the time away against the charged seconds.
BACKOFF_S = 1.5
# How long the upstream stays hung (connected, silent) before its call ends: above the 3 s
# within which a leg counts as heard (relay.media.bridge.core.BROWSER_QUIET_S).
HUNG_S = 5.0
# The silence watch under test (its least allowed value).
SILENCE_S = 5.0


async def drop_the_call(simulator: RunningSimulator) -> CallRecord:
    """The upstream's side hangs up the live call (as OpenAI ending a session would)."""
    [live] = simulator.app[SIMULATOR_KEY].calls.live.values()
    record = simulator.state.call(live.call_id)
    await live.close("dropped")
    return record


def created_items(call: CallRecord) -> list[dict[str, Any]]:
    """The items the relay created in ``call``'s conversation (its seed)."""
    return [
        e["item"]
        for e in call.client_events
        if isinstance(e, dict) and e.get("type") == "conversation.item.create"
    ]


async def row(relay: RelayHarness, session_id: str) -> Any:
    rows = await relay.sql("SELECT * FROM interview_sessions WHERE id = $1", session_id)
    return rows[0]


@pytest.mark.slow
async def test_a_dropped_upstream_call_is_replaced_under_the_same_browser_leg(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(
        overrides={
            "session": {"upstream_reconnect_attempts": 3, "upstream_reconnect_backoff_s": BACKOFF_S}
        }
    )
    live = await go_live(relay, seconds=600)  # a plain user token, no interview
    page = live.page
    pages.append(page)
    await a_full_turn(page, heard=True)
    bridge = bridge_of(relay, live.session_id)
    browser_pc = bridge.browser_pc
    exchanges = simulator.state.requests["calls"]
    mints = len(simulator.state.mints)
    heard_before = page.speaker.loud_frames()
    # The first attempt's call is refused: the heal tries again after the backoff (and the
    # interviewer is away that long, uncharged).
    await simulator.state.update_faults({"calls": {"status": 500, "times": 1}})

    first = await drop_the_call(simulator)
    lost_at = time.monotonic()
    reconnecting = await page.wait_type("relay.upstream.reconnecting", 10)
    assert reconnecting["attempt"] == 1
    reconnected = await page.wait_type("relay.upstream.reconnected", 20)
    assert [e["attempt"] for e in page.events if e["type"] == "relay.upstream.reconnecting"] == [
        1,
        2,
    ]
    gap_s = reconnected["gap_ms"] / 1000
    assert BACKOFF_S <= gap_s < time.monotonic() - lost_at + 0.5
    time_left = page.events[page.events.index(reconnected) + 1]
    assert time_left["type"] == "relay.session.time_left"

    # The same session, browser leg and page connection: no new exchange, no new row.
    assert state_of(bridge) == "active"
    assert relay.services.bridges.get(live.session_id) is bridge
    assert bridge.browser_pc is browser_pc and page.pc.connectionState == "connected"
    assert len(await relay.sql("SELECT id FROM interview_sessions")) == 1
    assert (await row(relay, live.session_id))["state"] == "active"
    # Two new upstream sessions minted (the refused attempt's and the one in use), two
    # calls asked for, one of them up.
    assert len(simulator.state.mints) == mints + 2
    assert simulator.state.requests["calls"] == exchanges + 2
    calls = list(simulator.state.calls.values())
    assert len(calls) == 2 and calls[0] is first and first.closed_reason == "dropped"
    second = calls[1]
    assert bridge.upstream_call_id == second.call_id

    # The new upstream session was given the conversation so far, then the note.
    await wait_until(lambda: len(created_items(second)) >= 3, 10, "the seed")
    items = created_items(second)
    assert [i["role"] for i in items] == ["user", "assistant", "system"]
    assert items[0]["content"][0]["text"].startswith("(candidate spoke for")
    assert items[1]["content"] == [{"type": "output_text", "text": DEFAULT_REPLY_LINES[0]}]
    assert items[2]["content"][0]["text"] == CONTINUE_NOTE
    assert second.items_created == 3
    # The session's row names the call in use.
    assert (await row(relay, live.session_id))["upstream_call_id"] == second.call_id

    # Audio flows both ways again: the candidate's reaches the new call, the new call's
    # reply reaches the candidate (the interviewer's next line, not its greeting again).
    since = len(page.events)
    assert page.mic is not None
    page.mic.play(SPEECH)
    await wait_until(lambda: second.audio_ms_received > 1000, 10, "audio to the new call")
    await page.wait_event(
        lambda e: (
            e["type"] == "response.output_audio_transcript.done" and page.events.index(e) >= since
        ),
        25,
    )
    await wait_until(
        lambda: page.speaker.loud_frames() > heard_before + 10, 10, "the new call's reply heard"
    )
    assert (
        second.events_of("response.output_audio_transcript.done")[0]["transcript"]
        == (DEFAULT_REPLY_LINES[1])
    )

    async with relay.client.delete(f"/api/sessions/{live.session_id}", headers=OPERATOR) as r:
        assert r.status == 204
    ended = await row(relay, live.session_id)
    assert ended["state"] == "ended" and ended["end_reason"] == "operator_hangup"
    wall = (ended["ended_at"] - ended["connected_at"]).total_seconds()
    # Charged: the interview without the time the interviewer was away.
    assert ended["duration_seconds"] == pytest.approx(wall - gap_s, abs=1.0)
    assert ended["duration_seconds"] < wall - BACKOFF_S + 0.5
    assert second.hung_up

    # One recording; the time away is silence, listed as the upstream's absence.
    recording = await wait_recording(relay, live.session_id, "ready")
    assert recording["part"] == 1
    [away] = recording["disconnections"]
    assert away["leg"] == "upstream" and away["resumed"] is True
    assert away["duration_s"] == pytest.approx(gap_s, abs=0.5)
    assert recording["duration_s"] == pytest.approx(wall, abs=1.0)
    recordings = await relay.sql("SELECT id FROM recordings WHERE session_id = $1", live.session_id)
    assert len(recordings) == 1


async def test_when_every_new_upstream_leg_fails_the_session_ends_as_before(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(
        overrides={
            "session": {"upstream_reconnect_attempts": 2, "upstream_reconnect_backoff_s": 0.2}
        }
    )
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    await live.page.wait_type("session.created")
    await simulator.state.update_faults({"calls": {"status": 500}})
    exchanges = simulator.state.requests["calls"]

    await drop_the_call(simulator)
    ending = await live.page.wait_type("relay.session.ending", 20)
    assert ending["reason"] == "upstream_error"
    await relay.wait_session_closed(live.session_id)
    ended = await row(relay, live.session_id)
    assert ended["state"] == "failed"
    assert ended["end_reason"] in {
        "upstream_channel_closed",
        "upstream_disconnected",
        "upstream_failed",
    }
    assert simulator.state.requests["calls"] == exchanges + 2  # the attempts, no more
    attempts = [
        e["attempt"] for e in live.page.events if e["type"] == "relay.upstream.reconnecting"
    ]
    assert attempts == [1, 2]
    assert "relay.upstream.reconnected" not in live.page.event_types()


async def test_with_healing_off_a_dropped_upstream_call_ends_the_session(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(overrides={"session": {"upstream_reconnect_attempts": 0}})
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    await live.page.wait_type("session.created")
    await drop_the_call(simulator)
    await relay.wait_session_closed(live.session_id)
    ended = await row(relay, live.session_id)
    assert ended["state"] == "failed" and ended["end_reason"].startswith("upstream_")
    assert len(simulator.state.calls) == 1
    assert "relay.upstream.reconnecting" not in live.page.event_types()


async def test_a_hung_upstream_is_not_charged_from_when_it_was_last_heard(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    """The upstream stops sending anything (no audio, no events) while its connection stays
    up; its call is ended only later. From its last packet on, the candidate is not
    charged, not only from when the relay noticed."""
    relay = await make_relay(
        overrides={"session": {"upstream_reconnect_attempts": 1, "idle_media_timeout_s": 0}}
    )
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    await a_full_turn(live.page)
    bridge = bridge_of(relay, live.session_id)
    [call] = simulator.app[SIMULATOR_KEY].calls.live.values()
    hung = asyncio.Event()

    async def hang() -> Any:
        await hung.wait()  # never set: the simulator's sender waits here for good
        raise AssertionError("unreachable")

    # Its sender asks its track for the next frame: from now on nothing more comes (the
    # frame clock that drives its replies and events stops with it).
    call._track.recv = hang  # type: ignore[method-assign]
    await wait_until(
        lambda: (
            bridge.upstream_to_browser.last_packet_at is not None
            and time.monotonic() - bridge.upstream_to_browser.last_packet_at > 0.5
        ),
        5,
        "the upstream silent",
    )
    silent_since = bridge.upstream_to_browser.last_packet_at
    assert silent_since is not None
    await asyncio.sleep(HUNG_S)  # the stretch under test: hung, not yet noticed
    await call.close("dropped")
    reconnected = await live.page.wait_type("relay.upstream.reconnected", 20)
    gap_s = reconnected["gap_ms"] / 1000
    # The time away counts from the upstream's last packet, not from the drop.
    assert gap_s >= HUNG_S
    assert gap_s == pytest.approx(time.monotonic() - silent_since, abs=1.0)

    async with relay.client.delete(f"/api/sessions/{live.session_id}", headers=OPERATOR) as r:
        assert r.status == 204
    ended = await row(relay, live.session_id)
    wall = (ended["ended_at"] - ended["connected_at"]).total_seconds()
    assert ended["duration_seconds"] == pytest.approx(wall - gap_s, abs=1.0)
    assert ended["duration_seconds"] < wall - HUNG_S + 0.5


async def test_an_upstream_silent_past_the_watch_is_replaced_without_waiting_for_ice(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    """``session.upstream_silence_timeout_s``: an upstream whose connection stays up (ICE
    consent holds) while nothing arrives is taken for lost after that long and healed;
    the silence is not charged."""
    relay = await make_relay(
        overrides={"session": {"upstream_silence_timeout_s": SILENCE_S, "idle_media_timeout_s": 0}}
    )
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    await a_full_turn(live.page)
    bridge = bridge_of(relay, live.session_id)
    [call] = simulator.app[SIMULATOR_KEY].calls.live.values()
    first = simulator.state.call(call.call_id)
    hung = asyncio.Event()

    async def hang() -> Any:
        await hung.wait()  # never set
        raise AssertionError("unreachable")

    call._track.recv = hang  # type: ignore[method-assign]
    reconnecting = await live.page.wait_type("relay.upstream.reconnecting", SILENCE_S + 5)
    noticed = time.monotonic()
    assert reconnecting["attempt"] == 1
    silent_since = bridge.upstream_to_browser.last_packet_at
    assert silent_since is not None
    # Noticed after the watch's time (within a quarter of it: the supervision tick).
    assert SILENCE_S <= noticed - silent_since < SILENCE_S * 1.25 + 1.0
    reconnected = await live.page.wait_type("relay.upstream.reconnected", 15)
    assert reconnected["gap_ms"] / 1000 >= SILENCE_S
    assert state_of(bridge) == "active"
    # The silent call was hung up by the relay; a new one is in use.
    await wait_until(lambda: first.hung_up, 10, "the silent call hung up")
    assert bridge.upstream_call_id not in (None, first.call_id)
    assert relay.counter("relay_media_upstream_reconnects_total", outcome="healed") == 1
