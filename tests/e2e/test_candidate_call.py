"""The candidate page during and after an interview, in headless Chromium with a fake
microphone against the whole relay and the simulator: the connection state and time left,
mute (checked by what the simulator hears), the "leave this page?" prompt, and the end
screen when the candidate or the relay ends the interview."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

from playwright.async_api import Dialog, Page, expect

from relay.upstream.simulator.server import RunningSimulator
from relay.upstream.simulator.state import CallRecord
from tests.e2e.conftest import collect_page_errors, end_interview
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

CONNECT_S = 10
TURN_S = 15
# One loop of the fake microphone (2 s of speech, 2 s of silence).
LOOP_MS = 4000
# Mean frame RMS (full scale 1.0) over a loop: the voice is far above the first, and the
# silence a muted track sends far below the second.
VOICE_MEAN_RMS = 0.01
MUTED_MEAN_RMS = 0.001
# Audio that may have left the page before a click on Mute took effect, with room to spare
# (the relay forwards each packet within milliseconds).
IN_FLIGHT_MS = 500
OPERATOR_ENDED = "The interview was ended by the team running it."
CONNECTION_LOST = "The connection was lost, so the interview ended."


async def start_interview(page: Page, relay: RelayHarness, *, seconds: int = 600) -> str:
    token = await relay.add_user(seconds=seconds)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    session_id: str = (await (await created.value).json())["session_id"]
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    return session_id


async def mean_rms_over(simulator: RunningSimulator, call: CallRecord, audio_ms: int) -> float:
    """The mean RMS of the next ``audio_ms`` of audio the simulator receives."""
    start_ms, start_sum, start_frames = call.audio_ms_received, call.rms_sum, call.frames_received
    await simulator.state.wait_for(
        lambda: call.audio_ms_received >= start_ms + audio_ms, audio_ms / 1000 + TURN_S
    )
    return (call.rms_sum - start_sum) / (call.frames_received - start_frames)


async def test_live_state_time_left_and_mute(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
) -> None:
    relay = await make_relay()
    errors = collect_page_errors(page)
    # Two minutes of credit: the interview may last two minutes at most.
    await start_interview(page, relay, seconds=120)
    time_left = page.locator("#time-left")
    await expect(time_left).to_have_text(re.compile(r"^(2:00|1:5\d)$"))
    first = await time_left.inner_text()
    await expect(time_left).not_to_have_text(first, timeout=3000)  # it counts down
    await expect(page.locator("#preflight")).to_be_hidden()
    await expect(page.locator("#start")).to_be_hidden()

    call = simulator.state.last_call
    assert call is not None
    # The fake microphone's voice reaches the interviewer.
    await simulator.state.wait_for(
        lambda: any(end is not None for _, end in call.vad_segments), TURN_S
    )
    voice = await mean_rms_over(simulator, call, LOOP_MS)
    assert voice > VOICE_MEAN_RMS, voice
    await page.screenshot(path=str(artifact_path("page-live.png")), full_page=True)

    mute = page.locator("#mute")
    await mute.click()
    await expect(mute).to_have_text("Unmute microphone")
    await expect(page.locator("#muted-note")).to_be_visible()
    await expect(page.locator("#heard")).to_have_text("Muted: nothing you say is sent.")
    await page.screenshot(path=str(artifact_path("page-muted.png")), full_page=True)
    # Whatever was said before the click is over once the VAD closes its segment.
    await simulator.state.wait_for(lambda: call.vad_segments[-1][1] is not None, TURN_S)
    # Voice sent just before the click (too little for the VAD to open a segment) may still
    # be on its way: the audio the call hears in the next half second is not counted.
    await mean_rms_over(simulator, call, IN_FLIGHT_MS)
    segments = len(call.vad_segments)
    muted = await mean_rms_over(simulator, call, LOOP_MS)
    assert muted < MUTED_MEAN_RMS, muted
    assert len(call.vad_segments) == segments, call.vad_segments
    print(f"mean frame RMS over {LOOP_MS} ms: voice {voice:.4f}, muted {muted:.6f}")
    assert call.state == "connected" and not call.hung_up  # muted, not disconnected

    await mute.click()
    await expect(mute).to_have_text("Mute microphone")
    await expect(page.locator("#muted-note")).to_be_hidden()
    await simulator.state.wait_for(lambda: len(call.vad_segments) > segments, TURN_S)
    await expect(page.locator("#heard")).to_have_text("We can hear you.")

    # Another microphone, chosen during the interview: the call sends it instead.
    mic = page.locator("#mic")
    other = await mic.locator("option", has_text="Fake Audio Input 1").get_attribute("value")
    assert other
    # "We can hear you." is on screen before the switch too. The page starts its check
    # again once the new device is open (the old one stopped): wait for that, then for
    # the new device to be heard, so the segment awaited below is the new device's.
    await page.evaluate(
        """() => {
            const heard = document.getElementById("heard");
            window.heardTexts = [];
            new MutationObserver(() => window.heardTexts.push(heard.textContent))
                .observe(heard, { childList: true, characterData: true, subtree: true });
        }"""
    )
    await mic.select_option(other)
    await page.wait_for_function(
        "() => window.heardTexts.some((t) => t.startsWith('Say a few words'))",
        timeout=CONNECT_S * 1000,
    )
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    switched = len(call.vad_segments)
    await simulator.state.wait_for(lambda: len(call.vad_segments) > switched, TURN_S)
    assert await page.evaluate("sessionStorage.getItem('interviewMicrophone')") == other

    await end_interview(page)
    await expect(page.locator("#ended")).to_be_visible()
    await page.screenshot(path=str(artifact_path("page-ended.png")), full_page=True)
    assert errors == []


async def test_leaving_a_live_interview_asks_first_and_an_ended_one_does_not(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    asked: list[str] = []
    answered = asyncio.Event()

    async def stay(dialog: Dialog) -> None:
        asked.append(dialog.type)
        await dialog.dismiss()
        answered.set()

    page.on("dialog", stay)
    await page.close(run_before_unload=True)
    # close() returns without waiting for the prompt, and the page read "Live" before it:
    # wait for the prompt to be answered, then check that the page stayed.
    await asyncio.wait_for(answered.wait(), CONNECT_S)
    await expect(page.locator("#connection")).to_have_text("Live")
    assert asked == ["beforeunload"]
    assert not page.is_closed()
    assert relay.services.registry.get(session_id) is not None

    await end_interview(page)
    await expect(page.locator("#ended")).to_be_visible()
    closed = asyncio.Event()
    page.on("close", lambda _: closed.set())
    await page.close(run_before_unload=True)
    await asyncio.wait_for(closed.wait(), CONNECT_S)
    assert asked == ["beforeunload"]


async def test_an_interview_ended_by_the_relay_shows_the_end_screen_at_once(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    ended = page.locator("#ended")
    async with relay.client.delete(
        f"/api/sessions/{session_id}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        assert resp.status == 204
        hung_up = time.monotonic()
    await expect(ended).to_be_visible(timeout=1000)
    shown_after = time.monotonic() - hung_up
    assert shown_after < 1.0, shown_after
    # With relay.session.ending {reason: "operator"} the page names the operator; a relay
    # that only closes the connection leaves it to say the connection was lost.
    await expect(page.locator("#end-reason")).to_have_text(
        re.compile(f"^({re.escape(OPERATOR_ENDED)}|{re.escape(CONNECTION_LOST)})$")
    )
    print(f"end screen {shown_after * 1000:.0f} ms after the operator's DELETE")
    await expect(page.get_by_role("button", name="Start interview")).to_have_count(0)

    # A reload shows the same end, not a new Start, and no empty "Transcript" (the
    # transcript is not kept across a reload).
    await page.reload()
    await expect(ended).to_be_visible()
    await expect(page.locator("#start")).to_be_hidden()
    await expect(page.locator("#transcript-section")).to_be_hidden()
    assert await page.locator("#transcript li").count() == 0
    assert await page.evaluate("sessionStorage.getItem('interviewSession')") is None


# The page's events channel, kept where a test can send on it (what a page of another
# version, or a race, might send).
KEEP_CHANNEL = """
const create = RTCPeerConnection.prototype.createDataChannel;
RTCPeerConnection.prototype.createDataChannel = function (...args) {
    window.eventsChannel = create.apply(this, args);
    return window.eventsChannel;
};
"""
SERVICE_HICCUP = "The interviewer had a brief problem. If you get no answer, say it again."


async def test_a_service_error_is_a_calm_status_not_an_alert_left_on_screen(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    errors = collect_page_errors(page)
    await page.add_init_script(KEEP_CHANNEL)
    await page.add_init_script(
        """window.statusTexts = [];
        document.addEventListener("DOMContentLoaded", () => {
            const status = document.getElementById("status");
            new MutationObserver(() => window.statusTexts.push(status.textContent.trim()))
                .observe(status, { childList: true, characterData: true, subtree: true });
        });"""
    )
    await start_interview(page, relay)
    call = simulator.state.last_call
    assert call is not None
    # An item the service does not know: it answers with an error event
    # ("Item with item_id not found: item_gone").
    await page.evaluate(
        """() => window.eventsChannel.send(JSON.stringify(
            { type: "conversation.item.retrieve", item_id: "item_gone" }))"""
    )
    await page.wait_for_function(
        "(text) => window.statusTexts.includes(text)", arg=SERVICE_HICCUP, timeout=CONNECT_S * 1000
    )
    await expect(page.locator("#error")).to_be_hidden()
    # The interview goes on, and the next turn's status replaces the word.
    segments = len(call.vad_segments)
    await simulator.state.wait_for(lambda: len(call.vad_segments) > segments, TURN_S)
    await expect(page.locator("#status")).not_to_have_text(SERVICE_HICCUP, timeout=TURN_S * 1000)
    await expect(page.locator("#connection")).to_have_text("Live")
    await expect(page.locator("#error")).to_be_hidden()
    await end_interview(page)
    await expect(page.locator("#ended")).to_be_visible()
    assert errors == []
