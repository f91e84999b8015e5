"""Interviews end to end, as a hiring backend and a candidate use them: the whole relay
(real PostgreSQL), the simulator over real HTTP and WebRTC as the upstream, a real aiortc
browser joining through the invite of the candidate link."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

from relay.admission.users import UserRows
from relay.interviews.models import MAX_INSTRUCTIONS_CHARS
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    OPERATOR,
    bearer,
    call,
    create_interview,
    create_key,
    events_of,
    interview_status,
    invite_of,
    join,
    sim_control,
)
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import wait_recording
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness

RUBRIC = "Backend rubric 91c2: ask about idempotency keys, then about Postgres locks."


async def _until_status(
    relay: RelayHarness, interview_id: str, status: str, within: float = 15.0
) -> dict[str, Any]:
    """Poll the interview (as a backend without webhooks would) until it has ``status``."""
    deadline = time.monotonic() + within
    while True:
        seen = await interview_status(relay, interview_id)
        if seen["status"] == status:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"interview not {status} within {within}s: {seen}")
        await asyncio.sleep(0.05)


async def test_an_interviews_own_interviewer_reaches_the_mint_and_never_the_browser(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay()
    key = await create_key(relay)
    interview = await create_interview(
        relay, key, instructions=RUBRIC, voice="cedar", language="es", max_duration_s=600
    )
    assert interview["status"] == "scheduled" and interview["id"].startswith("iv_")
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        # What the mint asked the upstream for, read from the simulator's control API.
        seen = await sim_control(simulator.root_url, simulator.control_token, "/_sim/calls")
        session = seen["mints"][-1]["session"]
        assert session["instructions"].startswith(RUBRIC)
        assert "'es'" in session["instructions"]  # the language is said to the model too
        assert session["audio"]["output"]["voice"] == "cedar"
        assert session["audio"]["input"]["transcription"]["language"] == "es"
        # The upstream runs with them; the browser's event channel never carries them.
        created = await joined.browser.wait_type("session.created")
        call_record = simulator.state.last_call
        assert call_record is not None
        upstream_created = call_record.events_of("session.created")[0]
        assert upstream_created["session"]["instructions"].startswith(RUBRIC)
        assert "instructions" not in created["session"]
        assert "91c2" not in json.dumps(joined.browser.events)
        # Nor does the session answer the page got.
        assert "91c2" not in json.dumps(joined.session)
        # The budget is the interview's (its user was created with no seconds of its own).
        assert joined.session["max_duration_seconds"] == 600


async def test_the_invite_drives_a_whole_interview_to_completed_with_its_recording(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay, instructions=RUBRIC, metadata={"req": "R-42"})
    interview_id = interview["id"]
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        started = await _until_status(relay, interview_id, "in_progress")
        assert started["started_at"] is not None
        await wait_until(lambda: len(joined.browser.speaker.levels) > 25, 10, "interviewer audio")
        # The candidate hangs up (the page's End button) with the same invite.
        status, _, _ = await call(
            relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(invite)
        )
        assert status == 204
    done = await _until_status(relay, interview_id, "completed")
    assert done["end_reason"] == "hangup" and done["ended_at"] is not None
    assert [s["session_id"] for s in done["sessions"]] == [joined.session_id]
    assert done["used_seconds"] > 0 and done["metadata"] == {"req": "R-42"}
    assert done["candidate_url"] is None  # shown once, at creation

    ready = await wait_recording(relay, joined.session_id, "ready")
    done = await interview_status(relay, interview_id)
    assert [(r["id"], r["status"]) for r in done["recordings"]] == [(ready["id"], "ready")]
    # The recordings list filters by interview, and each item says whose it is.
    status, page, _ = await call(relay, "GET", f"/api/recordings?interview_id={interview_id}")
    assert status == 200, page
    [item] = page["items"]
    assert item["interview_id"] == interview_id
    assert item["candidate_email"] == "ana@example.test" and item["created_at"]
    status, audio, headers = await call(relay, "GET", done["recordings"][0]["audio_url"])
    assert status == 200 and headers["Content-Type"] == "audio/ogg"

    # Every change wrote its event in its own transaction, in order.
    types = [t for t, _ in await events_of(relay, interview_id)]
    assert types == ["interview.started", "interview.completed", "recording.ready"]
    completed = dict(await events_of(relay, interview_id))["interview.completed"]
    assert completed["end_reason"] == "hangup" and completed["duration_s"] > 0
    # Every time the relay answers with is in one form, UTC with Z, as its models write
    # them: the webhook's, the recording's, the interview's own.
    for when in (completed["ended_at"], item["created_at"], done["ended_at"], done["created_at"]):
        assert when.endswith("Z") and datetime.fromisoformat(when).tzinfo is not None, when
    # The candidate's own seconds were never touched (the interview's budget was spent).
    users = await relay.sql(
        "SELECT remaining_seconds FROM users WHERE email = $1", item["candidate_email"]
    )
    assert users[0]["remaining_seconds"] == 0
    # Its link no longer starts anything: said first, before the notice a page would
    # otherwise be asked to show (which could not help).
    for notice in (NOTICE_CONFIRMED, {}):
        status, body, _ = await call(
            relay, "POST", "/api/realtime-session", bearer(invite), json=notice
        )
        assert status == 403 and body["error"]["code"] == "interview_closed", body


async def test_the_invite_opens_its_interviews_candidate_endpoints_and_nothing_else(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    first = await create_interview(relay)
    other = await create_interview(relay, candidate={"email": "bo@example.test"})
    invite = invite_of(first)
    for method, path in (
        ("GET", "/api/interviews"),
        ("GET", f"/api/interviews/{first['id']}"),
        ("GET", "/api/recordings"),
        ("GET", "/api/stats"),
        ("POST", "/api/keys"),
    ):
        status, body, _ = await call(relay, method, path, bearer(invite), json={})
        assert status == 403, (method, path, body)
        assert body["error"]["code"] == "insufficient_scope", (method, path, body)
    # Another interview's session is as unknown to it as a made-up one.
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite_of(other)), json=NOTICE_CONFIRMED
    )
    assert status == 201, body
    theirs = body["session_id"]
    status, body, _ = await call(relay, "GET", f"/api/sessions/{theirs}", bearer(invite))
    assert status == 404 and body["error"]["code"] == "session_not_found"
    status, _, _ = await call(relay, "DELETE", f"/api/sessions/{theirs}", bearer(invite))
    assert status == 404
    status, body, _ = await call(
        relay,
        "POST",
        "/api/webrtc-exchange",
        bearer(invite),
        json={"session_id": theirs, "type": "offer", "sdp": "v=0\r\n"},
    )
    assert status in (400, 404), body
    # A made-up invite is a failed authentication like any unknown token.
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer("ri_" + "x" * 43), json=NOTICE_CONFIRMED
    )
    assert status == 401 and body["error"]["code"] == "invalid_token"


async def test_cancel_ends_the_live_session_and_closes_the_link(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    interview = await create_interview(relay)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await _until_status(relay, interview["id"], "in_progress")
        status, body, _ = await call(relay, "POST", f"/api/interviews/{interview['id']}/cancel")
        assert status == 200 and body["status"] == "cancelled", body
        bridge = relay.services.bridges.get(joined.session_id)
        assert bridge is not None
        await bridge.wait_closed()
        assert bridge.end_reason == "cancelled"
    rows = await relay.sql(
        "SELECT end_reason FROM interview_sessions WHERE id = $1", joined.session_id
    )
    assert rows[0]["end_reason"] == "cancelled"
    types = [t for t, _ in await events_of(relay, interview["id"])]
    assert types == ["interview.started", "interview.cancelled"]
    # Cancelling again: still cancelled; a closed interview cannot be.
    status, body, _ = await call(relay, "POST", f"/api/interviews/{interview['id']}/cancel")
    assert status == 200 and body["status"] == "cancelled"
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite), json=NOTICE_CONFIRMED
    )
    assert status == 403 and body["error"]["code"] == "interview_closed", body
    assert body["error"]["interview_status"] == "cancelled"


async def test_a_cancel_with_fields_is_refused_not_taken_for_a_plain_cancel(
    make_relay: MakeRelay,
) -> None:
    # A cancel takes no fields: one sent (a reason, say) is refused as every management
    # route refuses a field it does not know, and nothing is cancelled.
    relay = await make_relay()
    interview = await create_interview(relay)
    path = f"/api/interviews/{interview['id']}/cancel"
    status, body, _ = await call(relay, "POST", path, json={"reason": "position filled"})
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    assert body["error"]["message"].startswith("reason:"), body
    assert body["error"]["errors"][0]["field"] == "reason" and "request_id" in body, body
    status, body, _ = await call(relay, "POST", path, data=b"[]")
    assert status == 400 and body["error"]["code"] == "invalid_json", body
    status, body, _ = await call(relay, "GET", f"/api/interviews/{interview['id']}")
    assert body["status"] == "scheduled", body
    assert [t for t, _ in await events_of(relay, interview["id"])] == []
    status, body, _ = await call(relay, "POST", path, json={})
    assert status == 200 and body["status"] == "cancelled", body


async def test_an_interview_without_recording_records_nothing_and_asks_no_notice(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay, recording=False)
    invite = invite_of(interview)
    # The page asks what to show: nothing, for this interview.
    status, notice, _ = await call(relay, "GET", "/api/recording-notice", bearer(invite))
    assert status == 200 and notice == {"recording": False, "notice": "", "simulated": False}
    status, notice, _ = await call(relay, "GET", "/api/recording-notice", {})
    assert status == 200 and notice["recording"] is True and notice["notice"]
    # No notice to show: nothing of this interview is recorded.
    status, body, _ = await call(relay, "POST", "/api/realtime-session", bearer(invite))
    assert status == 201, body
    async with join(relay, invite) as joined:
        await wait_until(lambda: len(joined.browser.speaker.levels) > 25, 10, "audio")
        assert relay.services.recordings.live == {}
        await call(relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(invite))
    await _until_status(relay, interview["id"], "completed")
    assert await relay.sql("SELECT id FROM recordings") == []


async def test_expiry_and_a_failed_session_past_the_rejoin_window_close_interviews(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"interviews": {"rejoin_window_s": 0}})
    services = relay.services
    late = await create_interview(relay, candidate={"email": "late@example.test"})
    await relay.sql(
        "UPDATE interviews SET expires_at = now() - interval '1 second' WHERE id = $1", late["id"]
    )
    # Until housekeeping writes it, the link already refuses to start a session.
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite_of(late)), json=NOTICE_CONFIRMED
    )
    assert status == 403 and body["error"]["interview_status"] == "expired", body

    dropped = await create_interview(relay)
    async with join(relay, invite_of(dropped)) as joined:
        await _until_status(relay, dropped["id"], "in_progress")
        bridge = services.bridges.get(joined.session_id)
        assert bridge is not None
        # The upstream fails mid-interview: the candidate may rejoin, for rejoin_window_s.
        await bridge.close("upstream_error", state="failed")
    assert (await interview_status(relay, dropped["id"]))["status"] == "in_progress"

    closed = {c.id: c.status for c in await services.interviews.close_due()}
    assert closed == {late["id"]: "expired", dropped["id"]: "failed"}
    assert await services.interviews.close_due() == []  # each closed once
    assert [t for t, _ in await events_of(relay, late["id"])] == ["interview.expired"]
    failed = await events_of(relay, dropped["id"])
    assert [t for t, _ in failed] == ["interview.started", "interview.failed"]
    assert failed[1][1]["end_reason"] == "upstream_error"
    assert (await interview_status(relay, dropped["id"]))["end_reason"] == "upstream_error"


async def test_bad_interviews_are_refused_with_the_field_named(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"candidate": {"email": "x@example.test"}}, "instructions"),
        ({"candidate": {"email": "nope"}, "instructions": "x"}, "candidate.email"),
        ({"candidate": {"email": "x@e.t"}, "instructions": "a\u0000b"}, "instructions"),
        ({"candidate": {"email": "x@e.t"}, "instructions": "x", "language": "spanish"}, "language"),
        (
            {"candidate": {"email": "x@e.t"}, "instructions": "x", "max_duration_s": 0},
            "max_duration_s",
        ),
        (
            {"candidate": {"email": "x@e.t"}, "instructions": "x", "metadata": {"a": "b" * 9000}},
            "metadata",
        ),
        (
            {
                "candidate": {"email": "x@e.t"},
                "instructions": "x",
                "expires_at": "2001-01-01T00:00:00Z",
            },
            "expires_at",
        ),
        ({"candidate": {"email": "x@e.t"}, "instructions": "x", "colour": "red"}, "colour"),
        # JSON's types as they are: no "no" for false, no "60" for 60, no true for 1.
        ({"candidate": {"email": "x@e.t"}, "instructions": "x", "recording": "no"}, "recording"),
        ({"candidate": {"email": "x@e.t"}, "instructions": "x", "recording": 0}, "recording"),
        (
            {"candidate": {"email": "x@e.t"}, "instructions": "x", "max_duration_s": "60"},
            "max_duration_s",
        ),
        (
            {"candidate": {"email": "x@e.t"}, "instructions": "x", "max_duration_s": True},
            "max_duration_s",
        ),
    ]
    for spec, field in cases:
        status, body, headers = await call(relay, "POST", "/api/interviews", json=spec)
        assert status == 400, (spec, body)
        assert body["error"]["code"] == "invalid_request"
        assert body["error"]["errors"][0]["field"] == field, body
        assert body["request_id"] == headers["X-Request-ID"]
    # Nested deeper than JSON parsers take (200 levels): malformed JSON, not a field.
    deep = "[" * 250 + "]" * 250
    raw = '{"candidate": {"email": "x@e.t"}, "instructions": "x", "metadata": {"a": ' + deep + "}}"
    status, body, headers = await call(
        relay,
        "POST",
        "/api/interviews",
        data=raw,
        headers={**OPERATOR, "Content-Type": "application/json"},
    )
    assert status == 400 and body["error"]["code"] == "invalid_json", body
    assert "recursion limit" in body["error"]["message"]
    assert body["request_id"] == headers["X-Request-ID"]
    assert await relay.sql("SELECT id FROM interviews") == []


async def test_the_longest_instructions_fit_in_any_script(make_relay: MakeRelay) -> None:
    """50,000 characters of Japanese, sent as Python's json.dumps writes them (every one
    escaped, six bytes: 300 kB), create an interview, past server.max_body_bytes (64 KiB),
    which still bounds every other body."""
    relay = await make_relay()
    longest = "面接" * (MAX_INSTRUCTIONS_CHARS // 2)
    spec = {"candidate": {"email": "ja@example.test"}, "instructions": longest}
    assert len(json.dumps(spec)) > 4 * relay.services.settings.server.max_body_bytes
    status, body, _ = await call(relay, "POST", "/api/interviews", json=spec)
    assert status == 201, body
    rows = await relay.sql("SELECT instructions FROM interviews WHERE id = $1", body["id"])
    assert rows[0]["instructions"] == longest
    status, body, _ = await call(
        relay, "POST", "/api/interviews", json={**spec, "instructions": longest + "。"}
    )
    assert status == 400 and body["error"]["errors"][0]["field"] == "instructions", body
    status, body, _ = await call(relay, "POST", "/api/keys", json={"name": "k" * 70_000})
    assert status == 413 and body["error"]["code"] == "body_too_large", body


async def test_a_misspelt_filter_is_refused_not_ignored(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    await create_interview(relay)
    for path in ("/api/interviews?statuss=completed", "/api/users?emial=a@b.c", "/api/keys?x=1"):
        status, body, headers = await call(relay, "GET", path)
        assert status == 400 and body["error"]["code"] == "invalid_parameter", (path, body)
        assert body["error"]["errors"][0]["field"] == path.split("?")[1].split("=")[0]
        assert body["request_id"] == headers["X-Request-ID"]
    status, page, _ = await call(relay, "GET", "/api/interviews?status=scheduled&limit=5")
    assert status == 200 and len(page["items"]) == 1, page


async def test_one_candidate_whatever_the_case_of_their_email(make_relay: MakeRelay) -> None:
    """Ana@Example.TEST and ana@example.test are one person: one user, stored as first
    written, found by either spelling in every list."""
    relay = await make_relay()
    first = await create_interview(relay, candidate={"email": "Ana@Example.TEST"})
    second = await create_interview(relay, candidate={"email": "ana@example.test"})
    assert first["candidate"]["user_id"] == second["candidate"]["user_id"]
    assert second["candidate"]["email"] == "Ana@Example.TEST"
    assert len(await relay.sql("SELECT id FROM users")) == 1
    for path in ("/api/users", "/api/interviews", "/api/sessions", "/api/recordings"):
        status, page, _ = await call(relay, "GET", f"{path}?email=ANA@example.Test")
        assert status == 200, (path, page)
        if path == "/api/users":
            assert [u["id"] for u in page["items"]] == [first["candidate"]["user_id"]]
        elif path == "/api/interviews":
            assert {i["id"] for i in page["items"]} == {first["id"], second["id"]}
    # The demo user's upsert (every start) finds an address in another case too, rather
    # than failing on the index.
    store = relay.services.store
    again = await UserRows(store).create_user("ANA@EXAMPLE.TEST", "d" * 64, 60, replace=True)
    assert again.id == first["candidate"]["user_id"] and again.email == "Ana@Example.TEST"
    # The migration's index keeps a second spelling out whoever writes it.
    users = await relay.sql(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'users_email_any_case'"
    )
    assert "UNIQUE" in users[0]["indexdef"]


async def test_lists_filter_and_page_with_cursors(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    ids = [
        (await create_interview(relay, candidate={"email": f"c{i}@example.test"}))["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await call(relay, "GET", "/api/interviews" + query)
        assert status == 200, page
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once
    status, page, _ = await call(relay, "GET", "/api/interviews?email=c3@example.test")
    assert [i["id"] for i in page["items"]] == [ids[3]]
    status, page, _ = await call(relay, "GET", "/api/users?email=c3@example.test")
    [user] = page["items"]
    assert user["interviews"] == 1 and user["remaining_seconds"] == 0
    status, body, _ = await call(relay, "GET", "/api/interviews?cursor=bm90LWEtY3Vyc29y")
    assert status == 400 and body["error"]["code"] == "invalid_cursor"
    status, body, _ = await call(relay, "GET", "/api/interviews?limit=500")
    assert status == 400 and body["error"]["code"] == "invalid_parameter"
    # Sessions list by interview and state.
    status, created, _ = await call(
        relay,
        "POST",
        "/api/realtime-session",
        bearer(invite_of(await create_interview(relay))),
        json=NOTICE_CONFIRMED,
    )
    assert status == 201
    status, page, _ = await call(relay, "GET", "/api/sessions?status=pending")
    assert [s["session_id"] for s in page["items"]] == [created["session_id"]]
    assert page["items"][0]["candidate_email"] == "ana@example.test"
    status, page, _ = await call(relay, "GET", f"/api/sessions?interview_id={ids[0]}")
    assert page["items"] == []


async def test_cancel_on_one_member_ends_the_session_another_member_holds(
    make_relay: MakeRelay,
) -> None:
    holder = await make_relay(instance_id="member-a")
    other = await make_relay(instance_id="member-b")
    interview = await create_interview(other)
    async with join(holder, invite_of(interview)) as joined:
        await _until_status(other, interview["id"], "in_progress")
        bridge = holder.services.bridges.get(joined.session_id)
        assert bridge is not None
        status, body, _ = await call(other, "POST", f"/api/interviews/{interview['id']}/cancel")
        assert status == 200 and body["status"] == "cancelled", body
        # The command travels by PostgreSQL NOTIFY, sent when the cancel commits.
        await asyncio.wait_for(bridge.wait_closed(), 5)
        assert bridge.end_reason == "cancelled"
