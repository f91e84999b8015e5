"""One bridge healing its lost upstream leg in place (real aiortc peers on loopback): the
browser's leg stays, a new upstream session is minted and its leg swapped in, seeded with
the conversation so far; audio flows both ways again; the page is told; attempts are
bounded; a page lost meanwhile fails the session like the upstream's loss."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from relay.config import SessionConfig
from relay.media.bridge import Bridge
from relay.media.bridge.core import MAX_HEALS
from relay.media.bridge.talk import CONTINUE_NOTE
from relay.upstream.base import MintedSession, UpstreamError
from tests.integration.media_helpers import encode_opus, speech_like, wait_until
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)

SPEECH = encode_opus(speech_like(1.0))


def state_of(bridge: Bridge) -> str:
    return bridge.state


def healing(attempts: int = 3, backoff_s: float = 0.05) -> SessionConfig:
    return SessionConfig(
        connect_timeout_s=5.0,
        idle_media_timeout_s=10.0,
        upstream_reconnect_attempts=attempts,
        upstream_reconnect_backoff_s=backoff_s,
    )


@pytest.mark.usefixtures("media_path")  # the compiled loop and the Python fast path
async def test_a_lost_upstream_leg_is_replaced_and_seeded(rig: Rig) -> None:  # noqa: F811
    mints: list[str] = []

    async def mint(request_id: str) -> MintedSession:
        mints.append(request_id)
        return await rig.upstream.mint(request_id=request_id)

    bridge = rig.bridge(session=healing(), mint_upstream=mint)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    # Something was said: the conversation log has an item to seed.
    first = rig.upstream.calls[0]
    first.channel.send(
        json.dumps(
            {
                "type": "response.output_audio_transcript.done",
                "item_id": "item_1",
                "transcript": "Tell me about yourself.",
            }
        )
    )
    await wait_until(lambda: len(bridge.conversation.items) == 1, 5, "the item logged")
    browser_pc = bridge.browser_pc

    await first.pc.close()
    await browser.wait_type("relay.upstream.reconnecting")
    reconnected = await browser.wait_type("relay.upstream.reconnected", 15)
    assert reconnected["gap_ms"] >= 0
    assert state_of(bridge) == "active"
    assert mints == ["req_test"]
    assert bridge.browser_pc is browser_pc and browser.pc.connectionState == "connected"
    second = rig.upstream.calls[1]
    assert bridge.upstream_call_id == second.call_id
    assert rig.upstream.hangups == [first.call_id]  # the lost call, hung up once

    # Seeded: the conversation so far, then the note to continue.
    await wait_until(lambda: len(second.events) >= 2, 10, "the seed")
    assert [e["item"]["role"] for e in second.events[:2]] == ["assistant", "system"]
    assert second.events[0]["item"]["content"][0]["text"] == "Tell me about yourself."
    assert second.events[1]["item"]["content"][0]["text"] == CONTINUE_NOTE
    # The new upstream's events reach the page; both directions' audio flows again.
    await wait_until(
        lambda: browser.event_types().count("session.created") == 2, 5, "new session.created"
    )
    assert browser.mic is not None
    browser.mic.play(SPEECH)
    await wait_until(lambda: len(second.payloads) > 20, 10, "the candidate's audio upstream")
    heard = browser.speaker.loud_frames()
    await wait_until(lambda: browser.speaker.loud_frames() > heard + 5, 10, "the new reply")
    assert rig.counter("relay_media_upstream_reconnects_total", outcome="healed") == 1

    await bridge.close("hangup")
    assert rig.hooks.finished[0][:2] == ("ended", "hangup")
    assert rig.upstream.hangups == [first.call_id, second.call_id]


async def test_attempts_are_bounded_then_the_session_fails_as_before(rig: Rig) -> None:  # noqa: F811
    tried: list[str] = []

    async def refused(request_id: str) -> MintedSession:
        tried.append(request_id)
        raise UpstreamError("mint", "no", status=500, code="server_error")

    bridge = rig.bridge(session=healing(attempts=2), mint_upstream=refused)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    await rig.upstream.calls[0].pc.close()
    ending = await browser.wait_type("relay.session.ending", 10)
    assert ending["reason"] == "upstream_error"
    await asyncio.wait_for(rig.hooks.done.wait(), 10)
    state, reason, _ = rig.hooks.finished[0]
    assert state == "failed" and reason.startswith("upstream_")
    assert len(tried) == 2
    attempts = [e["attempt"] for e in browser.events if e["type"] == "relay.upstream.reconnecting"]
    assert attempts == [1, 2]
    assert rig.counter("relay_media_upstream_reconnects_total", outcome="gave_up") == 1
    assert rig.counter("relay_media_upstream_reconnects_total", outcome="attempt_failed") == 2


async def test_a_page_lost_while_the_upstream_is_replaced_fails_the_session(
    rig: Rig,  # noqa: F811
) -> None:
    held = asyncio.Event()

    async def slow(request_id: str) -> MintedSession:
        await held.wait()
        raise AssertionError("never released")

    bridge = rig.bridge(session=healing(), mint_upstream=slow)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await rig.upstream.calls[0].pc.close()
    await wait_until(lambda: bridge.state == "upstream_lost", 10, "upstream lost")
    await browser.pc.close()
    await asyncio.wait_for(rig.hooks.done.wait(), 10)
    state, reason, _ = rig.hooks.finished[0]
    assert state == "failed" and reason.startswith("upstream_")


def test_a_silence_watch_shorter_than_the_counters_refresh_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 5 seconds"):
        SessionConfig(upstream_silence_timeout_s=2)
    assert SessionConfig(upstream_silence_timeout_s=0).upstream_silence_timeout_s == 0
    assert SessionConfig(upstream_silence_timeout_s=5).upstream_silence_timeout_s == 5


async def test_a_wrapping_up_interview_is_asked_again_to_close_by_the_new_session(
    rig: Rig,  # noqa: F811
) -> None:
    async def mint(request_id: str) -> MintedSession:
        return await rig.upstream.mint(request_id=request_id)

    session = healing().model_copy(update={"wrap_up_s": 58.5})
    bridge = rig.bridge(session=session, max_duration_s=60, mint_upstream=mint)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("relay.session.wrap_up", 5)
    first = rig.upstream.calls[0]
    await wait_until(lambda: len(first.events) >= 2, 5, "the wrap-up upstream")
    note = first.events[0]["item"]["content"][0]["text"]
    assert note.startswith("About ")
    await first.pc.close()
    await browser.wait_type("relay.upstream.reconnected", 15)
    second = rig.upstream.calls[1]
    # Nothing was said yet: the note to continue, then the wrap-up's note again.
    await wait_until(lambda: len(second.events) >= 2, 10, "the seed")
    texts = [e["item"]["content"][0]["text"] for e in second.events]
    assert texts == [CONTINUE_NOTE, note]


async def test_an_upstream_that_keeps_dropping_is_healed_a_bounded_number_of_times(
    rig: Rig,  # noqa: F811
) -> None:
    async def mint(request_id: str) -> MintedSession:
        return await rig.upstream.mint(request_id=request_id)

    bridge = rig.bridge(session=healing(), mint_upstream=mint)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")

    def heals() -> int:
        return browser.event_types().count("relay.upstream.reconnected")

    for healed in range(1, MAX_HEALS + 1):
        await rig.upstream.calls[-1].pc.close()
        await wait_until(lambda: heals() == healed, 15, f"heal {healed}")  # noqa: B023
    # One loss more than a session heals: it ends as without healing.
    await rig.upstream.calls[-1].pc.close()
    ending = await browser.wait_type("relay.session.ending", 10)
    assert ending["reason"] == "upstream_error"
    await asyncio.wait_for(rig.hooks.done.wait(), 10)
    state, reason, _ = rig.hooks.finished[0]
    assert state == "failed" and reason.startswith("upstream_")
    assert len(rig.upstream.calls) == MAX_HEALS + 1
    assert rig.counter("relay_media_upstream_reconnects_total", outcome="healed") == MAX_HEALS
