"""Continuity through the whole relay (real PostgreSQL, the simulator over HTTP, aiortc
peers as the page): a dropped page resumes the same interview within the grace, the
resume token is single-use, every end the relay decides reaches the page before the
hang-up, and the interview's limit is announced, wrapped up and lets a reply finish."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from relay.cluster.revoke import revoke_user
from relay.sessions.continuity import PROGRESS_FLUSH_S
from relay.upstream.simulator.options import DEFAULT_REPLY_LINES
from relay.upstream.simulator.server import RunningSimulator
from relay.upstream.simulator.state import CallRecord
from tests.integration.conftest import MakeRelay
from tests.integration.continuity_helpers import (
    SPEECH,
    Live,
    Page,
    bridge_of,
    go_live,
    resume,
    state_of,
)
from tests.integration.interview_helpers import call
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import OPERATOR, wait_recording
from tests.integration.relay_harness import SIMULATOR_KEY, RelayHarness


def only_call(simulator: RunningSimulator) -> CallRecord:
    calls = list(simulator.state.calls.values())
    assert len(calls) == 1, [c.call_id for c in calls]
    return calls[0]


async def row(relay: RelayHarness, session_id: str) -> Any:
    rows = await relay.sql("SELECT * FROM interview_sessions WHERE id = $1", session_id)
    return rows[0]


async def a_full_turn(page: Page, since: int = 0) -> None:
    """The candidate spoke; the simulator transcribed it and its reply was generated."""

    def seen(kind: str) -> bool:
        return kind in [str(e.get("type")) for e in page.events[since:]]

    await wait_until(
        lambda: (
            seen("conversation.item.input_audio_transcription.completed")
            and seen("response.output_audio_transcript.done")
        ),
        25,
        "a full turn (transcription and reply)",
    )


# ---------------------------------------------------------------------- resumed
@pytest.mark.slow
async def test_a_dropped_page_resumes_the_same_interview_and_recording(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay()
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    assert live.resume_token.startswith("rs_") and len(live.resume_token) == 46
    await a_full_turn(live.page)
    call = only_call(simulator)
    spoken_before = call.conversation_items
    assert spoken_before >= 2  # the candidate's turn and the interviewer's reply
    bridge = bridge_of(relay, live.session_id)

    # The page's peer connection closes abruptly (a crash, a reload).
    await live.page.pc.close()
    await wait_until(lambda: bridge.state == "browser_lost", 10, "the browser leg lost")
    lost = time.monotonic()
    assert (await row(relay, live.session_id))["state"] == "active"
    away_s = 2.0
    await asyncio.sleep(away_s)  # time away, which must not be charged

    page = Page(payloads=SPEECH)
    pages.append(page)
    status, answer = await resume(
        relay, live.session_id, token=live.token, resume_token=live.resume_token, page=page
    )
    assert status == 201, answer
    assert answer["type"] == "answer" and answer["session_id"] == live.session_id
    assert answer["resume_token"].startswith("rs_") and answer["resume_token"] != live.resume_token
    await page.accept(answer["sdp"])
    await page.wait_connected()
    await page.wait_type("relay.session.time_left")

    # Told it is back, after how long, what was said so far, and the time left.
    greeting = page.relay_events()[:3]
    assert [e["type"] for e in greeting] == [
        "relay.session.reconnected",
        "relay.transcript",
        "relay.session.time_left",
    ]
    assert greeting[0]["gap_ms"] >= away_s * 1000
    items = greeting[1]["items"]
    assert [i["role"] for i in items] == ["user", "assistant"]
    assert items[0]["text"].startswith("(candidate spoke for")
    assert items[1]["text"] == DEFAULT_REPLY_LINES[0]
    assert 590 <= greeting[2]["seconds"] <= 600

    # The same upstream call and conversation: it goes on from where it was.
    await a_full_turn(page)
    assert only_call(simulator) is call and not call.hung_up
    assert call.conversation_items >= spoken_before + 2
    assert call.responses_started == 2
    assert call.events_of("response.created")  # (its second reply: the next line)
    transcripts = call.events_of("response.output_audio_transcript.done")
    assert transcripts[-1]["transcript"] == DEFAULT_REPLY_LINES[1]

    async with relay.client.delete(f"/api/sessions/{live.session_id}", headers=OPERATOR) as r:
        assert r.status == 204
    ended = await row(relay, live.session_id)
    assert ended["state"] == "ended" and ended["end_reason"] == "operator_hangup"
    wall = (ended["ended_at"] - ended["connected_at"]).total_seconds()
    gap = greeting[0]["gap_ms"] / 1000
    # Debited for the interview, not for the time away.
    assert ended["duration_seconds"] == pytest.approx(wall - gap, abs=1.0)
    assert ended["duration_seconds"] < wall - away_s + 1.0

    # One recording covers both parts, the time away silence, listed in its manifest.
    recording = await wait_recording(relay, live.session_id, "ready")
    assert recording["part"] == 1
    [away] = recording["disconnections"]
    assert away["resumed"] is True
    assert away["duration_s"] == pytest.approx(gap, abs=0.5)
    assert recording["duration_s"] == pytest.approx(wall, abs=1.0)
    assert bridge.connected_at is not None
    assert away["start_s"] == pytest.approx(lost - bridge.connected_at, abs=0.5)


async def test_after_the_grace_the_session_ends_browser_gone(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(overrides={"session": {"reconnect_grace_s": 1.0}})
    live = await go_live(relay)
    pages.append(live.page)
    call = only_call(simulator)
    await live.page.pc.close()

    async def gone() -> bool:
        return bool((await row(relay, live.session_id))["end_reason"] == "browser_gone")

    deadline = time.monotonic() + 10
    while not await gone():
        assert time.monotonic() < deadline, "not ended browser_gone within 10 s"
        await asyncio.sleep(0.1)
    await simulator.state.wait_for(lambda: call.hung_up, 5)
    page = Page()
    pages.append(page)
    status, body = await resume(
        relay, live.session_id, token=live.token, resume_token=live.resume_token, page=page
    )
    assert status == 410, body
    assert body["error"]["code"] == "session_ended"
    assert body["error"]["end_reason"] == "browser_gone"
    # What relay.session.ending would have told the page, for a page that missed it.
    assert body["error"]["ending"]["reason"] == "browser_gone", body
    assert "lost for too long" in body["error"]["ending"]["message"], body


async def test_the_end_of_the_grace_is_noticed_when_it_comes(
    make_relay: MakeRelay, pages: list[Page]
) -> None:
    """The monitor sleeps up to 5 s between its rounds when nothing is due sooner; a lost
    leg's grace ends at a time of its own, which it waits for from the loss on (it noticed
    it up to 5 s late: at its next round)."""
    grace_s = 1.0
    relay = await make_relay(
        overrides={"session": {"reconnect_grace_s": grace_s, "idle_media_timeout_s": 30.0}}
    )
    live = await go_live(relay)
    pages.append(live.page)
    bridge = bridge_of(relay, live.session_id)
    await live.page.pc.close()
    await wait_until(lambda: state_of(bridge) != "active", 10, "browser leg lost")
    lost_at = time.monotonic()
    await wait_until(lambda: state_of(bridge) not in ("browser_lost", "resuming"), 15, "grace over")
    assert time.monotonic() - lost_at < grace_s + 1.0
    # The row's closing write lands after the bridge has closed (CI cc100 read it first).
    await relay.wait_session_closed(live.session_id)
    assert (await row(relay, live.session_id))["end_reason"] == "browser_gone"


async def test_a_resume_token_is_single_use_rotates_and_needs_the_credential(
    make_relay: MakeRelay, pages: list[Page]
) -> None:
    relay = await make_relay()
    live = await go_live(relay)
    pages.append(live.page)
    bridge = bridge_of(relay, live.session_id)
    await live.page.pc.close()
    await wait_until(lambda: bridge.state == "browser_lost", 10, "the browser leg lost")
    probe = Page()
    pages.append(probe)
    sdp = await probe.offer()
    sid = live.session_id

    async def attempt(token: str | None, resume_token: str | None) -> tuple[int, str]:
        status, body = await resume(
            relay, sid, token=token, resume_token=resume_token, page=probe, sdp=sdp
        )
        return status, body.get("error", {}).get("code", "")

    someone = await relay.add_user()
    forged = "rs_" + "A" * 43
    # The credential alone, the token alone, someone else's credential, a wrong token.
    assert await attempt(live.token, None) == (400, "invalid_request")
    assert await attempt(None, live.resume_token) == (401, "missing_token")
    assert await attempt(someone, live.resume_token) == (404, "session_not_found")
    assert await attempt(live.token, forged) == (409, "resume_token_invalid")
    assert await attempt(live.token, "not-a-token") == (400, "invalid_request")
    assert state_of(bridge) == "browser_lost"  # none of them touched the interview

    page = Page()
    pages.append(page)
    status, first = await resume(
        relay, sid, token=live.token, resume_token=live.resume_token, page=page
    )
    assert status == 201, first
    await page.accept(first["sdp"])
    await wait_until(lambda: bridge.state == "active", 10, "resumed")
    # Spent: the same token cannot take the session again, even from the same person.
    assert await attempt(live.token, live.resume_token) == (409, "resume_token_invalid")
    assert state_of(bridge) == "active"
    # The new one can (a reload of the resumed page), once.
    again = Page()
    pages.append(again)
    status, second = await resume(
        relay, sid, token=live.token, resume_token=first["resume_token"], page=again
    )
    assert status == 201, second
    assert second["resume_token"] not in (first["resume_token"], live.resume_token)
    stored = (await row(relay, sid))["resume_token_hash"]
    assert stored is not None and len(stored) == 64
    await again.accept(second["sdp"])
    await wait_until(lambda: bridge.state == "active", 10, "resumed again")


async def test_an_invite_resumes_its_own_interview_only(
    make_relay: MakeRelay, pages: list[Page]
) -> None:
    """Two interviews of one candidate: the link of one, with the other's resume token,
    finds no session to resume (404, as for a stranger), whether this member holds it or
    the row says its holder is lost (the take-over path reads the row alone)."""
    relay = await make_relay()
    interviews = []
    for _ in range(2):
        status, body, _ = await call(
            relay,
            "POST",
            "/api/interviews",
            json={"candidate": {"email": "both@example.test"}, "instructions": "Interview."},
        )
        assert status == 201, body
        interviews.append(body["candidate_url"].split("#invite=", 1)[1])
    mine, other = interviews
    live = await go_live(relay, other)
    pages.append(live.page)
    bridge = bridge_of(relay, live.session_id)
    await live.page.pc.close()
    await wait_until(lambda: bridge.state == "browser_lost", 10, "the browser leg lost")
    probe = Page()
    pages.append(probe)
    sdp = await probe.offer()
    sid = live.session_id
    status, body = await resume(
        relay, sid, token=mine, resume_token=live.resume_token, page=probe, sdp=sdp
    )
    assert (status, body["error"]["code"]) == (404, "session_not_found"), body
    await relay.sql("UPDATE interview_sessions SET holder_lost_at = now() WHERE id = $1", sid)
    status, body = await resume(
        relay, sid, token=mine, resume_token=live.resume_token, page=probe, sdp=sdp
    )
    assert (status, body["error"]["code"]) == (404, "session_not_found"), body
    assert state_of(bridge) == "browser_lost"  # neither touched the interview
    assert (await row(relay, sid))["relay_instance"] == relay.services.instance_id


# Longer than an ICE check's interval (aioice: 4 to 6 s) with a margin on either side.
SILENT_S = 15.0


async def test_a_page_that_stops_sending_audio_is_charged_while_it_is_there(
    make_relay: MakeRelay, pages: list[Page]
) -> None:
    """A page that removes its microphone's track (no RTP; its connection up, its ICE
    checks going on) while the interviewer talks, then resumes on a new leg: the time it
    was there, listening, is charged. Its last audio packet is not when it went, or any
    client could stop its audio, resume, and have the interviewer's turns for free."""
    relay = await make_relay()
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    await live.page.wait_type("relay.session.time_left")
    bridge = bridge_of(relay, live.session_id)
    [transceiver] = live.page.pc.getTransceivers()
    transceiver.sender.replaceTrack(None)
    await asyncio.sleep(SILENT_S)  # it listens this long, sending no audio
    assert state_of(bridge) == "active"
    page = Page(payloads=SPEECH)
    pages.append(page)
    status, answer = await resume(
        relay, live.session_id, token=live.token, resume_token=live.resume_token, page=page
    )
    assert status == 201, answer
    await page.accept(answer["sdp"])
    await page.wait_connected()
    greeting = await page.wait_type("relay.session.reconnected")
    # Uncharged: since its last ICE check (at most about 6 s before) plus the new leg's
    # set-up, not the SILENT_S since its last packet (which alone is 15 s: the set-up
    # comes on top). The margin is for the set-up on a busy machine.
    assert greeting["gap_ms"] / 1000 < SILENT_S - 2, greeting


# ---------------------------------------------------------------------- endings
async def _end_by(
    reason: str, relay: RelayHarness, live: Live, simulator: RunningSimulator
) -> None:
    if reason == "operator":
        async with relay.client.delete(f"/api/sessions/{live.session_id}", headers=OPERATOR) as r:
            assert r.status == 204
    elif reason == "relay_shutdown":
        await relay.services.bridges.close_all()
    elif reason == "revoked":
        # The revocation's NOTIFY reaches members listening on the command channel.
        await asyncio.wait_for(relay.services.cluster.listener.connected.wait(), 10)
        email = (
            await relay.sql(
                "SELECT u.email FROM users u JOIN interview_sessions s ON s.user_id = u.id"
                " WHERE s.id = $1",
                live.session_id,
            )
        )[0]["email"]
        assert await revoke_user(relay.services.store, email) is not None
    elif reason == "upstream_error":
        call = only_call(simulator)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{simulator.base_url}/realtime/calls/{call.call_id}/hangup",
                headers={"Authorization": f"Bearer {SIMULATOR_KEY}"},
            ) as r,
        ):
            assert r.status == 200
    elif reason == "event_flood":
        for _ in range(3):
            live.page.channel.send("not an event")
    # time_up: the user's credit runs out by itself.


@pytest.mark.parametrize(
    "reason", ["operator", "relay_shutdown", "revoked", "upstream_error", "event_flood", "time_up"]
)
async def test_every_end_the_relay_decides_reaches_the_page_before_the_hang_up(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page], reason: str
) -> None:
    relay = await make_relay(
        overrides={
            # (upstream_error: a dropped upstream call that is not healed in place,
            # tests/integration/test_upstream_heal.py has the ending after failed attempts)
            "session": {"wrap_up_s": 0, "overrun_grace_s": 0, "upstream_reconnect_attempts": 0},
            "events": {"max_refused_events": 2, "on_refused_flood": "end_interview"},
        }
    )
    live = await go_live(relay, seconds=3 if reason == "time_up" else 600)
    pages.append(live.page)
    await live.page.wait_type("session.created")
    bridge = bridge_of(relay, live.session_id)
    await _end_by(reason, relay, live, simulator)

    ending = await live.page.wait_type("relay.session.ending", 10)
    assert ending["reason"] == reason and ending["message"]
    arrived, state = live.page.arrival_of("relay.session.ending")
    assert state == "connected"  # before the hang-up
    await bridge.wait_closed()
    decided = bridge.ended_at
    assert decided is not None and arrived - decided < 1.0
    await wait_until(
        lambda: live.page.pc.connectionState in ("closed", "failed"), 40, "the page hung up"
    )


async def test_connect_timeout_reaches_the_page_whose_leg_is_up(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(overrides={"session": {"connect_timeout_s": 2.0}})
    await simulator.state.update_faults({"ice_never_completes": True})
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    page = Page()
    pages.append(page)
    offer = {"session_id": body["session_id"], "type": "offer", "sdp": await page.offer()}
    async with relay.client.post(
        "/api/webrtc-exchange", json=offer, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    await page.accept(answer["sdp"])
    ending = await page.wait_type("relay.session.ending", 10)
    assert ending["reason"] == "connect_timeout"
    bridge = bridge_of(relay, body["session_id"])
    await bridge.wait_closed()
    arrived, _ = page.arrival_of("relay.session.ending")
    assert bridge.ended_at is not None and arrived - bridge.ended_at < 1.0


# ---------------------------------------------------------------------- the limit
async def test_time_left_and_the_wrap_up_arrive_before_the_limit(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(overrides={"session": {"wrap_up_s": 5.0, "overrun_grace_s": 0}})
    live = await go_live(relay, seconds=9, payloads=[])
    pages.append(live.page)
    bridge = bridge_of(relay, live.session_id)
    ending = await live.page.wait_type("relay.session.ending", 20)
    assert ending["reason"] == "time_up"
    events = live.page.relay_events()
    assert [e["type"] for e in events] == [
        "relay.session.time_left",
        "relay.session.wrap_up",
        "relay.session.ending",
    ]
    assert events[0]["seconds"] == 9 and events[1]["seconds"] == 5
    assert bridge.connected_at is not None
    limit = bridge.connected_at + 9
    wrap_up_at, _ = live.page.arrival_of("relay.session.wrap_up")
    assert wrap_up_at < limit - 4
    # The interviewer was asked to close, and did start a closing reply before the end.
    call = only_call(simulator)
    asked = [e for e in call.client_events if e.get("type") == "conversation.item.create"]
    assert asked and asked[0]["item"]["role"] == "system"
    assert "close" in asked[0]["item"]["content"][0]["text"]
    assert any(e.get("type") == "response.create" for e in call.client_events)
    started, _ = live.page.arrival_of("response.created")
    assert started < limit


@pytest.mark.slow
async def test_the_reply_in_progress_at_the_limit_is_not_cut(
    make_relay: MakeRelay, simulator: RunningSimulator, pages: list[Page]
) -> None:
    relay = await make_relay(overrides={"session": {"wrap_up_s": 0, "overrun_grace_s": 10.0}})
    live = await go_live(relay, seconds=8, payloads=[])
    pages.append(live.page)
    bridge = bridge_of(relay, live.session_id)
    # The candidate speaks so that the interviewer's reply runs across the limit.
    await wait_until(lambda: bridge.time_left() <= 4.5, 10, "4.5 s left")
    assert live.page.mic is not None
    live.page.mic.play(SPEECH)
    started = await live.page.wait_type("response.created", 10)
    response_id = started["response"]["id"]
    ending = await live.page.wait_type("relay.session.ending", 20)
    assert ending["reason"] == "time_up"
    stopped = [
        e
        for e in live.page.events
        if e.get("type") == "output_audio_buffer.stopped" and e.get("response_id") == response_id
    ]
    assert stopped, "the reply was cut before its audio ended"
    types = [str(e.get("type")) for e in live.page.events]
    assert types.index("output_audio_buffer.stopped") < types.index("relay.session.ending")
    await bridge.wait_closed()
    assert bridge.connected_at is not None and bridge.ended_at is not None
    limit = bridge.connected_at + 8
    stopped_at, _ = live.page.arrival_of("output_audio_buffer.stopped")
    assert stopped_at > limit  # it did run past the limit ...
    assert bridge.ended_at < limit + 10  # ... within the overrun
    assert bridge.ended_at - stopped_at < 1.0  # and the end came once it was over


async def test_the_holder_saves_the_seconds_used_every_progress_interval(
    make_relay: MakeRelay, pages: list[Page]
) -> None:
    """What a crash of the holder can leave uncharged is about ``session.progress_interval_s``
    (10 s by default): the seconds used reach the interview's row that often, plus the
    keeper's batching of every session's saves into one statement (``PROGRESS_FLUSH_S``)."""
    relay = await make_relay(overrides={"session": {"progress_interval_s": 1.0}})
    live = await go_live(relay)
    pages.append(live.page)
    saved: list[float] = []

    async def saves(n: int) -> bool:
        used = (await row(relay, live.session_id))["used_seconds"]
        if used and (not saved or used > saved[-1]):
            saved.append(float(used))
        return len(saved) >= n

    deadline = time.monotonic() + 15
    while not await saves(3):
        assert time.monotonic() < deadline, f"saves within 15 s: {saved}"
        await asyncio.sleep(0.1)
    # As the interview's clock counts them: about the interval and a flush apart (a loaded
    # machine's late flush allowed for), where the default would be 10 s or more.
    steps = [b - a for a, b in zip(saved, saved[1:], strict=False)]
    assert all(0.5 < step < 1.0 + PROGRESS_FLUSH_S + 3 for step in steps), saved
