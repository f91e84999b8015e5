"""The candidate page while the relay heals the interviewer's side in place (headless
Chromium with a fake microphone, the whole relay, the simulator): the service drops the
call mid-interview; the page says "Reconnecting the interviewer…" and then that the
interviewer is back, over the same connection and session (no new session, no resume, no
end screen), and the interviewer goes on with its next line."""

from __future__ import annotations

from playwright.async_api import Page, Request, expect

from relay.upstream.simulator.app import SIMULATOR_KEY
from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.test_candidate_resume import TURN_S, start_interview, status_shown
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until


async def test_the_interviewers_side_dropping_is_healed_under_the_same_connection(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay(
        overrides={"session": {"upstream_reconnect_attempts": 3, "upstream_reconnect_backoff_s": 1}}
    )
    asked: list[str] = []  # every session, exchange and resume the page asks for

    def on_request(request: Request) -> None:
        if request.url.endswith(("/api/realtime-session", "/api/webrtc-exchange", "/resume")):
            asked.append(request.url)

    page.on("request", on_request)
    session_id = await start_interview(page, relay)
    interviewer = page.locator("#transcript li.interviewer:not([hidden])")
    await expect(interviewer.first).to_have_text(
        f"Interviewer: {DEFAULT_REPLY_LINES[0]}", timeout=TURN_S * 1000
    )
    assert len(asked) == 2  # the session and its exchange
    # The first attempt's call is refused, so the notice stays up a moment.
    await simulator.state.update_faults({"calls": {"status": 500, "times": 1}})
    [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
    await upstream.close("dropped")

    await status_shown(page, "Reconnecting the interviewer…")
    await status_shown(page, "The interviewer is back.")
    await expect(page.locator("#connection")).to_have_text("Live")
    ended_shown = await page.evaluate(
        "() => window.statusTexts.some((t) => t.includes('Reconnecting…'))"
    )
    assert not ended_shown  # never the page's own reconnect
    await expect(page.locator("#ended")).to_be_hidden()
    assert len(asked) == 2
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None and bridge.state == "active"
    await wait_until(lambda: len(simulator.state.calls) == 2, 5, "the second call")
    # The interviewer goes on over the new call (the fake microphone keeps speaking): its
    # next line, not its greeting again; the first line is still on screen.
    await expect(interviewer.nth(1)).to_have_text(
        f"Interviewer: {DEFAULT_REPLY_LINES[1]}", timeout=TURN_S * 2 * 1000
    )
    await expect(interviewer.first).to_have_text(f"Interviewer: {DEFAULT_REPLY_LINES[0]}")
