"""The candidate page in a real browser: headless Chromium with a fake microphone, the
whole relay on loopback (real PostgreSQL), and the simulator as the upstream over real
HTTP and WebRTC."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Page, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import RelayHarness

INVALID_TOKEN_MESSAGE = "This token is not valid. Check the link or token you were given."
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
    await page.goto(str(relay.client.make_url(f"/?token={token}")))
    await expect(page.locator("#token")).to_have_value(token)
    notice = relay.services.settings.recording.notice_text
    await expect(page.locator("#recording-notice")).to_have_text(notice)

    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    session = await (await created.value).json()
    session_id = session["session_id"]

    # Connected: the page enabled #stop after the answer, both legs are up.
    await expect(page.locator("#stop")).to_be_enabled(timeout=CONNECT_S * 1000)
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
        await page.click("#stop")
    assert (await deleted.value).status == 204
    await expect(page.locator("#status")).to_have_text("Interview ended.")
    await expect(page.locator("#error")).to_be_hidden()
    await wait_until(lambda: len(relay.services.registry) == 0, CONNECT_S, "registry empty")
    await simulator.state.wait_for(lambda: call.hung_up, CONNECT_S)
    row = await interview_row(relay, session_id)
    assert row["state"] == "ended", row
    assert row["end_reason"] == "hangup", row
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
