"""The candidate page with the relay's continuity (relay.* events, resume), in headless
Chromium with a fake microphone against the whole relay and the simulator: a reload
rejoins the same interview (same session, same upstream call, transcript restored), each
server-side end is on screen within a second with its reason, and the time left and the
wrap-up come from the relay."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.async_api import Dialog, Page, Request, Response, Route, expect

from relay.upstream.simulator.app import SIMULATOR_KEY
from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import end_interview
from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import create_interview, interview_status, invite_of
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import wait_recording
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness
from tests.support.netcut import cut, require_netcut, udp_ports_of

CONNECT_S = 10
TURN_S = 15


# Every text the page's status line shows, kept on each page load: "Reconnected." may be
# replaced by the conversation's own status ("The interviewer is speaking…") before a
# check could read it.
NOTE_STATUS = """
window.statusTexts = [];
document.addEventListener("DOMContentLoaded", () => {
    const status = document.getElementById("status");
    new MutationObserver(() => window.statusTexts.push(status.textContent.trim()))
        .observe(status, { childList: true, characterData: true, subtree: true });
});
"""


async def status_shown(page: Page, text: str) -> None:
    """Until the status line has shown ``text`` (since the page loaded)."""
    await page.wait_for_function(
        "(text) => window.statusTexts.includes(text)", arg=text, timeout=CONNECT_S * 1000
    )


async def start_interview(page: Page, relay: RelayHarness, *, seconds: int = 600) -> str:
    token = await relay.add_user(seconds=seconds)
    await page.add_init_script(NOTE_STATUS)
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    session_id: str = (await (await created.value).json())["session_id"]
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    return session_id


async def test_a_reload_rejoins_the_same_interview(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    interviewer = page.locator("#transcript li.interviewer").first
    await expect(interviewer).to_have_text(re.compile(r"^Interviewer: \S"), timeout=TURN_S * 1000)
    said = await interviewer.inner_text()
    call = simulator.state.last_call
    assert call is not None
    calls_before = len(simulator.state.calls)
    stored = await page.evaluate("JSON.parse(sessionStorage.getItem('interviewSession'))")
    assert stored["session_id"] == session_id
    assert stored["resume_token"].startswith("rs_")

    asked: list[str] = []

    async def leave(dialog: Dialog) -> None:
        asked.append(dialog.type)
        await dialog.accept()

    page.on("dialog", leave)
    # The resume is held until the reconnecting state has been seen and pictured: on a
    # loaded machine the reloaded page could otherwise be live again before a check looks.
    release = asyncio.Event()

    async def hold_the_resume(route: Route) -> None:
        await release.wait()
        await route.continue_()

    resume_url = f"**/api/sessions/{session_id}/resume"
    await page.route(resume_url, hold_the_resume)
    async with page.expect_response(resume_url) as resumed:
        await page.reload()
        await expect(page.locator("#connection")).to_contain_text("Reconnecting")
        await page.screenshot(path=str(artifact_path("page-reconnecting.png")), full_page=True)
        release.set()
    answer = await resumed.value
    await page.unroute(resume_url, hold_the_resume)
    assert answer.status == 201, await answer.text()
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await status_shown(page, "Reconnected.")
    # The same interview: same session, same upstream call, the transcript restored.
    assert len(simulator.state.calls) == calls_before
    assert simulator.state.last_call is call and not call.hung_up
    # (at least what the page had shown: the relay's record may hold a few more words)
    restored = page.locator("#transcript li.interviewer").first
    await expect(restored).to_have_text(re.compile("^" + re.escape(said)))
    rotated = await page.evaluate("JSON.parse(sessionStorage.getItem('interviewSession'))")
    assert rotated["session_id"] == session_id
    assert rotated["resume_token"] != stored["resume_token"]
    # It goes on: the candidate's voice still reaches the same call.
    segments = len(call.vad_segments)
    await simulator.state.wait_for(lambda: len(call.vad_segments) > segments, TURN_S)

    await end_interview(page)
    await expect(page.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")
    rows = await relay.sql("SELECT id, state, end_reason FROM interview_sessions")
    assert [(r["id"], r["state"], r["end_reason"]) for r in rows] == [
        (session_id, "ended", "hangup")
    ]
    # One recording covers both parts of the conversation, the reload's gap listed in it.
    recording = await wait_recording(relay, session_id, "ready")
    assert len(await relay.sql("SELECT id FROM recordings")) == 1
    [gap] = recording["disconnections"]
    assert gap["resumed"] is True and gap["duration_s"] > 0


async def test_the_operators_end_is_on_screen_within_a_second(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    async with relay.client.delete(
        f"/api/sessions/{session_id}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        assert resp.status == 204
        hung_up = time.monotonic()
    await expect(page.locator("#end-reason")).to_have_text(
        "The interview was ended by the team running it.", timeout=1000
    )
    assert time.monotonic() - hung_up < 1.0
    await expect(page.get_by_role("button", name="Start interview")).to_have_count(0)


async def test_time_left_wrap_up_and_time_up_come_from_the_relay(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    # A 12 s interview, asked to wrap up 5 s before its end: the time left starts above the
    # wrap-up's and is under it once the wrap-up shows (the whole interview is waited out).
    relay = await make_relay(
        overrides={"session": {"max_duration_s": 12, "wrap_up_s": 5, "overrun_grace_s": 2}}
    )
    await start_interview(page, relay)
    await expect(page.locator("#time-left")).to_have_text(re.compile(r"^0:(0[7-9]|1[0-2])$"))
    wrap_up = page.locator("#wrap-up")
    await expect(wrap_up).to_be_visible(timeout=20_000)
    await expect(wrap_up).to_contain_text("ending soon")
    left = await page.locator("#time-left").inner_text()
    assert re.match(r"^0:0[0-6]$", left), left
    await expect(page.locator("#end-reason")).to_have_text(
        "The time for this interview is up. Thank you!", timeout=20_000
    )
    await wait_until(lambda: len(relay.services.registry) == 0, CONNECT_S, "registry empty")


async def test_a_dropped_connection_is_resumed_by_itself(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    call = simulator.state.last_call
    assert call is not None
    await expect(page.locator("#transcript li.interviewer").first).to_be_visible(
        timeout=TURN_S * 1000
    )
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    # The browser's leg goes, as on a network cut: the relay's end of it is closed.
    async with page.expect_response(f"**/api/sessions/{session_id}/resume") as resumed:
        await bridge.browser_pc.close()
    assert (await resumed.value).status == 201
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await status_shown(page, "Reconnected.")
    assert simulator.state.last_call is call and not call.hung_up
    await expect(page.locator("#transcript li.interviewer").first).to_be_visible()
    segments = len(call.vad_segments)
    await simulator.state.wait_for(lambda: len(call.vad_segments) > segments, TURN_S)
    await end_interview(page)
    await expect(page.locator("#ended")).to_be_visible()


async def test_a_resume_whose_answer_was_lost_is_recovered_with_its_idempotency_key(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    call = simulator.state.last_call
    assert call is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    sent: list[tuple[str | None, int]] = []

    async def lose_the_first_answer(route: Route) -> None:
        # The request reaches the relay and is served; only its answer never arrives (a
        # network cut on the way back), as the browser sees it.
        key = await route.request.header_value("idempotency-key")
        served = await route.fetch()
        sent.append((key, served.status))
        if len(sent) == 1:
            await route.abort("connectionreset")
        else:
            await route.fulfill(response=served)

    await page.route(f"**/api/sessions/{session_id}/resume", lose_the_first_answer)
    await bridge.browser_pc.close()
    # The page still reads "Live" until it notices the cut, so wait for the two attempts
    # first: checking "Live" alone could pass before the page had resumed at all.
    await wait_until(lambda: len(sent) == 2, CONNECT_S, "the resume and its retry")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await status_shown(page, "Reconnected.")
    # Sent again with the same key and body: the relay's first answer, not a second
    # resume (whose spent token would have ended the interview).
    assert [status for _, status in sent] == [201, 201]
    assert sent[0][0] is not None and sent[0][0] == sent[1][0]
    assert simulator.state.last_call is call and not call.hung_up
    segments = len(call.vad_segments)
    await simulator.state.wait_for(lambda: len(call.vad_segments) > segments, TURN_S)


# A page the candidate closes is noticed by the relay at once (the page closes its
# connection on pagehide: Chromium sends SCTP ABORT and DTLS close_notify), not after ICE
# consent fails (about 30 s) as for a network that just vanishes.
CLOSED_PAGE_NOTICED_S = 5


async def test_a_closed_page_is_noticed_by_the_relay_at_once(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    session_id = await start_interview(page, relay)
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    # The candidate closes the tab and confirms the browser's "Leave site?": Chromium runs
    # beforeunload, then pagehide, as for a tab closed by hand. (A plain page.close() skips
    # beforeunload but runs pagehide too: without the page's close on pagehide, either way
    # the relay noticed the leg lost only after about 32 s, when ICE consent failed.)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    closed = asyncio.Event()
    page.on("close", lambda _: closed.set())
    await page.close(run_before_unload=True)
    await asyncio.wait_for(closed.wait(), CONNECT_S)
    gone = time.monotonic()
    await wait_until(
        lambda: bridge.state == "browser_lost", CLOSED_PAGE_NOTICED_S, "the browser leg lost"
    )
    print(f"the relay noticed the closed page after {time.monotonic() - gone:.2f} s")
    # Lost, not ended: the session waits for a resume within the grace, as after a reload.
    assert relay.services.registry.get(session_id) is not None


# A network cut longer than the relay's grace but shorter than the time the relay needs to
# notice it (ICE consent: about 30 s): the relay still holds the interview when it ends.
# A page that gave up after the grace alone ends it during the cut; the page's resume
# attempts (at 0, 1, 3, 7 s: static/page-interview.js) find the network back at the 7 s one.
GRACE_S = 3
CUT_S = GRACE_S + 3


async def test_a_network_cut_longer_than_the_grace_resumes_while_the_relay_holds_it(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    require_netcut()
    relay = await make_relay(overrides={"session": {"reconnect_grace_s": GRACE_S}})
    session_id = await start_interview(page, relay)
    call = simulator.state.last_call
    assert call is not None
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    ports = udp_ports_of(bridge.browser_pc)
    refused: list[str] = []

    async def no_network(route: Route) -> None:
        refused.append(route.request.url)
        await route.abort("internetdisconnected")

    # Nothing gets through: the media and the page's resume requests.
    await page.route(f"**/api/sessions/{session_id}/resume", no_network)
    async with cut(ports):
        await expect(page.locator("#connection")).to_have_attribute(
            "data-state", "reconnecting", timeout=CONNECT_S * 1000
        )
        await asyncio.sleep(CUT_S)  # the cut lasts this long
    assert refused, "the page did not try to resume during the cut"
    # The relay never noticed (consent had not failed yet): the page takes its leg back.
    assert bridge.state == "active"
    await page.unroute(f"**/api/sessions/{session_id}/resume")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=TURN_S * 1000)
    await status_shown(page, "Reconnected.")
    assert simulator.state.last_call is call and not call.hung_up
    assert relay.services.registry.get(session_id) is not None


# The page's own rejoin after the interviewer's service dropped the call: the relay is not to
# heal it in place (tests/e2e/test_candidate_upstream_heal.py is the other way).
NO_HEAL: dict[str, dict[str, Any]] = {"session": {"upstream_reconnect_attempts": 0}}

# The page's automatic rejoins (static/page-interview.js REJOIN_ATTEMPTS, waits 2, 4, 8 s).
REJOIN_ATTEMPTS = 4
REJOINS_S = 2 + 4 + 8 + REJOIN_ATTEMPTS * CONNECT_S


async def test_when_going_on_by_itself_fails_the_candidate_can_go_on(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The interviewer's service drops the call and keeps refusing new ones: the page's
    automatic rejoins are bounded, then the end screen offers "Go on with the interview",
    which works once the service is back."""
    relay = await make_relay(overrides=NO_HEAL)
    first = await start_interview(page, relay)
    exchanges: list[int] = []
    page.on(
        "response",
        lambda r: exchanges.append(r.status) if r.url.endswith("/api/webrtc-exchange") else None,
    )
    # Every new call is refused by the service (the exchange's SDP post).
    await simulator.state.update_faults({"calls": {"status": 500}})
    [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
    await upstream.close("dropped")  # the service ends the call mid-interview
    await status_shown(page, "The interviewer's connection dropped. Reconnecting…")
    await expect(page.locator("#end-reason")).to_have_text(
        "The interviewer service had a problem, so the interview had to stop.",
        timeout=REJOINS_S * 1000,
    )
    # Tried by itself, a bounded number of times, each refused.
    assert exchanges == [502] * REJOIN_ATTEMPTS, exchanges
    # Not the end of the candidate's interview, and the page says so.
    await expect(page.locator("#end-next")).to_have_text(
        "Your interview may not be over: if you still have time, you can go on with it."
    )
    # The attempts' sessions were hung up: none is left holding the candidate's time.
    await wait_until(lambda: len(relay.services.registry) == 0, CONNECT_S, "registry empty")
    await simulator.state.update_faults({"calls": {"status": None}})
    await page.click("#go-on")
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    second = (await (await created.value).json())["session_id"]
    assert second != first
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await end_interview(page)
    await expect(page.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")
    # The candidate's own end: nothing to go on with.
    await expect(page.locator("#end-next")).to_have_text("You can close this tab.")
    await expect(page.locator("#go-on")).to_be_hidden()


async def test_after_the_interviewers_service_dropped_the_call_the_interview_goes_on_by_itself(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """An interview's link (an invite): the interviewer's service drops the call; the page
    says so and starts a new session of the interview by itself (the candidate presses
    nothing), which shows the conversation so far, and the interviewer goes on from it
    rather than starting over."""
    relay = await make_relay(overrides=NO_HEAL)
    interview = await create_interview(relay, max_duration_s=600, recording=False)
    await page.add_init_script(NOTE_STATUS)
    await page.goto(str(relay.client.make_url("/")) + f"#invite={invite_of(interview)}")
    created: list[str] = []

    async def on_response(response: Response) -> None:
        if response.url.endswith("/api/realtime-session") and response.status == 201:
            created.append((await response.json())["session_id"])

    page.on("response", on_response)
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    [first] = created
    # (Lines not shown yet, or never: hidden.)
    interviewer = page.locator("#transcript li.interviewer:not([hidden])")
    await expect(interviewer.first).to_have_text(
        f"Interviewer: {DEFAULT_REPLY_LINES[0]}", timeout=TURN_S * 1000
    )
    # Its rows are written as it goes: the rejoin reads them.
    await wait_until_kept(relay, first)
    before = set(simulator.state.calls)
    [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
    await upstream.close("dropped")
    await status_shown(page, "The interviewer's connection dropped. Reconnecting…")
    await wait_until(lambda: len(created) == 2, CONNECT_S, "a new session, by itself")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await status_shown(page, "Reconnected.")
    # Never the end screen nor its button: nothing for the candidate to do.
    ended_shown = await page.evaluate("() => window.statusTexts.includes('Interview ended.')")
    assert not ended_shown
    await expect(page.locator("#ended")).to_be_hidden()
    await relay.wait_session_closed(first)
    rows = await relay.sql("SELECT end_reason FROM interview_sessions WHERE id = $1", first)
    assert rows[0]["end_reason"] == "upstream_channel_closed"
    kept = await relay.sql(
        "SELECT text FROM session_transcript WHERE session_id = $1 AND role = 'assistant'"
        " ORDER BY position",
        first,
    )
    said = [r["text"] for r in kept]
    assert said == list(DEFAULT_REPLY_LINES[: len(said)])
    # The new upstream session's first reply is the interviewer's next line, not its first.
    [second] = [c for cid, c in simulator.state.calls.items() if cid not in before]
    await simulator.state.wait_for(
        lambda: bool(second.events_of("response.output_audio_transcript.done")), TURN_S
    )
    following = DEFAULT_REPLY_LINES[len(said) % len(DEFAULT_REPLY_LINES)]
    first_reply = second.events_of("response.output_audio_transcript.done")[0]
    assert first_reply["transcript"] == following
    # The page: the first session's lines are back (the relay's transcript replaced what it
    # showed), then that reply.
    await expect(interviewer.nth(len(said))).to_have_text(
        f"Interviewer: {following}", timeout=TURN_S * 1000
    )
    for index, line in enumerate(said):
        await expect(interviewer.nth(index)).to_have_text(f"Interviewer: {line}")
    # The candidate's End then ends the interview as theirs.
    await end_interview(page)
    await expect(page.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")
    await relay.wait_session_closed(created[1])
    rows = await relay.sql("SELECT end_reason FROM interview_sessions WHERE id = $1", created[1])
    assert rows[0]["end_reason"] == "hangup"


# How long the page waits before its second rejoin attempt (REJOIN_BACKOFF_S[0]).
SECOND_ATTEMPT_WAIT_S = 2


async def test_the_candidates_end_while_the_page_rejoins_ends_the_interview_as_theirs(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The interviewer's service drops the call and refuses new ones, so the page's rejoin
    does not come up; the candidate presses End between two attempts. The page stops, and
    the relay records the interview as ended by the candidate (completed, hangup) at once,
    not failed once its rejoin window has passed; no session is opened after the End, and
    a reload shows the end."""
    relay = await make_relay(overrides=NO_HEAL)
    interview = await create_interview(relay, max_duration_s=600, recording=False)
    await page.add_init_script(NOTE_STATUS)
    await page.goto(str(relay.client.make_url("/")) + f"#invite={invite_of(interview)}")
    asked: list[str] = []  # every session asked for, and every resume
    hang_ups: list[tuple[str, int]] = []
    exchanges: list[int] = []

    def on_request(request: Request) -> None:
        if request.url.endswith(("/api/realtime-session", "/resume")):
            asked.append(request.url)

    def on_response(response: Response) -> None:
        if response.url.endswith("/api/webrtc-exchange"):
            exchanges.append(response.status)
        elif response.request.method == "DELETE":
            hang_ups.append((response.url.rsplit("/", 1)[-1], response.status))

    page.on("request", on_request)
    page.on("response", on_response)
    async with page.expect_response("**/api/realtime-session") as started:
        await page.click("#start")
    first: str = (await (await started.value).json())["session_id"]
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)

    # The session's start is written after the page shows Live: a session that failed
    # before that write counts as a start given up before any media, which leaves the
    # interview scheduled and which End does not complete (CI cc101 dropped it first).
    async def started_in_db() -> object | None:
        rows = await relay.sql("SELECT connected_at FROM interview_sessions WHERE id = $1", first)
        return rows[0]["connected_at"] if rows else None

    await poll(started_in_db, CONNECT_S, "the session's start written")

    # Every new call is refused by the service (the exchange's SDP post): no rejoin comes up.
    await simulator.state.update_faults({"calls": {"status": 500}})
    exchanges.clear()  # the start's
    [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
    await upstream.close("dropped")  # the service ends the call mid-interview
    await status_shown(page, "The interviewer's connection dropped. Reconnecting…")
    # The first attempt (at once) refused; the page counts down to the second.
    await expect(page.locator("#connection")).to_contain_text(
        "Trying again in", timeout=CONNECT_S * 1000
    )
    await end_interview(page)
    ended_at = len(asked)
    assert exchanges == [502], exchanges  # pressed between the first and second attempts
    await expect(page.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")

    # The relay recorded the candidate's end: completed at once, not left in progress for
    # its rejoin window (10 minutes) and then failed.
    async def closed() -> dict[str, object] | None:
        found = await interview_status(relay, interview["id"])
        return found if found["status"] != "in_progress" else None

    done = await poll(closed, CONNECT_S, "the interview closed")
    assert (done["status"], done["end_reason"]) == ("completed", "hangup"), done
    assert (first, 204) in hang_ups, hang_ups
    rows = await relay.sql("SELECT state, end_reason FROM interview_sessions WHERE id = $1", first)
    assert rows[0]["state"] == "failed", dict(rows[0])
    # Nothing asked for after the End: not when the second attempt was due (an absence,
    # so watched for as long as that wait), and not on a reload, which shows the end.
    sessions = await relay.sql("SELECT id FROM interview_sessions")
    await asyncio.sleep(SECOND_ATTEMPT_WAIT_S + 1)
    await page.reload()
    await expect(page.locator("#end-reason")).to_have_text("You ended the interview. Thank you!")
    await expect(page.locator("#go-on")).to_be_hidden()
    await expect(page.locator("#call")).to_be_hidden()
    assert len(asked) == ended_at, asked[ended_at:]
    assert await relay.sql("SELECT id FROM interview_sessions") == sessions
    assert (await interview_status(relay, interview["id"]))["status"] == "completed"


async def wait_until_kept(relay: RelayHarness, session_id: str) -> None:
    async def kept() -> bool:
        rows = await relay.sql(
            "SELECT count(*) AS n FROM session_transcript WHERE session_id = $1"
            " AND role = 'assistant'",
            session_id,
        )
        return bool(rows[0]["n"])

    await poll(kept, TURN_S, "the interviewer's line kept")
