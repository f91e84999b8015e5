"""Deleting a recording removes its own files and nothing else, says so when it cannot,
and leaves a recording on another instance's disk to that instance; retention deletes in
batches until none is left. Real rows in PostgreSQL, real directories, the relay's API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from relay.admission.tokens import hash_token, new_token
from relay.recording import service as recording_service
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import call
from tests.integration.relay_harness import RelayHarness

INSTANCE = "test-instance"  # make_relay's
OTHER = "other-instance"  # a live member (its heartbeat is fresh)
GONE = "gone-instance"  # a member that never came back
REC_PART1 = "rec_1111111111111111"
REC_PART2 = "rec_2222222222222222"
REC_AWAY = "rec_aaaaaaaaaaaaaaaa"
REC_BROKEN = "rec_bbbbbbbbbbbbbbbb"
REC_GONE = "rec_cccccccccccccccc"


def _files(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in ("recording.ogg", "transcript.jsonl", "manifest.json"):
        (directory / name).write_bytes(b"x")
    return directory


async def _rows(
    relay: RelayHarness,
    recordings: list[tuple[str, str, int, Path, str, datetime]],
    storage: str = "local",
) -> None:
    """(recording id, session id, part, location, instance, created_at), sessions made;
    once the relay's own first retention pass is over, so that it cannot take rows made
    expired here before the test's own pass does."""
    assert relay.services.recordings is not None
    await asyncio.wait_for(relay.services.recordings.first_round_done.wait(), 30)
    conn = await asyncpg.connect(relay.database_url)
    try:
        user = await conn.fetchval(
            "INSERT INTO users (email, token_hash, remaining_seconds)"
            " VALUES ('d@example.test', $1, 0) RETURNING id",
            hash_token(new_token()),
        )
        for session_id in sorted({r[1] for r in recordings}):
            await conn.execute(
                "INSERT INTO interview_sessions (id, user_id, request_id, state, model, dialect,"
                " relay_instance, expires_at) VALUES ($1, $2, 'req_d', 'ended', 'm', 'ga', $3,"
                " now())",
                session_id,
                user,
                INSTANCE,
            )
        for recording_id, session_id, part, location, instance, created_at in recordings:
            await conn.execute(
                "INSERT INTO recordings (id, session_id, status, storage, location,"
                " relay_instance, part, created_at) VALUES ($1, $2, 'ready', $7, $3, $4,"
                " $5, $6)",
                recording_id,
                session_id,
                str(location),
                instance,
                part,
                created_at,
                storage,
            )
        # The other instance is alive: its heartbeat is now.
        await conn.execute(
            "INSERT INTO relay_members (id, address, version, pid, started_at)"
            " VALUES ($1, 'http://10.0.0.2:8080', 'test', 1, now())",
            OTHER,
        )
    finally:
        await conn.close()


async def _status(relay: RelayHarness, recording_id: str) -> str:
    rows = await relay.sql("SELECT status FROM recordings WHERE id = $1", recording_id)
    return str(rows[0]["status"])


async def test_deleting_one_part_leaves_the_others_and_refuses_what_it_cannot_remove(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    relay = await make_relay(overrides={"recording": {"directory": str(root)}})
    now = datetime.now(UTC)
    part1 = await asyncio.to_thread(_files, root / "is_taken")
    part2 = await asyncio.to_thread(_files, root / "is_taken.part2")
    elsewhere = tmp_path / "another-machine" / "is_away"  # not on this instance's disk
    broken = root / "is_broken"
    await asyncio.to_thread(broken.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(broken.write_bytes, b"a file where a directory belongs")
    await _rows(
        relay,
        [
            (REC_PART1, "is_taken", 1, part1, INSTANCE, now),
            (REC_PART2, "is_taken", 2, part2, INSTANCE, now),
            (REC_AWAY, "is_away", 1, elsewhere, OTHER, now),
            (REC_BROKEN, "is_broken", 1, broken, INSTANCE, now),
            (REC_GONE, "is_gone", 1, tmp_path / "another-machine" / "is_gone", GONE, now),
        ],
    )

    # Part 2 of a session taken over: its own directory only.
    status, body, _ = await call(relay, "DELETE", "/api/recordings/" + REC_PART2)
    assert status == 200 and body["status"] == "deleted", body
    assert not await asyncio.to_thread(part2.exists)
    assert await asyncio.to_thread(lambda: sorted(p.name for p in part1.iterdir())) == [
        "manifest.json",
        "recording.ogg",
        "transcript.jsonl",
    ]
    assert await _status(relay, REC_PART1) == "ready"

    # On a live instance's disk: that instance's to delete; the row stays.
    status, body, _ = await call(relay, "DELETE", "/api/recordings/" + REC_AWAY)
    assert status == 409 and body["error"]["code"] == "recording_on_another_instance", body
    assert body["error"]["relay_instance"] == OTHER
    assert await _status(relay, REC_AWAY) == "ready"
    # On the disk of an instance that is gone: unreachable from anywhere, marked deleted.
    status, body, _ = await call(relay, "DELETE", "/api/recordings/" + REC_GONE)
    assert status == 200 and body["status"] == "deleted", body

    # Files that cannot be removed: said so, and the row is not marked deleted.
    status, body, _ = await call(relay, "DELETE", "/api/recordings/" + REC_BROKEN)
    assert status == 500 and body["error"]["code"] == "recording_not_deleted", body
    assert await _status(relay, REC_BROKEN) == "ready"


async def test_retention_deletes_in_batches_until_none_is_left(
    make_relay: MakeRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording_service, "RETENTION_BATCH", 2)
    root = tmp_path / "recordings"
    relay = await make_relay(overrides={"recording": {"directory": str(root)}})
    old = datetime.now(UTC) - timedelta(days=400)
    expired = [await asyncio.to_thread(_files, root / f"is_old{i}") for i in range(5)]
    broken = root / "is_broken"
    await asyncio.to_thread(broken.write_bytes, b"a file where a directory belongs")
    await _rows(
        relay,
        [
            (f"rec_{i:016x}", f"is_old{i}", 1, d, INSTANCE, old + timedelta(seconds=i))
            for i, d in enumerate(expired)
        ]
        + [
            (REC_BROKEN, "is_broken", 1, broken, INSTANCE, old),
            (REC_AWAY, "is_away", 1, tmp_path / "elsewhere", OTHER, old),
            (REC_GONE, "is_gone", 1, tmp_path / "elsewhere-too", GONE, old),
        ],
    )
    service = relay.services.recordings
    assert service is not None
    # More than a batch, one that fails on the way, one a live instance holds: every other
    # one is deleted (the gone instance's too), past those it could not.
    assert await service.apply_retention() == 6
    assert not any(await asyncio.to_thread(lambda: [d.exists() for d in expired]))
    assert await _status(relay, REC_BROKEN) == "ready"  # tried again at the next pass
    assert await _status(relay, REC_AWAY) == "ready"  # the live instance's
    assert await _status(relay, REC_GONE) == "deleted"


async def test_a_recording_in_s3_is_not_marked_deleted_where_s3_is_not_configured(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    # An instance configured without S3 cannot remove a recording's objects: marking its
    # row deleted there would leave them in the bucket with nothing to find them by. The
    # API says so (503, as a download there does) and retention leaves it to a member
    # with S3; the row stays as it was.
    relay = await make_relay(overrides={"recording": {"directory": str(tmp_path / "rec")}})
    old = datetime.now(UTC) - timedelta(days=400)
    await _rows(relay, [(REC_AWAY, "is_in_s3", 1, tmp_path / "unused", INSTANCE, old)], "s3")
    status, body, _ = await call(relay, "DELETE", "/api/recordings/" + REC_AWAY)
    assert status == 503 and body["error"]["code"] == "storage_unavailable", body
    assert "request_id" in body
    assert await _status(relay, REC_AWAY) == "ready"
    service = relay.services.recordings
    assert service is not None
    assert await service.apply_retention() == 0
    assert await _status(relay, REC_AWAY) == "ready"


async def test_a_relay_back_removes_what_was_deleted_while_it_was_away(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    # A relay that died while recording, or before it stored a rendered recording: its
    # files were out of reach, so a DELETE (retention, an erasure still waiting on other
    # rows) marked the row deleted. Back, it removes them instead of leaving them on its
    # disk for good (nobody will ask it for them again).
    root = tmp_path / "recordings"
    relay = await make_relay(overrides={"recording": {"directory": str(root)}})
    unfinished = root / "is_unfinished"
    rendered = await asyncio.to_thread(_files, root / "is_rendered")
    await asyncio.to_thread(unfinished.mkdir, parents=True)
    meta = {"recording_id": REC_PART1, "session_id": "is_unfinished", "part": 1}
    meta["instance_id"] = INSTANCE
    await asyncio.to_thread((unfinished / "meta.json").write_text, json.dumps(meta))
    await asyncio.to_thread((unfinished / "candidate.rlog").write_bytes, b"\x00" * 64)
    manifest = {"recording_id": REC_PART2, "session_id": "is_rendered"}
    await asyncio.to_thread((rendered / "manifest.json").write_text, json.dumps(manifest))
    now = datetime.now(UTC)
    await _rows(
        relay,
        [
            (REC_PART1, "is_unfinished", 1, unfinished, INSTANCE, now),
            (REC_PART2, "is_rendered", 1, rendered, INSTANCE, now),
        ],
    )
    await relay.sql("UPDATE recordings SET status = 'deleted', deleted_at = now()")
    service = relay.services.recordings
    assert service is not None
    assert await service.recover() == 0
    assert not await asyncio.to_thread(unfinished.exists)
    assert not await asyncio.to_thread(rendered.exists)
    statuses = await relay.sql("SELECT status FROM recordings ORDER BY id")
    assert [r["status"] for r in statuses] == ["deleted", "deleted"]
