"""A new candidate link (POST /api/interviews/{id}/invite, ``relay interviews new-link``):
the new invite opens the interview, the old one nothing, from the answer on; a session
already live keeps running and is resumed with the new invite only. The whole relay (real
PostgreSQL), a real aiortc browser joining through the invite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay.media.bridge import Bridge
from tests.integration.conftest import MakeRelay
from tests.integration.continuity_helpers import Page, resume
from tests.integration.interview_helpers import (
    bearer,
    call,
    create_interview,
    create_key,
    events_of,
    interview_status,
    invite_of,
    join,
)
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness
from tests.support.relay_cli import foreign_free_environ, run_relay


async def _start(relay: RelayHarness, invite: str) -> tuple[int, Any]:
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite), json=NOTICE_CONFIRMED
    )
    return status, body


def _state(bridge: Bridge) -> str:
    # A call, not an attribute: mypy would keep ``bridge.state`` narrowed across awaits.
    return bridge.state


async def _invite_hash(relay: RelayHarness, interview_id: str) -> str:
    rows = await relay.sql("SELECT invite_token_hash FROM interviews WHERE id = $1", interview_id)
    return str(rows[0]["invite_token_hash"])


async def test_a_new_link_opens_the_interview_and_the_old_one_nothing(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay)
    old = invite_of(interview)
    path = f"/api/interviews/{interview['id']}/invite"
    status, body, headers = await call(relay, "POST", path)
    assert status == 200, body
    assert body["id"] == interview["id"] and body["status"] == "scheduled"
    assert (
        body["candidate_url"].startswith("http://")
        and body["candidate_url"].split("#invite=", 1)[0]
        == interview["candidate_url"].split("#invite=", 1)[0]
    )
    new = invite_of(body)
    assert new != old
    # The old link is a failed authentication like any unknown token, for every use.
    status, refused = await _start(relay, old)
    assert status == 401 and refused["error"]["code"] == "invalid_token", refused
    status, refused, _ = await call(relay, "GET", "/api/sessions/x", bearer(old))
    assert status == 401, refused
    status, started = await _start(relay, new)
    assert status == 201, started
    rows = await relay.sql(
        "SELECT interview_id FROM interview_sessions WHERE id = $1", started["session_id"]
    )
    assert rows[0]["interview_id"] == interview["id"]
    # Shown in that answer only; the interview is otherwise unchanged.
    shown = await interview_status(relay, interview["id"])
    assert shown["candidate_url"] is None and shown["status"] == "scheduled"
    assert await events_of(relay, interview["id"]) == []


async def test_closed_unknown_and_malformed_interviews_get_no_link(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    cancelled = await create_interview(relay)
    status, _, _ = await call(relay, "POST", f"/api/interviews/{cancelled['id']}/cancel")
    assert status == 200
    late = await create_interview(relay, candidate={"email": "late@example.test"})
    # Past expires_at, before housekeeping writes it: already closed for a new link.
    await relay.sql(
        "UPDATE interviews SET expires_at = now() - interval '1 second' WHERE id = $1", late["id"]
    )
    for interview, seen in ((cancelled, "cancelled"), (late, "expired")):
        before = await _invite_hash(relay, interview["id"])
        status, body, headers = await call(
            relay, "POST", f"/api/interviews/{interview['id']}/invite"
        )
        assert status == 409, body
        assert body["error"]["code"] == "interview_not_open"
        assert body["error"]["interview_status"] == seen, body
        assert body["request_id"] == headers["X-Request-ID"]
        assert await _invite_hash(relay, interview["id"]) == before
    for missing in ("iv_" + "0" * 32, "iv_nope", "x" * 300):
        status, body, headers = await call(relay, "POST", f"/api/interviews/{missing}/invite")
        assert status == 404 and body["error"]["code"] == "interview_not_found", body
        assert body["request_id"] == headers["X-Request-ID"]


async def test_a_read_key_cannot_and_a_retry_with_the_same_key_replaces_once(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay)
    path = f"/api/interviews/{interview['id']}/invite"
    reader = await create_key(relay, scope="read", name="reports")
    status, body, _ = await call(relay, "POST", path, bearer(reader))
    assert status == 403 and body["error"]["code"] == "insufficient_scope", body

    admin = await create_key(relay)
    retried = {**bearer(admin), "Idempotency-Key": "new-link-1"}
    status, first, _ = await call(relay, "POST", path, retried)
    assert status == 200, first
    stored = await _invite_hash(relay, interview["id"])
    status, second, _ = await call(relay, "POST", path, retried)
    assert status == 200 and second["candidate_url"] == first["candidate_url"], second
    # One replacement: the link of the first answer is the one that works.
    assert await _invite_hash(relay, interview["id"]) == stored
    status, body = await _start(relay, invite_of(second))
    assert status == 201, body
    # Another key is another request: another link, and the one before stops.
    status, third, _ = await call(relay, "POST", path, {**bearer(admin), "Idempotency-Key": "2"})
    assert status == 200 and third["candidate_url"] != first["candidate_url"]
    status, body = await _start(relay, invite_of(first))
    assert status == 401, body


async def test_a_live_session_keeps_running_and_resumes_with_the_new_link_only(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay)
    old = invite_of(interview)
    async with join(relay, old) as joined:
        assert joined.resume_token is not None
        status, body, _ = await call(relay, "POST", f"/api/interviews/{interview['id']}/invite")
        assert status == 200, body
        new = invite_of(body)
        bridge = relay.services.bridges.get(joined.session_id)
        assert bridge is not None and _state(bridge) == "active"
        # The page's connection drops: it resumes with the credential it holds and its
        # resume token. The old invite no longer authenticates, whatever it asks.
        await joined.browser.pc.close()
        await wait_until(lambda: bridge.state == "browser_lost", 10, "the browser leg lost")
        page = Page()
        try:
            sdp = await page.offer()
            status, refused = await resume(
                relay,
                joined.session_id,
                token=old,
                resume_token=joined.resume_token,
                page=page,
                sdp=sdp,
            )
            assert status == 401 and refused["error"]["code"] == "invalid_token", refused
            status, refused, _ = await call(
                relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(old)
            )
            assert status == 401, refused
            assert _state(bridge) == "browser_lost"  # neither touched the session
            # The same resume token with the new invite takes the session back.
            status, answer = await resume(
                relay,
                joined.session_id,
                token=new,
                resume_token=joined.resume_token,
                page=page,
                sdp=sdp,
            )
            assert status == 201, answer
            await page.accept(answer["sdp"])
            await wait_until(lambda: bridge.state == "active", 10, "resumed")
        finally:
            await page.close()
    assert (await interview_status(relay, interview["id"]))["status"] == "in_progress"


async def test_the_cli_prints_a_link_that_works(make_relay: MakeRelay, tmp_path: Path) -> None:
    relay = await make_relay()
    interview = await create_interview(relay)
    env = foreign_free_environ()
    env["DATABASE_URL"] = relay.database_url
    code, out, err = await run_relay(
        "interviews",
        "new-link",
        "--id",
        interview["id"],
        "--public-url",
        "https://interviews.example.test/",
        env=env,
        cwd=tmp_path,
    )
    assert code == 0, err
    url = out.strip().splitlines()[-1]
    assert url.startswith("https://interviews.example.test/#invite=ri_"), out
    status, body = await _start(relay, url.split("#invite=", 1)[1])
    assert status == 201, body
    status, body = await _start(relay, invite_of(interview))
    assert status == 401, body
    status, _, _ = await call(relay, "POST", f"/api/interviews/{interview['id']}/cancel")
    assert status == 200
    code, out, err = await run_relay(
        "interviews", "new-link", "--id", interview["id"], env=env, cwd=tmp_path
    )
    assert code == 1 and "is cancelled" in err, (out, err)
    code, out, err = await run_relay(
        "interviews", "new-link", "--id", "iv_nope", env=env, cwd=tmp_path
    )
    assert code == 1 and "no interview iv_nope" in err, (out, err)
