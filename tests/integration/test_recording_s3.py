"""Recordings on S3-compatible storage: a real SeaweedFS server (``weed server -s3``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from relay.config import RecordingConfig
from relay.recording.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3Storage
from relay.web.routes_recordings import download_name
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import encode_opus, wait_until
from tests.integration.recording_helpers import (
    OPERATOR,
    TimedBrowser,
    connect,
    hang_up,
    tone,
    wait_recording,
)
from tests.integration.relay_harness import RelayHarness
from tests.support.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedServer

TONE = encode_opus(tone(440, 0.6))
BUCKET = "interviews"
PREFIX = "rec/"


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture
async def browsers() -> AsyncIterator[list[TimedBrowser]]:
    made: list[TimedBrowser] = []
    yield made
    for browser in made:
        await browser.peer.close()


async def s3_call(endpoint: str, operation: str, **kwargs: Any) -> Any:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    ) as client:
        return await getattr(client, operation)(**kwargs)


async def read_object(endpoint: str, key: str) -> bytes:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    ) as client:
        response = await client.get_object(Bucket=BUCKET, Key=key)
        data: bytes = await response["Body"].read()
        return data


async def keys(endpoint: str) -> list[str]:
    listing = await s3_call(endpoint, "list_objects_v2", Bucket=BUCKET, Prefix=PREFIX)
    return sorted(item["Key"] for item in listing.get("Contents", []))


async def make_bucket(endpoint: str) -> None:
    # The filer may need a moment after the S3 port opens.
    for attempt in range(50):
        try:
            await s3_call(endpoint, "create_bucket", Bucket=BUCKET)
            return
        except Exception:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)


def s3_overrides(endpoint: str) -> dict[str, dict[str, Any]]:
    return {
        "recording": {
            "storage": "s3",
            "s3_endpoint_url": endpoint,
            "s3_bucket": BUCKET,
            "s3_prefix": PREFIX,
        }
    }


async def record(relay: RelayHarness, browsers: list[TimedBrowser]) -> str:
    browser = TimedBrowser.create()
    browsers.append(browser)
    session_id = await connect(relay, browser)
    mic = browser.peer.mic
    assert mic is not None
    mic.play(TONE)
    await wait_until(lambda: len(browser.sent) > 40, 5, "tone sent")
    await hang_up(relay, session_id)
    return session_id


async def test_s3_storage_uploads_under_the_session_id_and_serves_ranges(
    make_relay: MakeRelay,
    browsers: list[TimedBrowser],
    seaweedfs: SeaweedServer,
    s3_credentials: None,
) -> None:
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    relay = await make_relay(overrides=s3_overrides(endpoint))
    session_id = await record(relay, browsers)
    item = await wait_recording(relay, session_id, "ready")
    rid = item["id"]
    stored = await keys(endpoint)
    assert stored == [
        f"{PREFIX}{session_id}/{rid}/{name}"
        for name in ("manifest.json", "recording.ogg", "transcript.jsonl")
    ]
    # Uploaded: the local copy is gone, so what the API serves comes from the store.
    local = Path(relay.services.settings.recording_path) / session_id
    assert not local.exists()
    # Any instance serves it: a second relay with its own (empty) directory.
    other = await make_relay(overrides=s3_overrides(endpoint))
    for serving in (relay, other):
        async with serving.client.get(f"/api/recordings/{rid}/audio", headers=OPERATOR) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "audio/ogg"
            audio = await resp.read()
        assert hashlib.sha256(audio).hexdigest() == item["sha256"]
        async with serving.client.get(
            f"/api/recordings/{rid}/audio", headers=OPERATOR | {"Range": "bytes=0-99"}
        ) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 0-99/{len(audio)}"
            assert await resp.read() == audio[:100]
            # Named as the local files are (the name itself: tests/unit).
            created = datetime.fromisoformat(item["created_at"])
            name = download_name(item["candidate_email"], created, "ogg", item.get("part", 1))
            assert resp.headers["Content-Disposition"] == f'attachment; filename="{name}"'
    manifest = json.loads(await read_object(endpoint, stored[0]))
    assert manifest["session_id"] == session_id
    assert manifest["storage"] == f"s3://{BUCKET}/{PREFIX}{session_id}/{rid}/"
    async with relay.client.get(f"/api/recordings/{rid}/transcript", headers=OPERATOR) as resp:
        assert resp.status == 200

    async with relay.client.delete(f"/api/recordings/{rid}", headers=OPERATOR) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "deleted", body
    assert await keys(endpoint) == []


async def test_s3_down_fails_the_recording_keeps_local_files_and_retries(
    make_relay: MakeRelay,
    browsers: list[TimedBrowser],
    seaweedfs: SeaweedServer,
    s3_credentials: None,
) -> None:
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    await asyncio.to_thread(seaweedfs.stop)
    relay = await make_relay(overrides=s3_overrides(endpoint))
    session_id = await record(relay, browsers)
    item = await wait_recording(relay, session_id, "failed", within=60)
    assert item["status_reason"].startswith("upload failed (local files kept"), item
    rows = await relay.sql(
        "SELECT state, recording_status FROM interview_sessions WHERE id = $1", session_id
    )
    assert rows[0]["state"] == "ended"
    assert rows[0]["recording_status"].startswith("failed: upload failed")
    local = Path(relay.services.settings.recording_path) / session_id
    # What is kept for the retry is what gets uploaded: the packet logs went once checked.
    kept = await asyncio.to_thread(lambda: {p.name for p in local.iterdir()})
    assert kept == {"recording.ogg", "transcript.jsonl", "manifest.json"}
    assert relay.counter("relay_recordings_failed_total", stage="upload") == 1

    # The store comes back; the periodic retry uploads the kept files.
    await asyncio.to_thread(seaweedfs.start)
    service = relay.services.recordings
    assert service is not None
    assert await service.retry_uploads() == 1
    item = await wait_recording(relay, session_id, "ready")
    assert any(session_id in key for key in await keys(endpoint))
    assert not local.exists()


async def test_a_recording_deleted_while_it_goes_up_is_not_brought_back(
    make_relay: MakeRelay,
    browsers: list[TimedBrowser],
    seaweedfs: SeaweedServer,
    s3_credentials: None,
) -> None:
    # A DELETE (or retention, or an erasure) marks a recording deleted while its upload is
    # under way, or an erasure removes its rows with its session's: the upload's end must
    # neither mark it ready again nor leave its objects in the bucket and its files on the
    # disk. Both at once, one recording each (their uploads fail and are retried together).
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    await asyncio.to_thread(seaweedfs.stop)
    relay = await make_relay(overrides=s3_overrides(endpoint))
    marked_id = await record(relay, browsers)
    erased_id = await record(relay, browsers)
    marked, erased = await asyncio.gather(
        wait_recording(relay, marked_id, "failed", within=60),
        wait_recording(relay, erased_id, "failed", within=60),
    )
    await asyncio.to_thread(seaweedfs.start)
    service = relay.services.recordings
    assert service is not None and service.s3 is not None
    upload = service.s3.upload
    meanwhile: set[str] = set()

    async def deleted_meanwhile(path: Path, key: str, content_type: str) -> None:
        # At each recording's first file, another member's DELETE or erasure lands.
        if marked_id in key and marked_id not in meanwhile:
            meanwhile.add(marked_id)
            await relay.sql(
                "UPDATE recordings SET status = 'deleted', deleted_at = now() WHERE id = $1",
                marked["id"],
            )
        if erased_id in key and erased_id not in meanwhile:
            meanwhile.add(erased_id)  # as relay.erasure.rows removes them
            await relay.sql("DELETE FROM recordings WHERE id = $1", erased["id"])
            await relay.sql("DELETE FROM interview_sessions WHERE id = $1", erased_id)
        await upload(path, key, content_type)

    service.s3.upload = deleted_meanwhile  # type: ignore[method-assign]
    assert await service.retry_uploads() == 2
    assert meanwhile == {marked_id, erased_id}
    rows = await relay.sql(
        "SELECT id, status FROM recordings WHERE id = ANY($1::text[])", [marked["id"], erased["id"]]
    )
    assert [(r["id"], r["status"]) for r in rows] == [(marked["id"], "deleted")]
    stored = await keys(endpoint)
    root = Path(relay.services.settings.recording_path)
    for session_id in (marked_id, erased_id):
        assert not any(session_id in key for key in stored), (session_id, stored)
        assert not await asyncio.to_thread((root / session_id).exists)


async def test_large_files_go_up_in_parts(
    seaweedfs: SeaweedServer, s3_credentials: None, tmp_path: Path
) -> None:
    endpoint = seaweedfs.endpoint_url
    await make_bucket(endpoint)
    config = RecordingConfig(
        storage="s3", s3_endpoint_url=endpoint, s3_bucket=BUCKET, s3_prefix=PREFIX
    )
    storage = S3Storage(config)
    big = tmp_path / "recording.wav"
    data = os.urandom(MULTIPART_THRESHOLD + PART_SIZE + 1234)
    big.write_bytes(data)
    key = storage.key("is_big", "rec_0123456789abcdef", "recording.wav")
    try:
        await storage.upload(big, key, "audio/wav")
        head = await s3_call(endpoint, "head_object", Bucket=BUCKET, Key=key)
        assert head["ContentLength"] == len(data)
        # S3's convention for a multipart object's ETag: "<md5 of part md5s>-<parts>".
        parts = -(-len(data) // PART_SIZE)
        assert head["ETag"].strip('"').endswith(f"-{parts}"), head["ETag"]
        assert hashlib.sha256(await read_object(endpoint, key)).digest() == (
            hashlib.sha256(data).digest()
        )
        assert await storage.delete_prefix(f"{PREFIX}is_big/") == 1
        assert await keys(endpoint) == []
    finally:
        await storage.close()
