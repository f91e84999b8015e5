"""The candidate page in a real browser: headless Chromium with a fake microphone, the
whole relay on loopback (real PostgreSQL), and the simulator as the upstream over real
HTTP and WebRTC."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from typing import Any

import asyncpg
from playwright.async_api import Browser, Page, Response, Route, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import end_interview
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import RelayHarness

INVALID_TOKEN_MESSAGE = "This token is not valid. Check the link or token you were given."
LINK_REFUSED_MESSAGE = "This interview link is not valid (or no longer valid)."
CREDIT_IN_USE_MESSAGE = (
    "This interview is already open in another tab or window. Close it there, or wait: it "
    "starts here once that one has ended."
)
# Bounds for a loaded machine; a healthy run needs a fraction of each.
CONNECT_S = 10
TURN_S = 15


async def interview_row(relay: RelayHarness, session_id: str) -> dict[str, Any]:
    rows = await relay.sql(
        "SELECT state, end_reason, recording_notice_shown FROM interview_sessions WHERE id = $1",
        session_id,
    )
    assert len(rows) == 1
    return dict(rows[0])


async def test_candidate_talks_with_the_interviewer_and_hangs_up(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    # The link carries the token in its fragment, which the browser never sends to a server.
    async with page.expect_response("**/") as loaded:
        await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    csp = (await loaded.value).headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    # The link carried the credential: no field to type one into.
    await expect(page.locator("#token")).to_be_hidden()
    # Read once, then gone from the address bar (replaced in place, not a new history entry).
    assert token not in page.url and "token" not in page.url, page.url
    notice = relay.services.settings.recording.notice_text
    await expect(page.locator("#recording-notice")).to_have_text(notice)

    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    session = await (await created.value).json()
    session_id = session["session_id"]

    # Connected: the page enabled #stop after the answer, both legs are up.
    await expect(page.locator("#stop")).to_be_enabled(timeout=CONNECT_S * 1000)
    # A real upstream (as far as the relay knows): no practice-mode banner.
    assert session["simulated"] is False
    await expect(page.locator("#simulated")).to_be_hidden()
    # The token is in no persistent storage; this tab's sessionStorage at most.
    assert await page.evaluate("localStorage.length") == 0
    stored = await page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert token not in stored
    kept = set(await page.evaluate("Object.keys(sessionStorage)"))
    # (interviewTab: a random id that tells a duplicated tab from a reload, page-tab.js)
    assert kept <= {"interviewToken", "interviewSession", "interviewMicrophone", "interviewTab"}, (
        kept
    )
    assert token not in page.url
    assert relay.services.bridges is not None
    bridges = relay.services.bridges
    await wait_until(
        lambda: (b := bridges.get(session_id)) is not None and b.state == "active",
        CONNECT_S,
        "bridge active",
    )
    await expect(page.locator("#error")).to_be_hidden()

    # The simulator heard the fake microphone: one closed speech segment, at speech level.
    call = simulator.state.last_call
    assert call is not None
    await simulator.state.wait_for(
        lambda: any(end is not None for _, end in call.vad_segments), TURN_S
    )
    assert call.rms_max_dbfs > -30
    assert call.data_channel_label == "oai-events"

    # The page's transcript shows the candidate's turn and the interviewer's reply.
    you = page.locator("#transcript li.you").first
    interviewer = page.locator("#transcript li.interviewer").first
    await expect(you).to_have_text(re.compile(r"^You: \S"), timeout=TURN_S * 1000)
    await expect(interviewer).to_have_text(re.compile(r"^Interviewer: \S"), timeout=TURN_S * 1000)

    # End the interview: the page DELETEs the session, the relay forgets it, the row ends.
    async with page.expect_response(
        lambda r: r.request.method == "DELETE" and r.url.endswith(f"/api/sessions/{session_id}")
    ) as deleted:
        await end_interview(page)
    assert (await deleted.value).status == 204
    await expect(page.locator("#status")).to_have_text("Interview ended.")
    await expect(page.locator("#error")).to_be_hidden()
    # The end screen: why, what next, and no way to start another interview by mistake.
    await expect(page.locator("#ended")).to_be_visible()
    await expect(page.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")
    await expect(page.locator("#end-next")).to_have_text("You can close this tab.")
    await expect(page.get_by_role("button", name="Start interview")).to_have_count(0)
    await expect(page.locator("#connection")).to_have_text("Ended")
    await wait_until(lambda: len(relay.services.registry) == 0, CONNECT_S, "registry empty")
    await simulator.state.wait_for(lambda: call.hung_up, CONNECT_S)
    row = await interview_row(relay, session_id)
    assert row["state"] == "ended", row
    assert row["end_reason"] == "hangup", row
    # The page ran under its Content-Security-Policy without a single violation.
    assert not [m for m in console if "Content Security Policy" in m], console
    assert row["recording_notice_shown"] is True, row


async def test_a_wrong_token_shows_the_invalid_token_message(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    await page.goto(str(relay.client.make_url("/")))
    await page.fill("#token", "rt_not-a-real-token")
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    assert (await created.value).status == 401
    error = page.locator("#error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(INVALID_TOKEN_MESSAGE)
    await expect(page.locator("#start")).to_be_enabled()
    assert len(relay.services.registry) == 0
    assert simulator.state.last_call is None


async def test_a_simulated_interview_says_so_to_the_candidate(
    make_relay: MakeRelay, page: Page
) -> None:
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    assert relay.services.simulator is not None
    token = await relay.add_user(seconds=600)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    # Before Start (tests/e2e/test_preflight.py), and still once it runs.
    await expect(page.locator("#simulated")).to_be_visible()
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    assert (await (await created.value).json())["simulated"] is True
    banner = page.locator("#simulated")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("simulated interviewer")
    await expect(page.locator("#stop")).to_be_enabled(timeout=CONNECT_S * 1000)
    await end_interview(page)
    await expect(page.locator("#status")).to_have_text("Interview ended.")


async def test_the_page_starts_a_recorded_interview_only_after_showing_its_notice(
    make_relay: MakeRelay, page: Page
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    notice_requests: list[str] = []

    async def first_notice_fails(route: Route) -> None:
        notice_requests.append(route.request.url)
        if len(notice_requests) == 1:
            await route.fulfill(status=503, content_type="application/json", body="{}")
        else:
            await route.continue_()

    await page.route("**/api/recording-notice", first_notice_fails)
    created: list[str] = []
    page.on(
        "request",
        lambda r: created.append(r.url) if r.url.endswith("/api/realtime-session") else None,
    )
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    # The notice could not be loaded: Start is usable, but shows the notice first.
    await expect(page.locator("#start")).to_be_enabled()
    await expect(page.locator("#recording-notice")).to_be_hidden()
    await page.click("#start")
    notice = relay.services.settings.recording.notice_text
    await expect(page.locator("#recording-notice")).to_have_text(notice)
    await expect(page.locator("#error")).to_contain_text("read the recording notice")
    assert created == [] and len(notice_requests) == 2
    # Read, then Start again: the page confirms it, the relay records that.
    async with page.expect_response("**/api/realtime-session") as response:
        await page.click("#start")
    assert (await response.value).status == 201
    session_id = (await (await response.value).json())["session_id"]
    await expect(page.locator("#stop")).to_be_enabled(timeout=CONNECT_S * 1000)
    assert (await interview_row(relay, session_id))["recording_notice_shown"] is True
    await end_interview(page)
    await expect(page.locator("#status")).to_have_text("Interview ended.")


# Long enough that the page's own fallback (2 s, then 4 s) cannot pass for honouring it.
RETRY_AFTER_S = 3


async def test_the_page_waits_out_a_stopped_database_then_connects(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page, private_postgres: Any
) -> None:
    relay = await make_relay(
        dsn=private_postgres.dsn(), overrides={"database": {"retry_after_s": RETRY_AFTER_S}}
    )
    token = await relay.add_user(seconds=600)
    await private_postgres.astop()  # a real fault: the relay answers 503 + Retry-After

    answers: list[tuple[float, int, str | None]] = []
    restarted = asyncio.Event()

    async def on_response(response: Response) -> None:
        if not response.url.endswith("/api/realtime-session"):
            return
        answers.append((time.monotonic(), response.status, response.headers.get("retry-after")))
        if len([a for a in answers if a[1] == 503]) == 2 and not restarted.is_set():
            restarted.set()
            await private_postgres.astart()

    page.on("response", on_response)
    await page.goto(str(relay.client.make_url(f"/?token={token}")))
    await page.click("#start")

    # The waiting message, with the countdown taken from Retry-After.
    status = page.locator("#status")
    await expect(status).to_contain_text("Our service is briefly unavailable.", timeout=10_000)
    await expect(status).to_contain_text(re.compile(r"Retrying the session \(attempt \d of 4\)"))
    # The seconds count down beside it, outside the live region (test_page_accessibility.py).
    await expect(page.locator("#activity")).to_have_text(
        re.compile(r"Next attempt in \d s\.|Trying again now")
    )
    await expect(page.locator("#error")).to_be_hidden()

    # Then it connects once the database is back.
    await expect(page.locator("#stop")).to_be_enabled(timeout=(4 * RETRY_AFTER_S + 20) * 1000)
    statuses = [s for _, s, _ in answers]
    assert statuses[:2] == [503, 503] and statuses[-1] == 201, statuses
    assert len(statuses) <= 4, statuses
    assert answers[0][2] == str(RETRY_AFTER_S)
    # Retry-After honoured: each retry came no sooner than the relay asked.
    for (t_prev, _, after), (t_next, _, _) in itertools.pairwise(answers):
        assert after is not None
        assert t_next - t_prev >= int(after) - 0.25, (t_next - t_prev, after)
    await expect(page.locator("#error")).to_be_hidden()

    await end_interview(page)
    await expect(page.locator("#status")).to_have_text("Interview ended.")
    await wait_until(lambda: len(relay.services.registry) == 0, CONNECT_S, "registry empty")


async def test_the_page_waits_out_an_overloaded_relay_then_connects(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    # One admission at a time and no wait for a slot: while another candidate's request
    # holds the slot, this page's request is shed with 503 overloaded + Retry-After.
    relay = await make_relay(
        overrides={
            "limits": {
                "max_inflight_admissions": 1,
                "admission_queue_timeout_s": 0.0,
                "retry_after_s": RETRY_AFTER_S,
            },
            "database": {"query_timeout_s": 30.0, "retries": 0},
        }
    )
    other, token = await relay.add_user(), await relay.add_user(seconds=600)
    answers: list[tuple[int, str | None, str | None]] = []

    async def on_response(response: Response) -> None:
        if response.url.endswith("/api/realtime-session"):
            code = (await response.json()).get("error", {}).get("code")
            answers.append((response.status, code, response.headers.get("retry-after")))

    page.on("response", on_response)
    await page.goto(str(relay.client.make_url(f"/?token={token}")))
    await expect(page.locator("#start")).to_be_enabled()

    # The other candidate's credential read waits on a locked users table, holding the slot
    # until the lock goes.
    locker = await asyncpg.connect(relay.database_url)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        holder = asyncio.create_task(relay.create_session(other))
        await wait_until(
            lambda: relay.services.metrics.snapshot()["relay_admission_inflight"] == 1,
            CONNECT_S,
            "the other candidate's admission in flight",
        )
        await page.click("#start")
        status = page.locator("#status")
        await expect(status).to_contain_text("The service is very busy right now.")
        retrying = re.compile(r"Retrying the session \(attempt \d of 4\)")
        await expect(status).to_contain_text(retrying)
        await expect(page.locator("#activity")).to_have_text(
            re.compile(r"Next attempt in \d s\.|Trying again now")
        )
        await expect(page.locator("#error")).to_be_hidden()
        await lock.rollback()
    finally:
        await locker.close()

    # The slot frees when the other candidate's session is made; the page's retry gets it.
    assert (await holder)[0] == 201
    await expect(page.locator("#stop")).to_be_enabled(timeout=(4 * RETRY_AFTER_S + 20) * 1000)
    # on_response reads each body before noting its answer: the page may show the session
    # before the 201 is noted, so wait for it before reading the list.
    await wait_until(
        lambda: any(status == 201 for status, _, _ in answers), CONNECT_S, "the 201 noted"
    )
    assert answers[0] == (503, "overloaded", str(RETRY_AFTER_S)), answers
    assert answers[-1][0] == 201 and len(answers) <= 4, answers
    shed = sum(1 for answer in answers if answer[0] == 503)
    assert relay.counter("relay_admission_shed_total", reason="overloaded") == shed

    await end_interview(page)
    await expect(page.locator("#status")).to_have_text("Interview ended.")
    await wait_until(lambda: len(relay.services.registry) == 1, CONNECT_S, "only the other left")


async def test_a_401_is_not_retried(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    requests: list[str] = []
    page.on(
        "request",
        lambda r: requests.append(r.url) if r.url.endswith("/api/realtime-session") else None,
    )
    await page.goto(str(relay.client.make_url("/?token=rt_revoked-or-mistyped-token-000")))
    await page.click("#start")
    # The token came with the link: the page says where a good one comes from.
    await expect(page.locator("#error")).to_contain_text(LINK_REFUSED_MESSAGE)
    await expect(page.locator("#token")).to_be_hidden()
    # The start button comes back only when the page has given up: one request, no retry.
    await expect(page.locator("#start")).to_be_enabled()
    await expect(page.locator("#status")).to_have_text("Not connected.")
    assert len(requests) == 1
    assert "Retrying" not in await page.locator("#status").inner_text()


async def test_a_retry_under_way_says_so(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    release = asyncio.Event()
    requests: list[str] = []

    async def busy_then_slow(route: Route) -> None:
        # The first start is shed (as by an overloaded relay); the retry is held, as a slow
        # answer would be, until the page's status has been read.
        requests.append(route.request.url)
        if len(requests) == 1:
            await route.fulfill(
                status=503,
                headers={"Retry-After": "1"},
                json={"error": {"code": "overloaded", "message": "busy", "retryable": True}},
            )
            return
        await release.wait()
        await route.continue_()

    await page.route("**/api/realtime-session", busy_then_slow)
    await page.goto(str(relay.client.make_url(f"/?token={token}")))
    await page.click("#start")
    status = page.locator("#status")
    await expect(status).to_contain_text("Retrying the session (attempt 2 of 4)…")
    activity = page.locator("#activity")
    await expect(activity).to_have_text("Next attempt in 1 s.")
    # While the retry is in flight the countdown is not left on screen at "1 s".
    await expect(activity).to_have_text(
        "Trying again now (attempt 2 of 4)…", timeout=CONNECT_S * 1000
    )
    assert len(requests) == 2
    release.set()
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await end_interview(page)
    await expect(page.locator("#status")).to_have_text("Interview ended.")


# The relay's Retry-After for credit_in_use (limits.credit_in_use_retry_after_s, 5 s by
# default): lowered, so the refusals waited out take about 5 s rather than 25 (still a wait
# the Retry-After check below tells from asking again at once).
CREDIT_IN_USE_RETRY_S = 1
# Refusals waited out before the other page ends: more than the four attempts other
# retryable errors get, so the page is seen to wait longer for this one.
CREDIT_IN_USE_REFUSALS = 5


async def test_the_interview_open_in_another_tab_starts_here_once_that_one_ends(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page, browser: Browser
) -> None:
    relay = await make_relay(
        overrides={"limits": {"credit_in_use_retry_after_s": CREDIT_IN_USE_RETRY_S}}
    )
    token = await relay.add_user(seconds=600)
    link = str(relay.client.make_url("/")) + f"#token={token}"
    await page.goto(link)
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)

    # The same link in another window: the time is held by the first page's session.
    other_context = await browser.new_context()
    try:
        other = await other_context.new_page()
        answers: list[tuple[float, int, str | None, str | None]] = []

        async def on_response(response: Response) -> None:
            if response.url.endswith("/api/realtime-session"):
                code = (await response.json()).get("error", {}).get("code")
                answers.append(
                    (time.monotonic(), response.status, code, response.headers.get("retry-after"))
                )

        other.on("response", on_response)
        await other.goto(link)
        await other.click("#start")
        await expect(other.locator("#status")).to_have_text(CREDIT_IN_USE_MESSAGE)
        await expect(other.locator("#error")).to_be_hidden()
        await wait_until(
            lambda: len(answers) >= CREDIT_IN_USE_REFUSALS,
            CREDIT_IN_USE_REFUSALS * CREDIT_IN_USE_RETRY_S + CONNECT_S,
            "the refusals while the first page is live",
        )
        # Still waiting, still saying why.
        await expect(other.locator("#status")).to_have_text(CREDIT_IN_USE_MESSAGE)
        await expect(other.locator("#error")).to_be_hidden()
        await expect(other.locator("#start")).to_be_disabled()

        # The first page ends its interview: the second starts at its next attempt.
        await end_interview(page)
        await expect(page.locator("#ended")).to_be_visible()
        await expect(other.locator("#connection")).to_have_text(
            "Live", timeout=(CREDIT_IN_USE_RETRY_S + CONNECT_S) * 1000
        )
        await wait_until(lambda: answers[-1][1] == 201, CONNECT_S, "the 201 noted")
        refused = answers[:-1]
        assert len(refused) >= CREDIT_IN_USE_REFUSALS, answers
        assert all(a[1:] == (409, "credit_in_use", str(CREDIT_IN_USE_RETRY_S)) for a in refused)
        # Retry-After honoured.
        for (t_prev, *_), (t_next, *_) in itertools.pairwise(answers):
            assert t_next - t_prev >= CREDIT_IN_USE_RETRY_S - 0.25, answers
        await end_interview(other)
        await expect(other.locator("#status")).to_have_text("Interview ended.")
    finally:
        await other_context.close()
