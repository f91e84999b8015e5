"""An interview (a candidate link) across what cuts a session short, through the whole
relay (real PostgreSQL, the simulator over HTTP, aiortc peers as the page): a candidate
whose tab closed, whose browser crashed or whose network stayed away past the grace can
open the link again and go on with what is left of the budget; so can one whose
interviewer's service dropped the call. Nobody rejoining, housekeeping closes the
interview with the reason of its last session."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg

from relay.config import LimitsConfig
from relay.media.bridge.talk import CONTINUE_NOTE
from relay.sessions.shared_state import claim_row
from relay.upstream.simulator.app import SIMULATOR_KEY
from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.continuity_helpers import SPEECH, Page, a_full_turn, resume
from tests.integration.interview_helpers import (
    OPERATOR,
    bearer,
    call,
    create_interview,
    events_of,
    interview_status,
    invite_of,
    join,
)
from tests.integration.live_session import live_session
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness

BUDGET_S = 300


# These tests are about what follows a failed session (the rejoin): a dropped upstream call
# must end it, as it does when the relay is not to heal it in place
# (tests/integration/test_upstream_heal.py).
NO_HEAL: dict[str, dict[str, Any]] = {"session": {"upstream_reconnect_attempts": 0}}


async def session_row(relay: RelayHarness, session_id: str) -> Any:
    rows = await relay.sql(
        "SELECT state, end_reason, debited_seconds, ended_at FROM interview_sessions WHERE id = $1",
        session_id,
    )
    return rows[0]


async def interview_events(relay: RelayHarness, interview_id: str) -> list[Any]:
    """The interview's own events (not its recordings'), in order."""
    events = await events_of(relay, interview_id)
    return [(t, d) for t, d in events if t.startswith("interview.")]


async def start_again(relay: RelayHarness, invite: str, within: float) -> dict[str, Any]:
    """Open the link again as the page does after a closed tab: ``credit_in_use`` while
    the lost session is kept for its grace, then a new session (its body)."""
    deadline = time.monotonic() + within
    while True:
        status, body, _ = await call(
            relay, "POST", "/api/realtime-session", bearer(invite), json=NOTICE_CONFIRMED
        )
        if status == 201:
            return dict(body)
        assert status == 409 and body["error"]["code"] == "credit_in_use", body
        assert time.monotonic() < deadline, f"no new session within {within}s: {body}"
        await asyncio.sleep(0.2)


async def conversation(relay: RelayHarness, *session_ids: str) -> list[tuple[str, str]]:
    """The kept conversation (session_transcript) of these sessions: (role, text)."""
    rows = await relay.sql(
        "SELECT t.role, t.text FROM session_transcript t"
        " JOIN interview_sessions s ON s.id = t.session_id"
        " WHERE t.session_id = ANY($1::text[]) ORDER BY s.created_at, t.position",
        list(session_ids),
    )
    return [(r["role"], r["text"]) for r in rows]


async def kept_a_turn(relay: RelayHarness, session_id: str) -> list[tuple[str, str]]:
    """Once the session's candidate line and the interviewer's reply are written (the
    writes are asynchronous)."""

    async def both() -> list[tuple[str, str]] | None:
        said = await conversation(relay, session_id)
        return said if {role for role, _ in said} == {"user", "assistant"} else None

    result: list[tuple[str, str]] = await poll(both, 15, f"{session_id}'s turn kept")
    return result


async def test_a_candidate_whose_tab_closed_opens_the_link_again_and_goes_on(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"session": {"reconnect_grace_s": 1.0}})
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as first:
        await first.browser.wait_type("relay.session.time_left")
        # The tab closes (or the browser crashes): its connection is gone, no resume comes.
        await first.browser.pc.close()
        again = await start_again(relay, invite, within=15)
    lost = await session_row(relay, first.session_id)
    assert lost["end_reason"] == "browser_gone"
    # The interview is still the candidate's, with what is left of its budget.
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"
    assert again["max_duration_seconds"] == BUDGET_S - lost["debited_seconds"]
    assert [t for t, _ in await interview_events(relay, interview["id"])] == ["interview.started"]
    # The page that asked exchanges it (a new session of the same interview), then hangs up.
    async with join(relay, invite) as second:
        status, _, _ = await call(
            relay, "DELETE", f"/api/sessions/{second.session_id}", bearer(invite)
        )
        assert status == 204
    await relay.wait_session_closed(second.session_id)
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("completed", "hangup")
    assert {s["session_id"] for s in done["sessions"]} >= {first.session_id, second.session_id}
    events = await interview_events(relay, interview["id"])
    assert [t for t, _ in events] == ["interview.started", "interview.completed"]


async def test_nobody_rejoining_the_interview_completes_as_the_candidate_left_it(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(
        overrides={"session": {"reconnect_grace_s": 0.5}, "interviews": {"rejoin_window_s": 1}}
    )
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    async with join(relay, invite_of(interview)) as joined:
        await a_full_turn(joined.browser)
        said = await kept_a_turn(relay, joined.session_id)
        await joined.browser.pc.close()
        await relay.wait_session_closed(joined.session_id)
    lost = await session_row(relay, joined.session_id)
    assert (lost["state"], lost["end_reason"]) == ("ended", "browser_gone")
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"
    # Kept for a rejoin while the interview is in progress.
    assert await conversation(relay, joined.session_id) == said

    # Past the rejoin window, housekeeping completes it, as ended by its last session.
    deadline = time.monotonic() + 15
    while (await interview_status(relay, interview["id"]))["status"] == "in_progress":
        assert time.monotonic() < deadline, "not closed after the rejoin window"
        await relay.services.interviews.close_due()
        await asyncio.sleep(0.2)
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("completed", "browser_gone")
    events = await interview_events(relay, interview["id"])
    assert [t for t, _ in events] == ["interview.started", "interview.completed"]
    completed = events[1][1]
    assert completed["end_reason"] == "browser_gone"
    # When the candidate's session ended, not when housekeeping noticed.
    assert completed["ended_at"] == lost["ended_at"].isoformat().replace("+00:00", "Z")
    # Closed: nobody can rejoin it any more, so its conversation's text is gone.
    assert await conversation(relay, joined.session_id) == []


async def test_the_interviewers_service_dropping_the_call_leaves_the_link_open(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay(overrides=NO_HEAL)
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await joined.browser.wait_type("relay.session.time_left")
        [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
        await upstream.close("dropped")  # the service ends the call mid-interview
        ending = await joined.browser.wait_type("relay.session.ending", 10)
        assert ending["reason"] == "upstream_error"
        await relay.wait_session_closed(joined.session_id)
    cut = await session_row(relay, joined.session_id)
    assert cut["state"] == "failed" and cut["end_reason"].startswith("upstream_"), dict(cut)
    # Not completed: the candidate may rejoin with the same link, with what is left.
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"
    assert [t for t, _ in await interview_events(relay, interview["id"])] == ["interview.started"]
    async with join(relay, invite) as rejoined:
        assert rejoined.session["max_duration_seconds"] == BUDGET_S - cut["debited_seconds"]
        await wait_until(
            lambda: len(rejoined.browser.speaker.levels) > 10, 10, "the interviewer heard again"
        )


async def test_a_drained_relay_leaves_the_interview_to_its_candidate_on_another_member(
    make_relay: MakeRelay,
) -> None:
    draining = await make_relay(instance_id="member-a")
    interview = await create_interview(draining, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(draining, invite) as joined:
        ending = asyncio.ensure_future(joined.browser.wait_type("relay.session.ending", 10))
        await draining.services.bridges.drain(0.2)  # a rolling deploy's SIGTERM
        assert (await ending)["reason"] == "relay_shutdown"
        await draining.wait_session_closed(joined.session_id)
    stopped = await session_row(draining, joined.session_id)
    assert (stopped["state"], stopped["end_reason"]) == ("failed", "relay_shutdown")
    assert (await interview_status(draining, interview["id"]))["status"] == "in_progress"
    # The candidate opens the link again; the balancer sends it to a member still serving.
    serving = await make_relay(instance_id="member-b")
    async with join(serving, invite) as rejoined:
        assert rejoined.session["max_duration_seconds"] == BUDGET_S - stopped["debited_seconds"]


async def test_a_rejoin_after_a_failure_goes_on_with_the_conversation_so_far(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    """The candidate opens the link again after the interviewer's service dropped the call:
    the new session's upstream session is seeded with what was said (and told to go on,
    not to greet anew), the page is given the transcript back, as after a take-over; the
    interview's close then deletes the conversation of both sessions."""
    relay = await make_relay(overrides=NO_HEAL)
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    calls = simulator.app[SIMULATOR_KEY].calls
    async with join(relay, invite) as first:
        await a_full_turn(first.browser)
        said = await kept_a_turn(relay, first.session_id)
        [upstream] = calls.live.values()
        await upstream.close("dropped")
        await first.browser.wait_type("relay.session.ending", 10)
        await relay.wait_session_closed(first.session_id)
    assert (await session_row(relay, first.session_id))["state"] == "failed"
    # Kept past the session's end: the interview is in progress, the link open.
    assert await conversation(relay, first.session_id) == said
    before = set(simulator.state.calls)

    async with join(relay, invite) as second:
        # The page: back, with the conversation so far, then the time left.
        await second.browser.wait_type("relay.session.reconnected", 10)
        transcript = await second.browser.wait_type("relay.transcript", 10)
        assert [(i["role"], i["text"]) for i in transcript["items"]] == said
        # The new upstream session: the earlier items, then the note to go on.
        [new_call] = [c for cid, c in simulator.state.calls.items() if cid not in before]
        await simulator.state.wait_for(lambda: new_call.items_created == len(said) + 1, 10)
        created = [
            e["item"] for e in new_call.client_events if e.get("type") == "conversation.item.create"
        ]
        assert [(i["role"], i["content"][0]["text"]) for i in created] == [
            *said,
            ("system", CONTINUE_NOTE),
        ]
        # The interviewer goes on with its next line, not its first one.
        await a_full_turn(second.browser)
        replies = [
            e["transcript"]
            for e in second.browser.events
            if e.get("type") == "response.output_audio_transcript.done"
        ]
        already = sum(1 for role, _ in said if role == "assistant")
        assert replies[0] == DEFAULT_REPLY_LINES[already]
        # The relay's note to the interviewer stays hidden from the page.
        assert CONTINUE_NOTE not in json.dumps(second.browser.events)
        await kept_a_turn(relay, second.session_id)
        status, _, _ = await call(
            relay, "DELETE", f"/api/sessions/{second.session_id}", bearer(invite)
        )
        assert status == 204
    await relay.wait_session_closed(second.session_id)
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("completed", "hangup")
    # Closed with the second session's end: the text of both sessions went with it.
    assert await conversation(relay, first.session_id, second.session_id) == []


async def test_a_session_of_no_interview_loses_its_conversation_at_its_end(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    async with live_session(relay, email="no-interview@example.test") as live:
        await a_full_turn(live.browser)
        await kept_a_turn(relay, live.session_id)
        status, _, _ = await call(
            relay, "DELETE", f"/api/sessions/{live.session_id}", bearer(live.token)
        )
        assert status == 204
    await relay.wait_session_closed(live.session_id)
    assert await conversation(relay, live.session_id) == []


async def test_a_rejoined_session_taken_over_is_seeded_with_the_whole_interview(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    """A rejoined interview's session whose member is lost: the member taking it over seeds
    its new upstream session with the earlier session's conversation, then this one's."""
    holder = await make_relay(instance_id="member-a", overrides=NO_HEAL)
    interview = await create_interview(holder, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(holder, invite) as first:
        await a_full_turn(first.browser)
        await kept_a_turn(holder, first.session_id)
        [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
        await upstream.close("dropped")
        await first.browser.wait_type("relay.session.ending", 10)
        await holder.wait_session_closed(first.session_id)
    async with join(holder, invite) as second:
        await a_full_turn(second.browser)
        await kept_a_turn(holder, second.session_id)
        # The page's leg drops (nothing more is said), and the row says its holder is lost.
        await second.browser.pc.close()
        bridge = holder.services.bridges.get(second.session_id)
        assert bridge is not None
        await wait_until(lambda: bridge.state == "browser_lost", 10, "the browser leg lost")
        whole = await conversation(holder, first.session_id, second.session_id)
        await holder.sql(
            "UPDATE interview_sessions SET holder_lost_at = now() WHERE id = $1",
            second.session_id,
        )
        survivor = await make_relay(instance_id="member-b")
        before = set(simulator.state.calls)
        page = Page(payloads=SPEECH)
        try:
            status, answer = await resume(
                survivor,
                second.session_id,
                token=invite,
                resume_token=second.resume_token,
                page=page,
            )
            assert status == 201, answer
            await page.accept(answer["sdp"])
            # The page is given the whole interview's conversation back.
            transcript = await page.wait_type("relay.transcript", 10)
            assert [(i["role"], i["text"]) for i in transcript["items"]] == whole
            [new_call] = [c for cid, c in simulator.state.calls.items() if cid not in before]
            await simulator.state.wait_for(lambda: new_call.items_created == len(whole) + 1, 10)
            created = [
                e["item"]
                for e in new_call.client_events
                if e.get("type") == "conversation.item.create"
            ]
            assert [(i["role"], i["content"][0]["text"]) for i in created] == [
                *whole,
                ("system", CONTINUE_NOTE),
            ]
        finally:
            await page.close()


async def abandoned_start(relay: RelayHarness, invite: str) -> str:
    """The link opened again, and the start given up before any media (the page's
    ``abandon``: an exchange refused, e.g. 503 while the member drains): the session is
    hung up (``ended``, ``hangup``) without ever connecting."""
    created = await start_again(relay, invite, within=15)
    status, _, _ = await call(
        relay, "DELETE", f"/api/sessions/{created['session_id']}", bearer(invite)
    )
    assert status == 204
    await relay.wait_session_closed(created["session_id"])
    never = await session_row(relay, created["session_id"])
    assert (never["state"], never["end_reason"]) == ("ended", "hangup")
    return str(created["session_id"])


async def past_the_rejoin_window(relay: RelayHarness, interview_id: str) -> None:
    """The interview's sessions ended long ago (the whole window later), in their order."""
    await relay.sql(
        """UPDATE interview_sessions SET ended_at = ended_at - interval '1 hour'
           WHERE interview_id = $1""",
        interview_id,
    )


async def test_a_start_given_up_before_any_media_does_not_complete_a_failed_interview(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await joined.browser.wait_type("relay.session.time_left")
        bridge = relay.services.bridges.get(joined.session_id)
        assert bridge is not None
        await bridge.close("upstream_error", state="failed")  # the service dropped it
    await abandoned_start(relay, invite)
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"

    await past_the_rejoin_window(relay, interview["id"])
    closed = {c.id: c.status for c in await relay.services.interviews.close_due()}
    # Failed as its last conversation did; not completed by the hang-up of a session that
    # never carried media ("changes nothing", docs/api.md).
    assert closed == {interview["id"]: "failed"}
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("failed", "upstream_error")
    events = await interview_events(relay, interview["id"])
    assert [t for t, _ in events] == ["interview.started", "interview.failed"]


async def test_a_lost_candidate_whose_restart_was_given_up_completes_as_left(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"session": {"reconnect_grace_s": 0.5}})
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await joined.browser.wait_type("relay.session.time_left")
        await joined.browser.pc.close()
        await relay.wait_session_closed(joined.session_id)
    lost = await session_row(relay, joined.session_id)
    assert lost["end_reason"] == "browser_gone"
    await abandoned_start(relay, invite)

    await past_the_rejoin_window(relay, interview["id"])
    await relay.services.interviews.close_due()
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("completed", "browser_gone")
    events = await interview_events(relay, interview["id"])
    assert [t for t, _ in events] == ["interview.started", "interview.completed"]
    # When the conversation ended (its session), not when the given-up start was hung up.
    lost = await session_row(relay, joined.session_id)
    assert events[1][1]["ended_at"] == lost["ended_at"].isoformat().replace("+00:00", "Z")


async def test_the_candidates_end_while_rejoining_completes_the_interview_as_theirs(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    """The interviewer's service dropped the call and the page was rejoining by itself when
    the candidate pressed End: the page hangs up the session that failed (its browser leg
    gone), and the interview is completed as the candidate's hang-up at once, not failed
    once its rejoin window has passed; the link starts nothing from then on."""
    relay = await make_relay(overrides=NO_HEAL)
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await joined.browser.wait_type("relay.session.time_left")
        [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
        await upstream.close("dropped")
        await joined.browser.wait_type("relay.session.ending", 10)
        await relay.wait_session_closed(joined.session_id)
    cut = await session_row(relay, joined.session_id)
    assert cut["state"] == "failed", dict(cut)
    # The operator's DELETE of an ended session is no candidate's End: nothing changes.
    status, _, _ = await call(relay, "DELETE", f"/api/sessions/{joined.session_id}", OPERATOR)
    assert status == 204
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"
    # A start given up before any media (the page's clean-up of an attempt) neither.
    given_up = await abandoned_start(relay, invite)
    status, _, _ = await call(relay, "DELETE", f"/api/sessions/{given_up}", bearer(invite))
    assert status == 204
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"

    status, _, _ = await call(relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(invite))
    assert status == 204
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("completed", "hangup")
    # The session keeps its own end; the interview ended when its conversation did.
    assert (await session_row(relay, joined.session_id))["end_reason"] == cut["end_reason"]
    events = await interview_events(relay, interview["id"])
    assert [t for t, _ in events] == ["interview.started", "interview.completed"]
    assert events[1][1]["end_reason"] == "hangup"
    assert events[1][1]["ended_at"] == cut["ended_at"].isoformat().replace("+00:00", "Z")
    # Sent again (the page retries a hang-up whose answer it missed): the same, no event.
    status, _, _ = await call(relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(invite))
    assert status == 204
    assert len(await interview_events(relay, interview["id"])) == 2
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite), json=NOTICE_CONFIRMED
    )
    assert (status, body["error"]["code"]) == (403, "interview_closed"), body


async def test_the_candidates_end_after_a_lost_connection_completes_the_interview_as_theirs(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"session": {"reconnect_grace_s": 0.5}})
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await joined.browser.wait_type("relay.session.time_left")
        await joined.browser.pc.close()
        await relay.wait_session_closed(joined.session_id)
    assert (await session_row(relay, joined.session_id))["end_reason"] == "browser_gone"
    status, _, _ = await call(relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(invite))
    assert status == 204
    done = await interview_status(relay, interview["id"])
    assert (done["status"], done["end_reason"]) == ("completed", "hangup")


async def test_the_candidates_end_does_not_complete_an_interview_a_claim_is_taking_up(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    """End pressed in one tab while another tab's rejoin is being exchanged: the exchange's
    claim reads the interview open without locking its row. Either the claim lands first
    (its session connecting: the End completes nothing) or it finds the interview closed;
    never a session going live in an interview already completed. The interleaving is
    forced: the claim is held on its session's row lock after it has read the interview,
    while the End runs."""
    relay = await make_relay(overrides=NO_HEAL)
    interview = await create_interview(relay, max_duration_s=BUDGET_S)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await joined.browser.wait_type("relay.session.time_left")
        [upstream] = simulator.app[SIMULATOR_KEY].calls.live.values()
        await upstream.close("dropped")
        await joined.browser.wait_type("relay.session.ending", 10)
        await relay.wait_session_closed(joined.session_id)
    # The other tab's rejoin: a new session, its exchange about to claim it.
    attempt = (await start_again(relay, invite, within=15))["session_id"]
    [owner] = await relay.sql("SELECT user_id FROM interview_sessions WHERE id = $1", attempt)
    holder = await asyncpg.connect(relay.database_url)
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM interview_sessions WHERE id = $1 FOR UPDATE", attempt)
        claim = asyncio.create_task(
            claim_row(
                relay.services.store,
                attempt,
                owner["user_id"],
                instance="elsewhere:1",
                token="t" * 16,
                limits=LimitsConfig(min_remaining_seconds=1),
                interview_id=interview["id"],
            )
        )
        await poll(
            lambda: waiting_for(relay, "tuple", "transactionid"),
            10,
            "the claim waiting for its session's row",
        )
        end = asyncio.create_task(relay.services.session_rows.hang_up_interview(joined.session_id))

        # The End either done (no lock to wait for) or waiting for the claim's.
        async def end_done_or_waiting() -> bool:
            return end.done() or await waiting_for(relay, "advisory")

        await poll(end_done_or_waiting, 10, "the End done or waiting for the claim")
        await hold.commit()
        claimed = await asyncio.gather(claim, end, return_exceptions=True)
    finally:
        await holder.close()
    state = (await session_row(relay, attempt))["state"]
    status = (await interview_status(relay, interview["id"]))["status"]
    assert not (state == "connecting" and status == "completed"), (claimed, state, status)
    assert (state, status, claimed[1]) == ("connecting", "in_progress", False), claimed
    # Let the row go: nothing holds it (the claim named another member).
    await relay.sql(
        "UPDATE interview_sessions SET state = 'failed', end_reason = 'test', ended_at = now()"
        " WHERE id = $1",
        attempt,
    )


async def waiting_for(relay: RelayHarness, *locktypes: str) -> bool:
    """Whether some backend waits for a lock of one of these kinds (pg_locks)."""
    rows = await relay.sql(
        "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = ANY($1::text[])",
        list(locktypes),
    )
    return bool(rows)
