"""A rolling deploy under a candidate's interview, in headless Chromium: two real `relay
serve` members on one PostgreSQL and one Redis behind one address (tests/support/
front_door.py, the deployment's proxy with its health checks), the interview live on the
first. The operator drains that member (`POST /api/cluster/drain`: the interview goes on
there), then stops it (SIGTERM: it hangs the interview up `relay_shutdown` at its drain
deadline). The page goes on by itself on the other member, the candidate pressing nothing:
an interview's link is seeded with the conversation so far (the interviewer does not greet
again), the time left goes on from what was used, and the candidate's End then completes the
interview `hangup`, with one `interview.started` in all. A user's token goes on by itself
too, with a session of its own: nothing is seeded (docs/operations.md, "A rejoin")."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Response, expect

from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import end_interview
from tests.e2e.test_candidate_resume import CONNECT_S, NOTE_STATUS, TURN_S, status_shown
from tests.integration.cluster_helpers import (
    OPERATOR,
    Client,
    RelayProcess,
    add_user,
    fresh_connections,
    poll,
    relay_env,
    row_if_ended,
    simulator_env,
    sql,
)
from tests.integration.test_cluster import Pair, member_id, pair  # noqa: F401  (the fixture)
from tests.support.front_door import FrontDoor, front_door

pytestmark = pytest.mark.slow

BUDGET_S = 600
INTERVIEWER = "You interview for the backend role."


@pytest.fixture
async def door(pair: Pair) -> AsyncIterator[FrontDoor]:  # noqa: F811
    # A first: the interview starts there, the member the test then drains and stops.
    async with front_door([pair.a.url, pair.b.url]) as running:
        yield running


def seconds_of(shown: str) -> int:
    """``9:41`` (the page's time left) → 581."""
    match = re.fullmatch(r"(\d+):(\d\d)", shown.strip())
    assert match, shown
    return int(match[1]) * 60 + int(match[2])


async def kept_lines(dsn: str, session_id: str) -> list[str]:
    rows = await sql(
        dsn,
        "SELECT text FROM session_transcript WHERE session_id = $1 AND role = 'assistant'"
        " ORDER BY position",
        session_id,
    )
    return [r["text"] for r in rows]


@pytest.mark.parametrize("credential", ["invite", "user_token"])
async def test_a_rolling_deploy_under_the_interview_goes_on_by_itself(
    pair: Pair,  # noqa: F811
    door: FrontDoor,
    simulator: RunningSimulator,
    page: Page,
    credential: str,
) -> None:
    async with fresh_connections() as http:
        front = Client(http, door.url)
        interview: dict[str, Any] | None = None
        if credential == "invite":
            status, interview, _ = await front.call(
                "POST",
                "api/interviews",
                headers=OPERATOR,
                json={
                    "candidate": {"email": "rolling@example.test"},
                    "instructions": INTERVIEWER,
                    "max_duration_s": BUDGET_S,
                    "recording": False,
                },
            )
            assert status == 201, interview
            fragment = "#invite=" + str(interview["candidate_url"]).split("#invite=", 1)[1]
        else:
            email, token = await add_user(pair.dsn, seconds=BUDGET_S)
            fragment = f"#token={token}"

        await page.add_init_script(NOTE_STATUS)
        created: list[str] = []

        async def on_response(response: Response) -> None:
            if response.url.endswith("/api/realtime-session") and response.status == 201:
                created.append((await response.json())["session_id"])

        page.on("response", on_response)
        await page.goto(door.url + fragment)
        await page.click("#start")
        await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
        [first] = created
        rows = await sql(
            pair.dsn, "SELECT relay_instance FROM interview_sessions WHERE id = $1", first
        )
        assert rows[0]["relay_instance"] == member_id(pair.a)
        interviewer = page.locator("#transcript li.interviewer:not([hidden])")
        await expect(interviewer.first).to_have_text(
            f"Interviewer: {DEFAULT_REPLY_LINES[0]}", timeout=TURN_S * 1000
        )
        # Its rows are written as it goes: what a rejoin is seeded with.
        await poll(lambda: kept_lines(pair.dsn, first), TURN_S, "the interviewer's line kept")
        [upstream] = simulator.state.calls.values()

        # The deploy takes A out: drained first, so it admits nothing new (the proxy's
        # health check takes it out of the pool) while the interview goes on there.
        status, drained, _ = await front.call(
            "POST", "api/cluster/drain", headers=OPERATOR, json={"member": member_id(pair.a)}
        )
        assert status == 202, drained
        await poll(_out_of_pool(door, pair.a.url), 5, "A out of the proxy's pool")
        segments = len(upstream.vad_segments)
        await simulator.state.wait_for(lambda: len(upstream.vad_segments) > segments, TURN_S)
        assert not upstream.hung_up and created == [first]
        await expect(page.locator("#connection")).to_have_text("Live")

        # Then stopped: its drain deadline (server.drain_timeout_s, 2 s here) hangs the
        # interview up, relay_shutdown, and the page goes on by itself, through B.
        stopping = asyncio.create_task(pair.a.stop())
        await status_shown(page, "The interview service restarted. Reconnecting…")
        await poll(_count(created, 2), CONNECT_S * 2, "a new session, by itself")
        await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
        await status_shown(page, "Reconnected.")
        assert await stopping == 0
        second = created[1]
        said = await page.evaluate("() => window.statusTexts")
        assert "Interview ended." not in said, said
        await expect(page.locator("#ended")).to_be_hidden()
        [row] = await sql(
            pair.dsn,
            "SELECT state, end_reason, debited_seconds FROM interview_sessions WHERE id = $1",
            first,
        )
        assert (row["state"], row["end_reason"]) == ("failed", "relay_shutdown")
        used = int(row["debited_seconds"])
        assert used > 0
        rows = await sql(
            pair.dsn, "SELECT relay_instance FROM interview_sessions WHERE id = $1", second
        )
        assert rows[0]["relay_instance"] == member_id(pair.b)
        rejoined = [p for m, p, who in door.served if m == "POST" and who == pair.b.url]
        assert "/api/realtime-session" in rejoined and "/api/webrtc-exchange" in rejoined

        # The time left goes on from what the first session used, not from the start.
        left = seconds_of(await page.locator("#time-left").inner_text())
        assert BUDGET_S - used - TURN_S <= left <= BUDGET_S - used, (left, used)

        # The interviewer: an interview's goes on from the conversation so far (its next
        # line, not its greeting); a user token's session is a new conversation.
        [second_call] = [c for c in simulator.state.calls.values() if c is not upstream]
        await simulator.state.wait_for(
            lambda: bool(second_call.events_of("response.output_audio_transcript.done")), TURN_S
        )
        first_reply = second_call.events_of("response.output_audio_transcript.done")[0]
        if interview is not None:
            kept = await kept_lines(pair.dsn, first)
            assert kept == list(DEFAULT_REPLY_LINES[: len(kept)])
            following = DEFAULT_REPLY_LINES[len(kept) % len(DEFAULT_REPLY_LINES)]
            assert first_reply["transcript"] == following
            # The page shows the conversation so far again, then that line.
            await expect(interviewer.nth(len(kept))).to_have_text(
                f"Interviewer: {following}", timeout=TURN_S * 1000
            )
            for index, line in enumerate(kept):
                await expect(interviewer.nth(index)).to_have_text(f"Interviewer: {line}")
        else:
            assert first_reply["transcript"] == DEFAULT_REPLY_LINES[0]
            # The page keeps what it showed of the first conversation, the greeting again
            # after it (no relay.transcript replaces it: there is nothing to restore).
            greetings = interviewer.filter(has_text=DEFAULT_REPLY_LINES[0])
            await expect(greetings).to_have_count(2, timeout=TURN_S * 1000)
            await expect(interviewer.first).to_have_text(f"Interviewer: {DEFAULT_REPLY_LINES[0]}")

        # The candidate's End ends it as theirs.
        await end_interview(page)
        await expect(page.locator("#end-reason")).to_have_text(
            "You ended the interview. Thank you!"
        )
        final = await poll(lambda: row_if_ended(pair.dsn, second), 10, "the second session's end")
        assert (final["state"], final["end_reason"]) == ("ended", "hangup")
        if interview is None:
            [user] = await sql(
                pair.dsn, "SELECT remaining_seconds FROM users WHERE email = $1", email
            )
            assert user["remaining_seconds"] == BUDGET_S - used - final["debited_seconds"]
            return

        async def completed() -> dict[str, Any] | None:
            status, body, _ = await front.call(
                "GET", f"api/interviews/{interview['id']}", headers=OPERATOR
            )
            assert status == 200, body
            return dict(body) if body["status"] != "in_progress" else None

        done = await poll(completed, 10, "the interview's close")
        assert (done["status"], done["end_reason"]) == ("completed", "hangup")
        assert done["used_seconds"] == used + final["debited_seconds"]
        events = await sql(
            pair.dsn,
            "SELECT type, data FROM webhook_events WHERE interview_id = $1 ORDER BY seq",
            interview["id"],
        )
        assert [e["type"] for e in events] == ["interview.started", "interview.completed"]
        assert json.loads(events[0]["data"])["session_id"] == first
        assert json.loads(events[1]["data"])["end_reason"] == "hangup"


def _out_of_pool(door: FrontDoor, member: str) -> Any:
    async def check() -> bool:
        return not door.ready[member]

    return check


def _count(items: list[str], n: int) -> Any:
    async def check() -> bool:
        return len(items) >= n

    return check


@pytest.fixture
async def lone_relay(
    traversable_tmp_path: Path, database_url: str, simulator: RunningSimulator
) -> AsyncIterator[LoneRelay]:
    env = relay_env(
        traversable_tmp_path / "state",
        {"DATABASE_URL": database_url, **simulator_env(simulator.base_url)},
    )
    running = LoneRelay(
        traversable_tmp_path, env, await RelayProcess.start(traversable_tmp_path, env)
    )
    try:
        yield running
    finally:
        await running.process.stop()


class LoneRelay:
    """One `relay serve` (no cluster), restarted on the same port with the same data
    directory and settings: the smallest rolling deploy."""

    def __init__(self, cwd: Path, env: dict[str, str], process: RelayProcess) -> None:
        self.cwd, self.env, self.process = cwd, env, process

    async def restart(self) -> None:
        port = self.process.port
        assert await self.process.stop() == 0  # SIGTERM: it drains, then exits
        self.process = await RelayProcess.start(self.cwd, self.env, port=port)
        assert self.process.port == port


async def test_a_lone_relay_restarted_under_the_interview_goes_on_by_itself(
    lone_relay: LoneRelay, database_url: str, simulator: RunningSimulator, page: Page
) -> None:
    """No other member: the page's first rejoin reaches the relay that is stopping, still
    answering while it closes its sessions (503 draining, Retry-After 30 s); the page asks
    again every 2 s instead, so it goes on with the restarted relay (seeded) within moments
    of its start, by itself, rather than half a minute later."""
    async with fresh_connections() as http:
        relay = Client(http, lone_relay.process.url)
        status, interview, _ = await relay.call(
            "POST",
            "api/interviews",
            headers=OPERATOR,
            json={
                "candidate": {"email": "restarted@example.test"},
                "instructions": INTERVIEWER,
                "max_duration_s": BUDGET_S,
                "recording": False,
            },
        )
        assert status == 201, interview
        invite = str(interview["candidate_url"]).split("#invite=", 1)[1]
        await page.add_init_script(NOTE_STATUS)
        created: list[str] = []

        async def on_response(response: Response) -> None:
            if response.url.endswith("/api/realtime-session") and response.status == 201:
                created.append((await response.json())["session_id"])

        page.on("response", on_response)
        await page.goto(lone_relay.process.url + f"#invite={invite}")
        await page.click("#start")
        await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
        [first] = created
        interviewer = page.locator("#transcript li.interviewer:not([hidden])")
        await expect(interviewer.first).to_have_text(
            f"Interviewer: {DEFAULT_REPLY_LINES[0]}", timeout=TURN_S * 1000
        )
        await poll(lambda: kept_lines(database_url, first), TURN_S, "the interviewer's line kept")
        [upstream] = simulator.state.calls.values()

        await lone_relay.restart()
        restarted = time.monotonic()
        await status_shown(page, "The interview service restarted. Reconnecting…")
        # (Waiting out the Retry-After, it was live again some 25 s after the restart.)
        await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
        await status_shown(page, "Reconnected.")
        print(f"live again {time.monotonic() - restarted:.1f} s after the restart")
        said = await page.evaluate("() => window.statusTexts")
        assert "Interview ended." not in said, said
        second = created[-1]
        assert second != first
        [row] = await sql(
            database_url, "SELECT state, end_reason FROM interview_sessions WHERE id = $1", first
        )
        assert (row["state"], row["end_reason"]) == ("failed", "relay_shutdown")
        [second_call] = [c for c in simulator.state.calls.values() if c is not upstream]
        await simulator.state.wait_for(
            lambda: bool(second_call.events_of("response.output_audio_transcript.done")), TURN_S
        )
        kept = await kept_lines(database_url, first)
        following = DEFAULT_REPLY_LINES[len(kept) % len(DEFAULT_REPLY_LINES)]
        first_reply = second_call.events_of("response.output_audio_transcript.done")[0]
        assert first_reply["transcript"] == following

        await end_interview(page)
        await expect(page.locator("#end-reason")).to_have_text(
            "You ended the interview. Thank you!"
        )
        final = await poll(lambda: row_if_ended(database_url, second), 10, "the session's end")
        assert (final["state"], final["end_reason"]) == ("ended", "hangup")
        events = await sql(
            database_url,
            "SELECT type FROM webhook_events WHERE interview_id = $1 ORDER BY seq",
            interview["id"],
        )
        assert [e["type"] for e in events] == ["interview.started", "interview.completed"]
