"""Continuity across two `relay serve` members (one PostgreSQL, one Redis, one simulator):
a resume that lands on the member without the interview is served by the one holding it,
and when the holder is killed outright the survivor takes the interview over with a new
upstream session seeded with the conversation so far, recording it as part 2."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import pytest

from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.cluster_helpers import (
    OPERATOR,
    Client,
    add_user,
    fresh_connections,
    poll,
    row_if_ended,
    sql,
)
from tests.integration.continuity_helpers import (
    SPEECH,
    Page,
    a_full_turn,
    go_live_at,
    told_it_resumed,
)
from tests.integration.test_cluster import Pair, member_id, pair  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


INTERVIEWER = "You interview for the backend role."


async def resume_at(
    client: Client,
    token: str,
    session_id: str,
    resume_token: str,
    pair: Pair,  # noqa: F811
) -> tuple[Page, dict[str, Any]]:
    page = Page(payloads=SPEECH)
    pair.browsers.append(page)
    body = {"resume_token": resume_token, "type": "offer", "sdp": await page.offer()}
    # As the page does: a retryable refusal (the holder was killed while its socket still
    # took the connection: nobody knows whether it served the resume) is tried again
    # after a short backoff; anything else ends the attempt.
    for backoff_s in (0.5, 1.0, 2.0, 0.0):
        status, answer, _ = await client.call(
            "POST", f"api/sessions/{session_id}/resume", token=token, json=body
        )
        if status != 503 or not answer["error"]["retryable"] or not backoff_s:
            break
        await asyncio.sleep(backoff_s)
    assert status == 201, answer
    await page.accept(answer["sdp"])
    await page.wait_connected(within=15)
    return page, answer


async def test_a_resume_sent_to_the_other_member_is_served_by_the_holder(
    pair: Pair,  # noqa: F811
    simulator: RunningSimulator,
) -> None:
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        _, token = await add_user(pair.dsn)
        status, created, _ = await a.create(token)
        assert status == 201, created
        sid = created["session_id"]
        page, resume_token = await go_live_at(a, token, sid, pair.browsers)
        await a_full_turn(page)
        [call] = simulator.state.calls.values()

        await page.pc.close()

        async def lost() -> bool:
            return bool((await a.session(token, sid))["media"]["state"] == "browser_lost")

        await poll(lost, 10, "A to see the browser leg lost")
        # The resume reaches B (any load balancer may send it there); A serves it.
        again, answer = await resume_at(b, token, sid, resume_token, pair)
        assert answer["session_id"] == sid and answer["resume_token"] != resume_token
        greeting = await again.wait_type("relay.session.reconnected", 10)
        assert greeting["gap_ms"] > 0
        transcript = await again.wait_type("relay.transcript", 10)
        assert [i["role"] for i in transcript["items"]] == ["user", "assistant"]
        rows = await sql(pair.dsn, "SELECT relay_instance FROM interview_sessions WHERE id=$1", sid)
        assert rows[0]["relay_instance"] == member_id(pair.a)
        # The same upstream call goes on: no second call, the conversation continues.
        assert list(simulator.state.calls.values()) == [call] and not call.hung_up
        items = call.conversation_items
        await a_full_turn(again)
        assert call.conversation_items >= items + 2
        assert (await a.session(token, sid))["media"]["state"] == "active"


@pytest.mark.parametrize("credential", ["user_token", "invite"])
async def test_the_holder_killed_the_interview_continues_on_the_survivor(
    pair: Pair,  # noqa: F811
    simulator: RunningSimulator,
    credential: str,
) -> None:
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        interview: dict[str, Any] | None = None
        if credential == "user_token":
            _, token = await add_user(pair.dsn, seconds=600)
        else:
            # An interview's session: what it spends is the interview's budget, and the
            # member taking it over keeps it the interview's.
            status, interview, _ = await a.call(
                "POST",
                "api/interviews",
                headers=OPERATOR,
                json={
                    "candidate": {"email": "taken-over@example.test"},
                    "instructions": INTERVIEWER,
                    "max_duration_s": 600,
                    # Not recorded: the member taking it over must not record part 2.
                    "recording": False,
                },
            )
            assert status == 201, interview
            token = str(interview["candidate_url"]).split("#invite=", 1)[1]
        status, created, _ = await b.create(token)
        assert status == 201, created
        sid = created["session_id"]
        page, resume_token = await go_live_at(b, token, sid, pair.browsers)
        await a_full_turn(page)
        [first_call] = simulator.state.calls.values()

        async def kept() -> list[Any] | None:
            # B writes the conversation and the time charged as the interview goes.
            rows = await sql(
                pair.dsn,
                "SELECT position, role, text FROM session_transcript"
                " WHERE session_id=$1 ORDER BY position",
                sid,
            )
            used = await sql(
                pair.dsn, "SELECT used_seconds FROM interview_sessions WHERE id=$1", sid
            )
            return rows if len(rows) >= 2 and used[0]["used_seconds"] else None

        kept_rows = await poll(kept, 20, "B to keep the transcript and the time charged")
        charged_before = float(
            (await sql(pair.dsn, "SELECT used_seconds FROM interview_sessions WHERE id=$1", sid))[
                0
            ]["used_seconds"]
        )

        os.kill(pair.b.pid, signal.SIGKILL)
        killed = time.monotonic()
        await page.pc.close()  # the page notices and reconnects, reaching A
        again, answer = await resume_at(a, token, sid, resume_token, pair)
        # Within 10 s of the kill (the candidate's page: a backoff of a second or two).
        assert time.monotonic() - killed < 10
        assert answer["session_id"] == sid

        time_left = await told_it_resumed(again, kept_rows)
        assert time_left["seconds"] <= 600 - int(charged_before)

        # A new upstream session, seeded with the conversation so far (and a note).
        second = next(c for c in simulator.state.calls.values() if c is not first_call)
        await simulator.state.wait_for(lambda: second.items_created == len(kept_rows) + 1, 10)
        assert second.conversation_items == len(kept_rows) + 1
        created_items = [
            e["item"] for e in second.client_events if e.get("type") == "conversation.item.create"
        ]
        assert [i["role"] for i in created_items] == [r["role"] for r in kept_rows] + ["system"]
        if interview is not None:
            # The survivor mints the interview's own interviewer again, not the default one.
            [survivor_created] = second.events_of("session.created")
            assert survivor_created["session"]["instructions"].startswith(INTERVIEWER)

        async def moved_and_active() -> dict[str, object] | None:
            # The row turns active by a write of its own after the leg connects: the page
            # may hear it resumed a moment before that write lands.
            rows = await sql(
                pair.dsn,
                "SELECT relay_instance, parts, state FROM interview_sessions WHERE id=$1",
                sid,
            )
            return dict(rows[0]) if rows[0]["state"] == "active" else None

        assert await poll(moved_and_active, 10, "the taken-over row to be active") == {
            "relay_instance": member_id(pair.a),
            "parts": 2,
            "state": "active",
        }
        # The interview goes on from there: the interviewer's next line, not its first.
        await a_full_turn(again)
        done = [e for e in again.events if e["type"] == "response.output_audio_transcript.done"]
        said = sum(1 for r in kept_rows if r["role"] == "assistant")
        assert done[-1]["transcript"] == DEFAULT_REPLY_LINES[said]

        status, _, _ = await a.call("DELETE", f"api/sessions/{sid}", token=token)
        assert status == 204
        final = await poll(lambda: row_if_ended(pair.dsn, sid), 10, "the interview to end on A")
        assert final["end_reason"] == "hangup"
        assert (await a.session(token, sid))["parts"] == 2
        # Debited for both parts: B's seconds carried over.
        assert final["debited_seconds"] >= charged_before
        if interview is not None:
            # Still the interview's session, spending the interview's budget (not the
            # user's seconds), and its end completes the interview.
            assert final["interview_id"] == interview["id"]
            status, done, _ = await a.call(
                "GET", f"api/interviews/{interview['id']}", headers=OPERATOR
            )
            assert status == 200 and done["status"] == "completed", done
            assert done["used_seconds"] >= int(charged_before)
            assert await sql(pair.dsn, "SELECT id FROM recordings") == []
            return  # nothing recorded: no parts to look for

        async def parts() -> list[dict[str, Any]] | None:
            status, body, _ = await a.call("GET", "api/recordings?limit=200", headers=OPERATOR)
            assert status == 200, body
            mine = [i for i in body["items"] if i["session_id"] == sid]
            ready = [i for i in mine if i["part"] == 2 and i["status"] == "ready"]
            return mine if ready else None

        recordings = await poll(parts, 30, "part 2 of the recording to be ready")
        assert sorted(i["part"] for i in recordings) == [1, 2]


@dataclass
class KilledHolder:
    """An interview live on member B, charged there, and B killed (SIGKILL)."""

    interview: dict[str, Any]
    token: str
    sid: str
    page: Page
    resume_token: str


async def live_at_b_then_killed(members: Pair, a: Client, b: Client, email: str) -> KilledHolder:
    """An interview (its own interviewer, no recording) created on A, live on B after a
    full turn and a progress write, then B killed: what reaches A next finds its holder
    dead."""
    status, interview, _ = await a.call(
        "POST",
        "api/interviews",
        headers=OPERATOR,
        json={
            "candidate": {"email": email},
            "instructions": INTERVIEWER,
            "max_duration_s": 600,
            "recording": False,
        },
    )
    assert status == 201, interview
    token = str(interview["candidate_url"]).split("#invite=", 1)[1]
    status, created, _ = await b.create(token)
    assert status == 201, created
    sid = created["session_id"]
    page, resume_token = await go_live_at(b, token, sid, members.browsers)
    await a_full_turn(page)

    async def charged() -> float | None:
        rows = await sql(
            members.dsn, "SELECT used_seconds FROM interview_sessions WHERE id=$1", sid
        )
        return float(rows[0]["used_seconds"]) if rows[0]["used_seconds"] else None

    await poll(charged, 20, "B to write the time charged")
    os.kill(members.b.pid, signal.SIGKILL)
    return KilledHolder(interview, token, sid, page, resume_token)


async def resume_as_the_page_does(
    members: Pair, a: Client, token: str, sid: str, resume_token: str
) -> tuple[int, Any]:
    """A new page's resume at A, retried with the page's backoff while A answers 503 (its
    holder not yet found dead)."""
    again = Page(payloads=SPEECH)
    members.browsers.append(again)
    body = {"resume_token": resume_token, "type": "offer", "sdp": await again.offer()}
    for backoff_s in (0.5, 1.0, 2.0, 4.0, 0.0):
        status, answer, _ = await a.call(
            "POST", f"api/sessions/{sid}/resume", token=token, json=body
        )
        if status != 503 or not backoff_s:
            break
        await asyncio.sleep(backoff_s)  # the page's backoff, until B is found dead
    return status, answer


async def test_an_interview_cancelled_while_its_holder_is_dead_is_not_taken_over(
    pair: Pair,  # noqa: F811
    simulator: RunningSimulator,
) -> None:
    """The cancel's "end this session" reaches no member (its holder was killed), so the
    row is still live when the page's resume reaches the survivor. The take-over must not
    bring the cancelled interview back: 410 ``session_ended`` (``cancelled``), the row
    closed with the seconds charged until the kill, no new upstream session."""
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        live = await live_at_b_then_killed(pair, a, b, "cancelled-meanwhile@example.test")
        interview, token, sid = live.interview, live.token, live.sid
        page, resume_token = live.page, live.resume_token
        status, cancelled, _ = await a.call(
            "POST", f"api/interviews/{interview['id']}/cancel", headers=OPERATOR
        )
        assert status == 200 and cancelled["status"] == "cancelled", cancelled
        calls = len(simulator.state.calls)
        await page.pc.close()

        status, answer = await resume_as_the_page_does(pair, a, token, sid, resume_token)
        assert status == 410, answer
        assert answer["error"]["code"] == "session_ended"
        assert answer["error"]["end_reason"] == "cancelled"
        assert len(simulator.state.calls) == calls  # no interviewer minted for it

        [row] = await sql(
            pair.dsn,
            "SELECT state, end_reason, used_seconds, debited_seconds, relay_instance"
            " FROM interview_sessions WHERE id=$1",
            sid,
        )
        assert (row["state"], row["end_reason"]) == ("ended", "cancelled")
        assert row["relay_instance"] == member_id(pair.b)
        assert row["debited_seconds"] == math.ceil(row["used_seconds"])
        status, after, _ = await a.call(
            "GET", f"api/interviews/{interview['id']}", headers=OPERATOR
        )
        assert status == 200 and after["status"] == "cancelled", after
        assert after["used_seconds"] == row["debited_seconds"]


async def test_a_session_hung_up_while_its_holder_is_dead_is_not_taken_over(
    pair: Pair,  # noqa: F811
    simulator: RunningSimulator,
) -> None:
    """The operator hangs up a session whose holder was just killed: the command reaches no
    member, but the hang-up is written on the row, so the page's resume on the survivor
    closes it (410 ``session_ended``, ``operator_hangup``) instead of taking it over, and
    the interview completes with that reason."""
    async with fresh_connections() as http:
        a, b = Client(http, pair.a.url), Client(http, pair.b.url)
        live = await live_at_b_then_killed(pair, a, b, "hung-up-meanwhile@example.test")
        interview, token, sid = live.interview, live.token, live.sid
        page, resume_token = live.page, live.resume_token
        status, _, _ = await a.call("DELETE", f"api/sessions/{sid}", headers=OPERATOR)
        assert status == 204
        calls = len(simulator.state.calls)
        await page.pc.close()

        status, answer = await resume_as_the_page_does(pair, a, token, sid, resume_token)
        assert status == 410, answer
        assert answer["error"]["code"] == "session_ended"
        assert answer["error"]["end_reason"] == "operator_hangup"
        assert len(simulator.state.calls) == calls  # no interviewer minted for it

        [row] = await sql(
            pair.dsn,
            "SELECT state, end_reason, used_seconds, debited_seconds"
            " FROM interview_sessions WHERE id=$1",
            sid,
        )
        assert (row["state"], row["end_reason"]) == ("ended", "operator_hangup")
        assert row["debited_seconds"] == math.ceil(row["used_seconds"])
        status, after, _ = await a.call(
            "GET", f"api/interviews/{interview['id']}", headers=OPERATOR
        )
        assert status == 200, after
        assert (after["status"], after["end_reason"]) == ("completed", "operator_hangup")
        assert after["used_seconds"] == row["debited_seconds"]
