"""An interview (a candidate link) across what cuts a session short, through the whole
relay (real PostgreSQL, the simulator over HTTP, aiortc peers as the page): a candidate
whose interviewer's service dropped the call can open the link again and go on with what
is left of the budget."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.upstream.simulator.app import SIMULATOR_KEY
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    bearer,
    call,
    create_interview,
    events_of,
    interview_status,
    invite_of,
    join,
)
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness

BUDGET_S = 300


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


async def test_the_interviewers_service_dropping_the_call_leaves_the_link_open(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay()
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
