"""A recording whose files are final while PostgreSQL is away: the write that marks it
ready fails (its retries exhausted), the database comes back, and the same relay, without a
restart, marks it ready (playable, deletable) by its periodic pass. Real PostgreSQL
(stopped and started), real SeaweedFS, real WebRTC peers and the real renderer."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.media.tap import TappedPacket
from relay.recording import service as service_module
from relay.recording.service import RecordingService
from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import OPERATOR, TimedBrowser, wait_recording
from tests.integration.relay_harness import RelayHarness
from tests.integration.test_recording_s3 import keys, make_bucket, record, s3_overrides
from tests.support.postgres import PostgresServer
from tests.support.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedServer

# The pass's interval in these tests (60 s in service): it runs all along, during the
# finalisation too, which it must leave alone.
RESUME_S = 0.2


@pytest.fixture
def quick_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "RESUME_INTERVAL_S", RESUME_S)


@pytest.fixture
async def browsers() -> AsyncIterator[list[TimedBrowser]]:
    made: list[TimedBrowser] = []
    yield made
    for browser in made:
        await browser.peer.close()


def lose_the_ready_write(service: RecordingService, postgres: PostgresServer) -> list[str]:
    """Stop PostgreSQL just before the first write that marks a recording ready (its files
    stored, in the store too with S3): that write fails as in an outage. Returns the list
    the recording's id goes into once the write has failed."""
    set_status = service.rows.set_status
    lost: list[str] = []
    stopped: list[str] = []

    async def stopping_first(recording_id: str, status: str, **kwargs: Any) -> str | None:
        if status != "ready" or stopped:
            return await set_status(recording_id, status, **kwargs)
        stopped.append(recording_id)
        await postgres.astop()
        try:
            return await set_status(recording_id, status, **kwargs)
        finally:
            lost.append(recording_id)  # the write has failed (its retries exhausted)

    service.rows.set_status = stopping_first  # type: ignore[method-assign]
    return lost


async def outage_then_back(
    relay: RelayHarness, postgres: PostgresServer, browsers: list[TimedBrowser]
) -> tuple[str, str, Path]:
    """A recorded session whose ready write is lost; PostgreSQL started again once the
    relay has given up on it. (session id, recording id, its local directory)."""
    service = relay.services.recordings
    assert service is not None
    lost = lose_the_ready_write(service, postgres)
    session_id = await record(relay, browsers)
    await wait_until(lambda: bool(lost), 60, "the ready write to fail")
    recording_id = lost[0]
    # The write failed and the relay let go of the recording (nothing works on it).
    await wait_until(lambda: not service.busy(recording_id), 60, "the relay to give up")
    local = Path(relay.services.settings.recording_path) / session_id
    kept = await asyncio.to_thread(lambda: {p.name for p in local.iterdir()})
    assert kept == {"recording.ogg", "transcript.jsonl", "manifest.json"}
    await postgres.astart()
    return session_id, recording_id, local


async def assert_served_and_deleted(relay: RelayHarness, item: dict[str, Any]) -> None:
    rid = item["id"]
    async with relay.client.get(f"/api/recordings/{rid}/audio", headers=OPERATOR) as resp:
        assert resp.status == 200
        assert hashlib.sha256(await resp.read()).hexdigest() == item["sha256"]
    events = await relay.sql(
        "SELECT type FROM webhook_events WHERE data->>'recording_id' = $1", rid
    )
    assert [e["type"] for e in events] == ["recording.ready"]
    async with relay.client.delete(f"/api/recordings/{rid}", headers=OPERATOR) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "deleted", body


async def test_s3_a_lost_ready_write_is_written_once_the_database_is_back(
    make_relay: MakeRelay,
    private_postgres: PostgresServer,
    seaweedfs: SeaweedServer,
    browsers: list[TimedBrowser],
    quick_resume: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    relay = await make_relay(dsn=private_postgres.dsn(), overrides=s3_overrides(endpoint))
    session_id, rid, local = await outage_then_back(relay, private_postgres, browsers)

    item = await wait_recording(relay, session_id, "ready", within=30)
    assert item["id"] == rid and item["storage"] == "s3"
    assert {f["name"]: f["key"] for f in item["files"]} == {
        name: f"rec/{session_id}/{rid}/{name}"
        for name in ("recording.ogg", "transcript.jsonl", "manifest.json")
    }
    # Stored, then marked ready: the local copy is gone only now.
    assert not await asyncio.to_thread(local.exists)
    rows = await relay.sql(
        "SELECT recording_status FROM interview_sessions WHERE id = $1", session_id
    )
    assert rows[0]["recording_status"] == "ready"
    await assert_served_and_deleted(relay, item)
    assert await keys(endpoint) == []


async def test_local_a_lost_ready_write_is_written_once_the_database_is_back(
    make_relay: MakeRelay,
    private_postgres: PostgresServer,
    browsers: list[TimedBrowser],
    quick_resume: None,
) -> None:
    relay = await make_relay(dsn=private_postgres.dsn())
    session_id, rid, local = await outage_then_back(relay, private_postgres, browsers)

    item = await wait_recording(relay, session_id, "ready", within=30)
    assert item["id"] == rid and item["storage"] == "local"
    await assert_served_and_deleted(relay, item)
    assert not await asyncio.to_thread(local.exists)


async def test_a_lost_write_failure_is_written_with_its_reason_not_finalised(
    make_relay: MakeRelay, private_postgres: PostgresServer, quick_resume: None
) -> None:
    # The recorder failed (a packet the log cannot hold) and the database was away when
    # the row was to say so: once back, the row is failed with that reason. The packet
    # log it left must not be finalised into a recording as if nothing had failed.
    relay = await make_relay(dsn=private_postgres.dsn())
    service = relay.services.recordings
    assert service is not None
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = body["session_id"]
    set_status = service.rows.set_status
    lost: list[str] = []
    stopped: list[str] = []

    async def stopping_first(recording_id: str, status: str, **kwargs: Any) -> str | None:
        if status != "failed" or stopped:
            return await set_status(recording_id, status, **kwargs)
        stopped.append(recording_id)
        await private_postgres.astop()
        try:
            return await set_status(recording_id, status, **kwargs)
        finally:
            lost.append(recording_id)  # the write has failed

    service.rows.set_status = stopping_first  # type: ignore[method-assign]
    recorder = service.begin(session_id)
    assert recorder is not None
    rid = recorder.recording_id
    await poll(lambda: row_status(relay, rid), 10, "the row")
    tap = recorder.tap("candidate")
    tap.on_packet(_packet(1))
    tap.on_packet(_packet(1 << 16))  # struct.error in the writer (test_recording_failures)
    await wait_until(lambda: bool(lost), 60, "the failed write to fail")
    await wait_until(lambda: not service.busy(rid), 60, "the relay to give up")
    await private_postgres.astart()

    async def failed() -> tuple[str, str | None] | None:
        current = await row_status(relay, rid)
        return current if current and current[0] == "failed" else None

    _, reason = await poll(failed, 30, "the row failed")
    assert reason is not None and reason.startswith("write failed: struct.error: "), reason
    sessions = await relay.sql(
        "SELECT recording_status FROM interview_sessions WHERE id = $1", session_id
    )
    assert sessions[0]["recording_status"].startswith("failed: write failed: struct.error")
    # Left as the writer left it (no manifest: not rendered).
    assert not await asyncio.to_thread((recorder.directory / "manifest.json").exists)


async def test_a_lost_discard_removes_the_row_once_the_database_is_back(
    make_relay: MakeRelay, private_postgres: PostgresServer, quick_resume: None
) -> None:
    # A session that never carried audio: its files go, then its row. The database was
    # away for the row: once back, the row goes (not left `recording` for good).
    relay = await make_relay(dsn=private_postgres.dsn())
    service = relay.services.recordings
    assert service is not None
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = body["session_id"]
    discard = service.rows.discard
    lost: list[str] = []
    stopped: list[str] = []

    async def stopping_first(recording_id: str) -> None:
        if stopped:
            return await discard(recording_id)
        stopped.append(recording_id)
        await private_postgres.astop()
        try:
            await discard(recording_id)
        finally:
            lost.append(recording_id)  # the write has failed

    service.rows.discard = stopping_first  # type: ignore[method-assign]
    recorder = service.begin(session_id)
    assert recorder is not None
    rid = recorder.recording_id
    await poll(lambda: row_status(relay, rid), 10, "the row")
    recorder.stop(None, None)
    await wait_until(lambda: bool(lost), 60, "the discard to fail")
    await wait_until(lambda: not service.busy(rid), 60, "the relay to give up")
    assert not await asyncio.to_thread(recorder.directory.exists)
    await private_postgres.astart()

    async def gone() -> bool:
        return await row_status(relay, rid) is None

    await poll(gone, 30, "the row removed")
    sessions = await relay.sql(
        "SELECT recording_status FROM interview_sessions WHERE id = $1", session_id
    )
    assert sessions[0]["recording_status"] == "no audio"


async def row_status(relay: RelayHarness, recording_id: str) -> tuple[str, str | None] | None:
    rows = await relay.sql(
        "SELECT status, status_reason FROM recordings WHERE id = $1", recording_id
    )
    return (rows[0]["status"], rows[0]["status_reason"]) if rows else None


def _packet(seq: int) -> TappedPacket:
    return TappedPacket(
        "opus", 48000, b"\xf8\xff\xfe", seq, seq * 960, 1234, False, time.monotonic()
    )


async def test_s3_a_row_left_rendering_with_only_the_store_holding_it_is_marked_ready(
    make_relay: MakeRelay,
    seaweedfs: SeaweedServer,
    browsers: list[TimedBrowser],
    quick_resume: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What an older version left when its ready write failed: it removed the local copy
    # right after the upload, before that write. The row says rendering, the disk has
    # nothing, the store has all of it (the manifest went up last).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    relay = await make_relay(overrides=s3_overrides(endpoint))
    session_id = await record(relay, browsers)
    stored = await wait_recording(relay, session_id, "ready")
    rid = stored["id"]
    await relay.sql(
        """UPDATE recordings SET status = 'rendering', files = '[]', manifest = NULL,
               duration_seconds = NULL, bytes = NULL, sha256 = NULL, finished_at = NULL
           WHERE id = $1""",
        rid,
    )
    await relay.sql(
        "UPDATE interview_sessions SET recording_status = 'rendering' WHERE id = $1", session_id
    )
    await relay.sql("DELETE FROM webhook_events WHERE data->>'recording_id' = $1", rid)
    local = Path(relay.services.settings.recording_path) / session_id
    assert not await asyncio.to_thread(local.exists)

    item = await wait_recording(relay, session_id, "ready", within=30)
    for field in ("files", "sha256", "bytes", "duration_s", "packets_recorded", "storage"):
        assert item[field] == stored[field], field
    rows = await relay.sql(
        "SELECT recording_status FROM interview_sessions WHERE id = $1", session_id
    )
    assert rows[0]["recording_status"] == "ready"
    await assert_served_and_deleted(relay, item)
    assert await keys(endpoint) == []
