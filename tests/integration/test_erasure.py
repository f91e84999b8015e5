"""Erasure (docs/api.md, "Erasure"): DELETE /api/interviews/{id} and DELETE
/api/users/{id} leave nothing of the interview or the candidate behind: rows, the
conversation's text, recordings' files (local disk or the object store), webhook events
and their delivery log; a live session ends first; an object store that is down keeps
the rows until the files are gone. Real PostgreSQL, real WebRTC peers, SeaweedFS as the
object store, the relay's own API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from relay import app as relay_app
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    bearer,
    call,
    create_interview,
    create_key,
    invite_of,
    join,
)
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import TimedBrowser, wait_recording
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness
from tests.integration.test_idempotency_claims import relay_behind
from tests.integration.test_recording_s3 import (
    keys,
    make_bucket,
    record,
    s3_overrides,
)
from tests.support.reply_cutter import ReplyCutter
from tests.support.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedServer

EMAIL = "ana@example.test"
# Webhooks to a loopback port nobody listens on: every event gets a delivery that fails
# and is retried (a delivery log with attempts), as a receiver that is down would have.
HOOKS: dict[str, Any] = {"allow_insecure_loopback": True, "poll_interval_s": 0.1}


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


async def _count(relay: RelayHarness, sql: str, *args: Any) -> int:
    rows = await relay.sql(sql, *args)
    return int(rows[0]["n"])


async def _erased(relay: RelayHarness, table: str, column: str, key: Any) -> bool:
    rows = await relay.sql(f"SELECT 1 FROM {table} WHERE {column} = $1", key)
    return not rows


async def _erase_until(relay: RelayHarness, table: str, column: str, key: Any) -> None:
    """Run the erasure's housekeeping pass until the row is gone (a live session's end and
    its recording's finalisation come first), bounded."""
    deadline = time.monotonic() + 30
    while not await _erased(relay, table, column, key):
        if time.monotonic() > deadline:
            raise AssertionError(f"{table} {key} not erased within 30 s")
        await relay.services.erasure.erase_due()
        await asyncio.sleep(0.05)


async def _everything_of(relay: RelayHarness, interview_id: str, user_id: int) -> dict[str, int]:
    counts = await relay.sql(
        """SELECT
             (SELECT count(*) FROM interviews WHERE id = $1) AS interviews,
             (SELECT count(*) FROM interview_sessions WHERE user_id = $2) AS sessions,
             (SELECT count(*) FROM session_transcript t JOIN interview_sessions s
                 ON s.id = t.session_id WHERE s.user_id = $2) AS transcript,
             (SELECT count(*) FROM recordings r JOIN interview_sessions s
                 ON s.id = r.session_id WHERE s.user_id = $2) AS recordings,
             (SELECT count(*) FROM webhook_events
                 WHERE interview_id = $1 AND type <> 'interview.deleted') AS events""",
        interview_id,
        user_id,
    )
    return {k: int(v) for k, v in dict(counts[0]).items()}


async def test_a_live_interview_deleted_ends_its_session_and_leaves_nothing_of_it(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"webhooks": HOOKS})
    status, _, _ = await call(
        relay, "POST", "/api/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}
    )
    assert status == 201
    interview = await create_interview(
        relay, candidate={"email": EMAIL, "name": "Ana"}, metadata={"requisition": "R-42"}
    )
    interview_id, invite = interview["id"], invite_of(interview)
    user_id = interview["candidate"]["user_id"]
    recordings_dir = Path(relay.services.settings.recording_path)
    async with join(relay, invite) as joined:
        session_id = joined.session_id
        # Recorded audio, an interview.started event with its (failing) deliveries.
        await wait_until(
            lambda: bool(
                (r := relay.services.recordings.live)
                and any(any(x.packets_written.values()) for x in r.values())
            ),
            10,
            "audio recorded",
        )
        deliveries = "SELECT count(*) AS n FROM webhook_attempts a JOIN webhook_deliveries d"
        deliveries += " ON d.id = a.delivery_id WHERE d.interview_id = $1"
        deadline = time.monotonic() + 15
        while await _count(relay, deliveries, interview_id) == 0:
            assert time.monotonic() < deadline, "interview.started was never attempted"
            await asyncio.sleep(0.05)
        assert (recordings_dir / session_id).is_dir()

        status, body, _ = await call(relay, "DELETE", f"/api/interviews/{interview_id}")
        assert status == 204, body
        # Gone for the API at once, while the session still ends.
        status, body, headers = await call(relay, "GET", f"/api/interviews/{interview_id}")
        assert status == 404 and body["error"]["code"] == "interview_not_found", body
        assert body["request_id"] == headers["X-Request-ID"]
        status, body, _ = await call(relay, "DELETE", f"/api/interviews/{interview_id}")
        assert status == 404 and body["error"]["code"] == "interview_not_found", body
        listed = await call(relay, "GET", f"/api/interviews?email={EMAIL}")
        assert listed[1]["items"] == []
        # The session ends on the member holding it, as a cancel ends it.
        await wait_until(
            lambda: relay.services.bridges.get(session_id) is None, 15, "the session ended"
        )
    # The link opens nothing any more: an unknown token.
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite), json=NOTICE_CONFIRMED
    )
    assert status == 401 and body["error"]["code"] == "invalid_token", body

    await _erase_until(relay, "interviews", "id", interview_id)
    assert await _everything_of(relay, interview_id, user_id) == {
        "interviews": 0,
        "sessions": 0,
        "transcript": 0,
        "recordings": 0,
        "events": 0,
    }
    assert not await asyncio.to_thread((recordings_dir / session_id).exists)
    # The deliveries and the delivery log of its events went with them; interview.deleted
    # is the one event left of it, and carries nothing of the candidate.
    events = await relay.sql(
        "SELECT type, data FROM webhook_events WHERE interview_id = $1", interview_id
    )
    assert [e["type"] for e in events] == ["interview.deleted"]
    data = json.loads(events[0]["data"])
    assert set(data) == {"interview_id", "deleted_at"} and data["interview_id"] == interview_id
    left = await relay.sql(
        """SELECT count(*) AS n FROM webhook_deliveries d JOIN webhook_events e
           ON e.id = d.event_id WHERE d.interview_id = $1 AND e.type <> 'interview.deleted'""",
        interview_id,
    )
    assert left[0]["n"] == 0
    everything = await relay.sql("SELECT data::text AS d FROM webhook_events")
    assert not any(EMAIL in r["d"] or session_id in r["d"] for r in everything)
    # The candidate's user stays (DELETE /api/users/{id} erases it).
    status, body, _ = await call(relay, "GET", f"/api/users/{user_id}")
    assert status == 200 and body["email"] == EMAIL, body
    # Housekeeping again: nothing to do, nothing written twice.
    assert await relay.services.erasure.erase_due() == 0
    again = await relay.sql(
        "SELECT count(*) AS n FROM webhook_events WHERE interview_id = $1", interview_id
    )
    assert again[0]["n"] == 1


async def test_wrong_scope_and_unknown_ids_are_refused_with_the_request_id(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(relay)
    user_id = interview["candidate"]["user_id"]
    read = bearer(await create_key(relay, "read"))
    for path in (f"/api/interviews/{interview['id']}", f"/api/users/{user_id}"):
        status, body, _ = await call(relay, "DELETE", path, read)
        assert status == 403 and body["error"]["code"] == "insufficient_scope", body
    # Nothing was erased: the interview reads as it was.
    status, body, _ = await call(relay, "GET", f"/api/interviews/{interview['id']}")
    assert status == 200 and body["status"] == "scheduled", body
    for path, code in (
        ("/api/interviews/iv_" + "0" * 32, "interview_not_found"),
        ("/api/interviews/not-an-id", "interview_not_found"),
        ("/api/users/987654321", "user_not_found"),
        ("/api/users/x1", "user_not_found"),
    ):
        status, body, headers = await call(relay, "DELETE", path)
        assert status == 404 and body["error"]["code"] == code, (path, body)
        assert body["request_id"] == headers["X-Request-ID"]


async def test_a_candidate_erased_while_the_object_store_is_down_loses_every_file_once_it_is_back(
    make_relay: MakeRelay,
    seaweedfs: SeaweedServer,
    s3_credentials: None,
) -> None:
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    relay = await make_relay(overrides=s3_overrides(endpoint))
    browsers: list[TimedBrowser] = []
    try:
        # A token holder's session of no interview, recorded into the object store, and
        # an interview of the same candidate.
        session_id = await record(relay, browsers)
        item = await wait_recording(relay, session_id, "ready")
        assert any(session_id in key for key in await keys(endpoint))
    finally:
        for browser in browsers:
            await browser.peer.close()
    user_id = item["user_id"]
    email = item["candidate_email"]
    interview = await create_interview(relay, candidate={"email": email, "name": "Bo"})

    await asyncio.to_thread(seaweedfs.stop)
    status, body, _ = await call(relay, "DELETE", f"/api/users/{user_id}")
    assert status == 204, body
    # Gone for the API at once; its address cannot be invited while it is erased.
    status, body, _ = await call(relay, "GET", f"/api/users/{user_id}")
    assert status == 404 and body["error"]["code"] == "user_not_found", body
    status, body, _ = await call(relay, "GET", f"/api/interviews/{interview['id']}")
    assert status == 404, body
    status, body, _ = await call(
        relay,
        "POST",
        "/api/interviews",
        json={"candidate": {"email": email}, "instructions": "Again."},
    )
    assert status == 409 and body["error"]["code"] == "user_being_erased", body
    # Its recording and session, whose rows wait for the store, are neither listed nor
    # served from the erasure's answer on.
    for path in (
        f"/api/recordings/{item['id']}",
        f"/api/recordings/{item['id']}/audio",
        f"/api/recordings/{item['id']}/transcript",
    ):
        status, body, _ = await call(relay, "GET", path)
        assert status == 404 and body["error"]["code"] == "recording_not_found", (path, body)
    for path in ("/api/recordings", "/api/sessions", f"/api/recordings?email={email}"):
        status, body, _ = await call(relay, "GET", path)
        assert status == 200 and body["items"] == [], (path, body)
    # The interview had no files: erased by the request itself.
    assert await _erased(relay, "interviews", "id", interview["id"])
    # The store does not answer: the files stay, and so does every row that says so (the
    # recording is not marked deleted). Retried, nothing changes.
    for _ in range(2):
        assert await relay.services.erasure.erase_due() == 0
        rows = await relay.sql("SELECT status FROM recordings WHERE id = $1", item["id"])
        assert [r["status"] for r in rows] == ["ready"]
    assert not await _erased(relay, "users", "id", user_id)

    # The store is back: the next pass removes the objects, then the rows.
    await asyncio.to_thread(seaweedfs.start)
    await _erase_until(relay, "users", "id", user_id)
    assert await keys(endpoint) == []
    assert await _everything_of(relay, interview["id"], user_id) == {
        "interviews": 0,
        "sessions": 0,
        "transcript": 0,
        "recordings": 0,
        "events": 0,
    }
    recording_events = await relay.sql(
        "SELECT count(*) AS n FROM webhook_events WHERE data->>'session_id' = $1", session_id
    )
    assert recording_events[0]["n"] == 0
    status, body, _ = await call(relay, "DELETE", f"/api/users/{user_id}")
    assert status == 404 and body["error"]["code"] == "user_not_found", body
    # The address is free again: a new candidate of that address is a new user.
    fresh = await create_interview(relay, candidate={"email": email})
    assert fresh["candidate"]["user_id"] != user_id


def _files(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in ("recording.ogg", "transcript.jsonl", "manifest.json"):
        (directory / name).write_bytes(b"x")
    return directory


async def _session_with_recording(
    relay: RelayHarness,
    interview: dict[str, Any],
    session_id: str,
    recording_id: str,
    location: Path,
    instance: str,
) -> None:
    """A session of the interview that ended, with a ready recording at ``location``."""
    await relay.sql(
        """INSERT INTO interview_sessions (id, user_id, request_id, state, model, dialect,
               relay_instance, expires_at, interview_id)
           VALUES ($1, $2, 'req_e', 'ended', 'm', 'ga', $3, now(), $4)""",
        session_id,
        interview["candidate"]["user_id"],
        instance,
        interview["id"],
    )
    await relay.sql(
        """INSERT INTO recordings (id, session_id, status, storage, location, relay_instance)
           VALUES ($1, $2, 'ready', 'local', $3, $4)""",
        recording_id,
        session_id,
        str(location),
        instance,
    )


async def test_files_another_member_holds_or_that_cannot_be_removed_keep_the_rows_until_gone(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    here_dir, there_dir = tmp_path / "here", tmp_path / "there"
    here = await make_relay(overrides={"recording": {"directory": str(here_dir)}})
    there = await make_relay(
        overrides={"recording": {"directory": str(there_dir)}}, instance_id="member-b"
    )
    interview = await create_interview(here)
    # Files on member-b's disk, which this member does not see (another machine).
    on_b = await asyncio.to_thread(_files, there_dir / "is_on_b")
    unseen = tmp_path / "not-on-this-machine" / "is_on_b"
    # A file where the recording's directory belongs: its removal fails.
    broken = here_dir / "is_broken"
    await asyncio.to_thread(broken.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(broken.write_bytes, b"not a directory")
    await _session_with_recording(here, interview, "is_on_b", "rec_" + "b" * 16, unseen, "member-b")
    await _session_with_recording(
        here, interview, "is_broken", "rec_" + "c" * 16, broken, "test-instance"
    )
    # member-b is alive (its heartbeat), so only it can reach its disk.
    deadline = time.monotonic() + 10
    while not await here.services.erasure._is_live_member("member-b"):
        assert time.monotonic() < deadline, "member-b never beat"
        await asyncio.sleep(0.05)

    status, body, _ = await call(here, "DELETE", f"/api/interviews/{interview['id']}")
    assert status == 204, body
    for _ in range(2):  # retried: the rows stay while their files do
        assert await here.services.erasure.erase_due() == 0
        statuses = dict(
            (r["id"][-1], r["status"]) for r in await here.sql("SELECT id, status FROM recordings")
        )
        assert statuses["c"] == "ready"
        # (member-b's own housekeeping may have run meanwhile: never deleted with files.)
        assert (statuses["b"] == "deleted") != await asyncio.to_thread(on_b.exists)
    assert not await _erased(here, "interviews", "id", interview["id"])

    # member-b's own pass removes its files; the broken one still holds the rows back.
    assert await there.services.erasure.erase_due() == 0
    assert not await asyncio.to_thread(on_b.exists)
    statuses = dict(
        (r["id"][-1], r["status"]) for r in await here.sql("SELECT id, status FROM recordings")
    )
    assert statuses == {"b": "deleted", "c": "ready"}
    # The disk is mended: the next pass finishes.
    await asyncio.to_thread(broken.unlink)
    await asyncio.to_thread(_files, broken)
    await _erase_until(here, "interviews", "id", interview["id"])
    assert not await asyncio.to_thread(broken.exists)
    assert await _everything_of(here, interview["id"], interview["candidate"]["user_id"]) == {
        "interviews": 0,
        "sessions": 0,
        "transcript": 0,
        "recordings": 0,
        "events": 0,
    }


async def test_a_member_back_after_its_recordings_session_was_erased_removes_the_files(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    """A member that died while recording: its session's interview was erased meanwhile
    (the dead member's files out of reach, its rows deleted). Back, it finds the
    unfinished recording and removes it instead of finalising (and uploading) it."""
    root = tmp_path / "recordings"
    relay = await make_relay(overrides={"recording": {"directory": str(root)}})
    left = root / "is_erased_meanwhile"
    await asyncio.to_thread(left.mkdir, parents=True)
    meta: dict[str, Any] = {
        "recording_id": "rec_" + "d" * 16,
        "session_id": "is_erased_meanwhile",
        "instance_id": "test-instance",
        "part": 1,
    }
    await asyncio.to_thread((left / "meta.json").write_text, json.dumps(meta))
    await asyncio.to_thread((left / "candidate.rlog").write_bytes, b"\x00" * 64)
    recordings = relay.services.recordings
    await recordings.recover()
    assert not await asyncio.to_thread(left.exists)
    assert await relay.sql("SELECT id FROM recordings") == []


async def test_a_candidate_with_an_interview_and_nothing_in_the_way_is_gone_when_204_answers(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE /api/users/{id} finishes what it can at once, as DELETE /api/interviews/{id}
    does: the user's interviews (no session, no file) and then the user's row, before the
    204, not at housekeeping's next round (held off here, so that it cannot do it)."""
    monkeypatch.setattr(relay_app, "HOUSEKEEPING_INTERVAL_S", 3600.0)
    relay = await make_relay()
    interview = await create_interview(relay, candidate={"email": EMAIL, "name": "Ana"})
    user_id = interview["candidate"]["user_id"]

    status, body, _ = await call(relay, "DELETE", f"/api/users/{user_id}")
    assert status == 204, body
    assert await _erased(relay, "interviews", "id", interview["id"])
    assert await _erased(relay, "users", "id", user_id)
    events = await relay.sql(
        "SELECT type FROM webhook_events WHERE interview_id = $1", interview["id"]
    )
    assert [e["type"] for e in events] == ["interview.deleted"]


async def test_an_erased_users_token_opens_nothing_from_the_204_on(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token stops at the answer, as a deactivation's does (PATCH, `relay users delete`
    evict the cache themselves): not only once the database's notification has reached
    this member's caches and Redis, which is asynchronous (held back here)."""
    relay = await make_relay()
    token = await relay.add_user(email=EMAIL)
    status, created, _ = await relay.create_session(token)  # now in the user cache
    assert status == 201, created
    (user,) = await relay.sql("SELECT id FROM users WHERE email = $1", EMAIL)
    cache = relay.services.cache

    async def held_back(token_hashes: Any) -> bool:
        return True

    monkeypatch.setattr(cache, "forget_locally", lambda token_hashes: None)
    monkeypatch.setattr(cache, "evict_shared", held_back)
    # The cluster's revoke_user command (which evicts too) arrives late as well.
    listener = relay.services.cluster.listener
    handler = listener._handler

    async def without_revocations(message: dict[str, Any]) -> None:
        if message.get("op") != "revoke_user":
            await handler(message)

    monkeypatch.setattr(listener, "_handler", without_revocations)

    status, body, _ = await call(relay, "DELETE", f"/api/users/{user['id']}")
    assert status == 204, body
    status, body, _ = await relay.create_session(token)
    assert status == 401 and body["error"]["code"] == "invalid_token", body


async def test_a_delete_whose_mark_committed_with_its_reply_lost_answers_204(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """The store retries a marking whose COMMIT landed while its reply was lost: the retry
    finds the interview marked by this very request, which is erased (204), not unknown
    (404, and nothing of it erased by the request)."""
    relay = await relay_behind(make_relay, cutter, database_url)
    interview = await create_interview(relay)
    cutter.arm(b"erase_requested_at = now()", then=b"COMMIT")
    status, body, _ = await call(relay, "DELETE", f"/api/interviews/{interview['id']}")
    assert cutter.cuts == 1
    assert status == 204, body
    assert await _erased(relay, "interviews", "id", interview["id"])


async def test_a_user_delete_whose_mark_committed_with_its_reply_lost_answers_204(
    cutter: ReplyCutter, make_relay: MakeRelay, database_url: str
) -> None:
    """As for an interview: the user marked by this very request is erased (204)."""
    relay = await relay_behind(make_relay, cutter, database_url)
    interview = await create_interview(relay)
    user_id = interview["candidate"]["user_id"]
    cutter.arm(b"revoked_at = COALESCE(revoked_at, now())", then=b"COMMIT")
    status, body, _ = await call(relay, "DELETE", f"/api/users/{user_id}")
    assert cutter.cuts == 1
    assert status == 204, body
    assert await _erased(relay, "users", "id", user_id)


async def test_one_erasure_failing_unforeseen_holds_up_no_other(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Housekeeping goes on with every marked interview: one whose erasure raises what
    nobody foresaw (a bug, stood in for here) is retried at the next round, and the others
    are erased this round (they waited behind it, round after round)."""
    monkeypatch.setattr(relay_app, "HOUSEKEEPING_INTERVAL_S", 3600.0)
    relay = await make_relay()
    first = await create_interview(relay, candidate={"email": "first@example.test"})
    second = await create_interview(relay, candidate={"email": "second@example.test"})
    await relay.sql(
        "UPDATE interviews SET erase_requested_at = now() - (id = $1)::int * interval '1 s'",
        first["id"],
    )
    erasure = relay.services.erasure
    finish = erasure.rows.finish_interview

    async def poisoned(interview_id: str) -> bool:
        if interview_id == first["id"]:
            raise RuntimeError("unforeseen")
        return await finish(interview_id)

    monkeypatch.setattr(erasure.rows, "finish_interview", poisoned)
    assert await erasure.erase_due() == 1
    assert await _erased(relay, "interviews", "id", second["id"])
    assert not await _erased(relay, "interviews", "id", first["id"])
    monkeypatch.setattr(erasure.rows, "finish_interview", finish)
    assert await erasure.erase_due() == 1
    assert await _erased(relay, "interviews", "id", first["id"])


async def test_a_token_cached_here_of_a_user_erased_elsewhere_is_refused_not_a_500(
    make_relay: MakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another member finished a candidate's erasure (the user's row is gone) before the
    database's notice reached this member's cache, which still holds the token as valid:
    a session it starts is refused as an unknown token's (401), not a 500 from the
    session row's foreign key."""
    relay = await make_relay()
    token = await relay.add_user(email=EMAIL)
    status, created, _ = await relay.create_session(token)  # now in the user cache
    assert status == 201, created
    (user,) = await relay.sql("SELECT id FROM users WHERE email = $1", EMAIL)
    cache = relay.services.cache

    async def held_back(token_hashes: Any) -> bool:
        return True

    monkeypatch.setattr(cache, "forget_locally", lambda token_hashes: None)
    monkeypatch.setattr(cache, "evict_shared", held_back)
    await relay.sql("DELETE FROM interview_sessions WHERE user_id = $1", user["id"])
    await relay.sql("DELETE FROM users WHERE id = $1", user["id"])
    status, body, _ = await relay.create_session(token)
    assert status == 401 and body["error"]["code"] == "invalid_token", body
    assert body["request_id"]
