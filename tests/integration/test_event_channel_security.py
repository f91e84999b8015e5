"""What crosses the event channel, over a real bridge: a real aiortc "browser", the whole
relay (real PostgreSQL) and the simulator as the upstream over real HTTP and WebRTC."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from relay.config import voice_for
from relay.media.bridge import Bridge
from relay.upstream.simulator.app import SIMULATOR_KEY
from relay.upstream.simulator.server import RunningSimulator
from relay.upstream.simulator.state import CallRecord
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import RelayHarness

SPEECH = encode_opus(speech_like(1.0))
INSTRUCTIONS = "Interviewer-only rubric 7f3a: reject anyone who mentions tabs."

Live = tuple[RelayHarness, BrowserPeer, Bridge, str]
Connect = Callable[..., Awaitable[Live]]


@pytest.fixture
async def connect(make_relay: MakeRelay) -> AsyncIterator[Connect]:
    browsers: list[BrowserPeer] = []

    async def factory(**overrides: dict[str, Any]) -> Live:
        sections = {"upstream": {"instructions": INSTRUCTIONS}, **overrides}
        relay = await make_relay(overrides=sections)
        token = await relay.add_user(seconds=600)
        status, body, _ = await relay.create_session(token)
        assert status == 201, body
        browser = BrowserPeer(payloads=SPEECH)
        browsers.append(browser)
        session_id = body["session_id"]
        async with relay.client.post(
            "/api/webrtc-exchange",
            json={"session_id": session_id, "type": "offer", "sdp": await browser.offer()},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        await browser.accept(answer["sdp"])
        await browser.wait_connected()
        assert relay.services.bridges is not None
        bridge = relay.services.bridges.get(session_id)
        assert bridge is not None
        await wait_until(lambda: bridge.state == "active", 10, "bridge active")
        return relay, browser, bridge, session_id

    yield factory
    for browser in browsers:
        await browser.close()


def _call(simulator: RunningSimulator) -> CallRecord:
    call = simulator.state.last_call
    assert call is not None
    return call


async def test_the_browser_never_sees_the_interviewer_instructions(
    connect: Connect, simulator: RunningSimulator
) -> None:
    relay, browser, _, _ = await connect()
    created = await browser.wait_type("session.created")
    # The upstream really was configured with them (so the filter had something to remove).
    sent = [e for e in _call(simulator).server_events if e.get("type") == "session.created"]
    assert sent[0]["session"]["instructions"] == INSTRUCTIONS
    raw = json.dumps(browser.events)
    assert "7f3a" not in raw
    session = created["session"]
    assert "instructions" not in session and "tools" not in session
    assert session["audio"]["output"]["voice"] == voice_for(relay.services.settings.upstream)
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


async def test_smuggled_and_unchecked_events_never_reach_upstream(
    connect: Connect, simulator: RunningSimulator
) -> None:
    relay, browser, _, _ = await connect()
    await browser.wait_type("session.created")
    call = _call(simulator)
    for raw in (
        # Duplicate "type": Python's json keeps the last one (an allowed type).
        '{"type":"session.update","session":{"instructions":"x"},"type":"response.cancel"}',
        # An allowed type carrying a session it has no business with.
        '{"type":"response.cancel","event_id":"e1","session":{"instructions":"x"}}',
        '{"type":"response.cancel","response_id":NaN}',
    ):
        browser.channel.send(raw)

    def errors() -> list[dict[str, Any]]:
        return [e for e in browser.events if e.get("type") == "error"]

    await wait_until(lambda: len(errors()) >= 3, 10, "three error events")
    codes = [e["error"]["code"] for e in errors()]
    assert codes == ["invalid_event", "unknown_parameter", "invalid_event"]
    # A checked event goes through, re-serialised; the refused ones never did.
    browser.channel.send('  {"event_id" : "e2", "type":"response.cancel"}\n')
    await simulator.state.wait_for(lambda: len(call.client_events) >= 1, 5)
    assert list(call.client_events) == [{"event_id": "e2", "type": "response.cancel"}]
    assert relay.counter("relay_media_events_refused_total") == 3


async def test_a_flood_of_refused_events_closes_the_channel_and_the_interview_goes_on(
    connect: Connect, simulator: RunningSimulator
) -> None:
    relay, browser, bridge, _ = await connect(events={"max_refused_events": 5})
    await browser.wait_type("session.created")
    for i in range(8):
        browser.send_event({"type": "conversation.item.delete", "event_id": f"f{i}"})
    flood = await browser.wait_event(
        lambda e: e.get("type") == "error" and e["error"]["code"] == "too_many_refused_events"
    )
    assert "the interview goes on" in flood["error"]["message"]
    await wait_until(lambda: browser.channel.readyState == "closed", 10, "channel closed")
    assert relay.counter("relay_media_event_floods_total", action="close_channel") == 1
    # Audio keeps flowing: the upstream keeps hearing the candidate, the bridge stays up.
    call = _call(simulator)

    def forwarded() -> int:
        return int(bridge.stats()["browser_to_upstream"]["forwarded"])

    before = forwarded()
    await wait_until(lambda: forwarded() > before + 25, 10, "audio still forwarded")
    assert bridge.state == "active" and not call.hung_up
    assert list(call.client_events) == []


async def test_a_flood_ends_the_interview_when_configured(connect: Connect) -> None:
    relay, browser, bridge, session_id = await connect(
        events={"max_refused_events": 3, "on_refused_flood": "end_interview"}
    )
    await browser.wait_type("session.created")
    for _ in range(5):
        browser.channel.send("not json")
    await bridge.wait_closed()
    assert bridge.end_reason == "event_flood"
    await wait_until(lambda: len(relay.services.registry) == 0, 10, "registry empty")
    rows = await relay.sql("SELECT end_reason FROM interview_sessions WHERE id = $1", session_id)
    assert rows[0]["end_reason"] == "event_flood"
    assert relay.counter("relay_media_event_floods_total", action="end_interview") == 1


async def test_an_unpaired_surrogate_from_the_browser_is_refused_and_both_legs_stay_up(
    connect: Connect, simulator: RunningSimulator
) -> None:
    relay, browser, bridge, _ = await connect()
    await browser.wait_type("session.created")
    call = _call(simulator)
    # Valid JSON whose string is not valid Unicode: UTF-8 cannot encode it.
    browser.channel.send('{"type":"response.cancel","event_id":"\\ud800"}')
    error = await browser.wait_event(lambda e: e.get("type") == "error")
    assert error["error"]["code"] == "invalid_event"
    assert error["error"]["event_id"] == "\ud800"
    # Both legs are still up: a checked event still reaches the upstream.
    browser.send_event({"type": "response.cancel", "event_id": "after"})
    await simulator.state.wait_for(lambda: len(call.client_events) >= 1, 5)
    assert list(call.client_events) == [{"type": "response.cancel", "event_id": "after"}]
    assert bridge.state == "active" and browser.channel.readyState == "open"
    assert relay.counter("relay_media_events_refused_total") == 1


async def test_an_unpaired_surrogate_from_upstream_reaches_the_browser_escaped(
    connect: Connect, simulator: RunningSimulator
) -> None:
    _, browser, bridge, _ = await connect()
    await browser.wait_type("session.created")
    live = simulator.app[SIMULATOR_KEY].calls.live[_call(simulator).call_id]
    # The simulator's json.dumps writes the lone surrogate as the escape "\ud800".
    live._send([{"type": "response.output_text.delta", "delta": "x\ud800", "event_id": "s1"}])
    live._send([{"type": "response.output_text.delta", "delta": "y", "event_id": "s2"}])
    second = await browser.wait_event(lambda e: e.get("event_id") == "s2")
    assert second["delta"] == "y"
    first = [e for e in browser.events if e.get("event_id") == "s1"]
    assert [e["delta"] for e in first] == ["x\ud800"]
    assert bridge.state == "active" and browser.channel.readyState == "open"


async def test_allowed_events_are_rate_limited_per_type(
    connect: Connect, simulator: RunningSimulator
) -> None:
    burst = 10
    relay, browser, bridge, _ = await connect(
        events={
            "browser_burst": burst,
            # No refill within the test: exactly the burst goes through.
            "browser_rate_per_s": 0.001,
            # Room for every refusal: rate limiting alone is under test here.
            "max_refused_events": 1000,
        }
    )
    await browser.wait_type("session.created")
    call = _call(simulator)
    for i in range(300):
        browser.send_event({"type": "response.cancel", "event_id": f"c{i}"})

    def rate_limited() -> list[dict[str, Any]]:
        return [
            e
            for e in browser.events
            if e.get("type") == "error" and e["error"]["code"] == "rate_limited"
        ]

    await wait_until(lambda: len(rate_limited()) == 300 - burst, 10, "the refusals")
    assert rate_limited()[0]["error"]["event_id"] == f"c{burst}"
    assert "'response.cancel'" in rate_limited()[0]["error"]["message"]
    # Another type has a bucket of its own.
    browser.send_event({"type": "output_audio_buffer.clear", "event_id": "other"})
    await simulator.state.wait_for(lambda: len(call.client_events) >= burst + 1, 5)
    assert [e["event_id"] for e in call.client_events] == [
        *(f"c{i}" for i in range(burst)),
        "other",
    ]
    assert relay.counter("relay_media_events_refused_total", reason="rate_limited") == 300 - burst
    assert bridge.events.counts["browser_to_upstream"] == burst + 1
