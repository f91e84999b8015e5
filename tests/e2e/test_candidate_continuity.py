"""The candidate page carries the candidate through failures that are not theirs, in
headless Chromium against the whole relay: an End pressed while the relay's database is
briefly down is still recorded as the candidate's hang-up; an end that is the interview's
starts nothing again; a duplicated tab (Chrome's "Duplicate tab" copies sessionStorage)
does not take the interview over from the original unless the candidate asks.
(The automatic rejoin after the interviewer's service failed: test_candidate_resume.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from playwright.async_api import Page, Response, Route, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import end_interview
from tests.e2e.test_candidate_resume import (
    CONNECT_S,
    NOTE_STATUS,
    TURN_S,
    start_interview,
    status_shown,
)
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import OPERATOR, call, create_interview, invite_of
from tests.integration.media_helpers import wait_until

# The relay's Retry-After while its database is down: short, so the test is too.
RETRY_AFTER_S = 2
# The page's hang-up: attempts in all, and the longest wait between two
# (static/page-interview.js HANGUP_ATTEMPTS, HANGUP_WAIT_MAX_S).
HANGUP_ATTEMPTS = 5
HANGUP_WAIT_MAX_S = 10
# How many of the waits between them have begun (window.statusTexts: NOTE_STATUS).
WAITS_BEGUN = "window.statusTexts.filter((t) => t.includes('Trying again in')).length"


async def test_an_end_pressed_while_the_database_is_down_is_recorded_as_the_candidates(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page, private_postgres: Any
) -> None:
    relay = await make_relay(
        dsn=private_postgres.dsn(), overrides={"database": {"retry_after_s": RETRY_AFTER_S}}
    )
    # An interview's link: its invite is read from PostgreSQL on every use (docs/api.md),
    # so the hang-up cannot be served from the credential cache while the database is down.
    interview = await create_interview(relay, max_duration_s=600, recording=False)
    await page.add_init_script(NOTE_STATUS)
    await page.goto(str(relay.client.make_url("/")) + f"#invite={invite_of(interview)}")
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    session_id: str = (await (await created.value).json())["session_id"]
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    answers: list[tuple[int, str | None]] = []
    restarted = asyncio.Event()

    async def on_response(response: Response) -> None:
        if response.request.method != "DELETE" or not response.url.endswith(session_id):
            return
        answers.append((response.status, response.headers.get("retry-after")))
        if response.status == 503 and not restarted.is_set():
            restarted.set()
            await private_postgres.astart()  # back after the first refusal

    page.on("response", on_response)
    await private_postgres.astop()  # a real fault: the relay answers 503 + Retry-After
    await end_interview(page)
    await expect(page.locator("#end-reason")).to_have_text(
        "You ended the interview. Thank you!", timeout=(4 * RETRY_AFTER_S + 20) * 1000
    )
    # Refused while the database was down, then sent again after Retry-After and taken.
    assert answers[0] == (503, str(RETRY_AFTER_S)), answers
    assert answers[-1][0] == 204, answers
    said = await page.evaluate("() => window.statusTexts")
    assert any(t.startswith("Ending the interview…") for t in said), said
    # The relay recorded the candidate's hang-up, not a lost browser.
    await relay.wait_session_closed(session_id, within=30)
    rows = await relay.sql("SELECT end_reason FROM interview_sessions WHERE id = $1", session_id)
    assert rows[0]["end_reason"] == "hangup"


async def test_an_end_that_is_the_interviews_starts_nothing_again(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay, max_duration_s=600, recording=False)
    await page.add_init_script(NOTE_STATUS)
    created: list[int] = []
    page.on(
        "response",
        lambda r: created.append(r.status) if r.url.endswith("/api/realtime-session") else None,
    )
    await page.goto(str(relay.client.make_url("/")) + f"#invite={invite_of(interview)}")
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    status, body, _ = await call(
        relay, "POST", f"/api/interviews/{interview['id']}/cancel", OPERATOR
    )
    assert status == 200, body
    await expect(page.locator("#end-reason")).to_have_text(
        "This interview was cancelled by the team running it.", timeout=CONNECT_S * 1000
    )
    # The decision is taken with the end: a rejoin would have kept the call screen.
    await expect(page.locator("#go-on")).to_be_hidden()
    said = await page.evaluate("() => window.statusTexts")
    assert not [t for t in said if "Reconnecting" in t], said
    assert created == [201]


def duplicate_of(storage: str) -> str:
    """An init script that gives a new tab a copy of another tab's sessionStorage, as
    Chrome's "Duplicate tab" does (on its first load only)."""
    return (
        "if (!sessionStorage.length) {"
        f" for (const [k, v] of Object.entries(JSON.parse({json.dumps(storage)})))"
        " sessionStorage.setItem(k, v); }"
    )


async def test_a_duplicated_tab_asks_before_taking_the_interview_over(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    upstream = simulator.state.last_call
    assert upstream is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    storage = await page.evaluate(
        "() => JSON.stringify(Object.fromEntries(Object.entries(sessionStorage)))"
    )
    copy = await page.context.new_page()
    await copy.add_init_script(duplicate_of(storage))
    await copy.add_init_script(NOTE_STATUS)
    resumes: list[str] = []
    copy.on("request", lambda r: resumes.append(r.url) if r.url.endswith("/resume") else None)
    await copy.goto(page.url)

    # The copy says where the interview is, and takes nothing by itself.
    await expect(copy.locator("#elsewhere-title")).to_have_text(
        "This interview is open in another tab"
    )
    await expect(copy.locator("#continue-here")).to_be_visible()
    await expect(copy.locator("#call")).to_be_hidden()
    assert resumes == []
    await expect(page.locator("#connection")).to_have_text("Live")
    assert bridge.state == "active"

    # Asked to, it takes the interview over: the same session and upstream call, resumed
    # with the original tab's current resume token; the original tab lets it go.
    async with copy.expect_response(f"**/api/sessions/{session_id}/resume") as resumed:
        await copy.click("#continue-here")
    assert (await resumed.value).status == 201
    await expect(copy.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await status_shown(copy, "Reconnected.")
    await expect(page.locator("#ended-title")).to_have_text("The interview moved to another tab")
    await expect(page.locator("#end-reason")).to_have_text(
        "This interview continued in another tab."
    )
    await expect(page.locator("#go-on")).to_be_hidden()
    assert simulator.state.last_call is upstream and not upstream.hung_up
    assert relay.services.registry.get(session_id) is not None
    segments = len(upstream.vad_segments)
    await simulator.state.wait_for(lambda: len(upstream.vad_segments) > segments, TURN_S)

    # A reload of the copy is a reload, not a copy: it rejoins without asking.
    copy.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await copy.reload()
    await expect(copy.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await expect(copy.locator("#elsewhere")).to_be_hidden()
    await end_interview(copy)
    await expect(copy.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")
    await relay.wait_session_closed(session_id)
    rows = await relay.sql("SELECT end_reason FROM interview_sessions WHERE id = $1", session_id)
    assert rows[0]["end_reason"] == "hangup"


async def test_a_reload_while_the_end_is_being_sent_again_starts_nothing(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    # The candidate presses End; the relay takes the hang-up but its answer is lost on the
    # way back, so the page sends it again a moment later ("Ending the interview…").
    # Reloading meanwhile must not bring the ended interview back: the relay's 410 for a
    # session the candidate hung up is not a lost connection to go on from by itself (a
    # user token has time left: a new session would start, the interviewer greeting again).
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    calls_before = len(simulator.state.calls)
    served: list[int] = []
    created: list[int] = []
    page.on(
        "response",
        lambda r: created.append(r.status) if r.url.endswith("/api/realtime-session") else None,
    )

    async def lose_the_answers(route: Route) -> None:
        served.append((await route.fetch()).status)
        await route.abort("connectionreset")

    await page.route(f"**/api/sessions/{session_id}", lose_the_answers)
    await end_interview(page)
    await wait_until(lambda: len(served) >= 1, CONNECT_S, "the hang-up served")
    await relay.wait_session_closed(session_id, within=30)
    rows = await relay.sql("SELECT end_reason FROM interview_sessions WHERE id = $1", session_id)
    assert rows[0]["end_reason"] == "hangup"
    await status_shown(page, "Ending the interview…")

    await page.reload()
    await expect(page.locator("#end-reason")).to_have_text(
        "You ended the interview. Thank you!", timeout=CONNECT_S * 1000
    )
    await expect(page.locator("#go-on")).to_be_hidden()
    assert created == []
    assert len(simulator.state.calls) == calls_before
    rows = await relay.sql("SELECT id FROM interview_sessions")
    assert [r["id"] for r in rows] == [session_id]


async def test_nothing_the_candidate_says_after_end_is_sent_while_it_is_sent_again(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    # The candidate presses End while the relay cannot be reached: the page keeps the call
    # up while it sends the hang-up again (so the relay records the candidate's end), for
    # up to a minute and more. What the candidate says meanwhile must not reach the
    # interviewer (who would answer it) nor the recording: they ended the interview.
    relay = await make_relay()
    # The page's clock is the test's, running as a real one until the checks are done: then
    # the waits between the hang-up's attempts are moved on rather than waited out.
    await page.clock.install()
    session_id = await start_interview(page, relay)
    upstream = simulator.state.last_call
    assert upstream is not None
    # The fake microphone loops 2 s of speech and 2 s of silence: any 5 s of it holds speech.
    window = 250  # 20 ms frames: 5 s

    async def mean_level() -> float:
        frames, total = upstream.frames_received, upstream.rms_sum
        await simulator.state.wait_for(
            lambda: upstream.frames_received >= frames + window, CONNECT_S
        )
        return (upstream.rms_sum - total) / (upstream.frames_received - frames)

    speaking = await mean_level()
    assert speaking > 0.01, speaking

    async def unreachable(route: Route) -> None:
        await route.abort("connectionrefused")

    await page.route(f"**/api/sessions/{session_id}", unreachable)
    await end_interview(page)
    await status_shown(page, "Ending the interview…")  # the second attempt is under way
    # Mute would unmute the microphone End muted, End would ask again: neither is offered.
    await expect(page.locator("#mute")).to_be_disabled()
    await expect(page.locator("#stop")).to_be_disabled()
    after_end = await mean_level()
    assert after_end < speaking / 20, (speaking, after_end)
    # The page gives up after its last attempt (the waits between them: 1, 2, 4, 8 s). Each
    # wait once begun (its "Trying again in N s") is moved on past; the next attempt's
    # refusal begins the next wait, or the end is shown.
    end_reason = page.locator("#end-reason")
    for _ in range(2 * HANGUP_ATTEMPTS):  # a wait at each turn, or an attempt under way
        if await end_reason.text_content():
            break
        begun = await page.evaluate(WAITS_BEGUN)
        await page.clock.fast_forward(HANGUP_WAIT_MAX_S * 1000)
        await page.wait_for_function(
            f"(n) => {WAITS_BEGUN} > n || document.getElementById('end-reason').textContent",
            arg=begun,
            timeout=CONNECT_S * 1000,
        )
    await expect(end_reason).to_have_text("You ended the interview. Thank you!", timeout=30_000)
