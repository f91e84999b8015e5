"""Recordings and what they leave: a ready recording sends ``recording.ready`` (a failed one
``recording.failed``) from the transaction that set its status, and keeps only its
rendered files on disk. A real aiortc browser, the relay (real PostgreSQL), the simulator
as the interviewer, a real webhook receiver verifying signatures with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
from tests.integration.test_webhooks import LOOPBACK
from tests.integration.webhook_receiver import receiver, register

TONE = encode_opus(tone(440, 0.6))
RENDERED = {"recording.ogg", "transcript.jsonl", "manifest.json"}
INTERVIEW_ID = "iv_" + "5" * 32


@pytest.fixture
async def browser() -> AsyncIterator[TimedBrowser]:
    made = TimedBrowser.create()
    yield made
    await made.peer.close()


async def test_a_ready_recording_sends_its_event_and_keeps_only_the_rendered_files(
    make_relay: MakeRelay, browser: TimedBrowser
) -> None:
    async with receiver() as rec:
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        await register(relay, rec, ["recording.ready", "recording.failed"])
        session_id = await connect(relay, browser)
        # The session belongs to an interview (of its own user), so the event names it.
        await relay.sql(
            """INSERT INTO interviews (id, user_id, invite_token_hash, instructions,
                                       max_duration_s, expires_at, created_by)
               SELECT $2, user_id, repeat('a', 64), 'Ask about recordings.', 600,
                      now() + interval '1 hour', 'test'
               FROM interview_sessions WHERE id = $1""",
            session_id,
            INTERVIEW_ID,
        )
        await relay.sql(
            "UPDATE interview_sessions SET interview_id = $2 WHERE id = $1",
            session_id,
            INTERVIEW_ID,
        )
        mic = browser.peer.mic
        assert mic is not None
        mic.play(TONE)
        await wait_until(lambda: len(browser.sent) > 40, 5, "tone sent")
        directory = relay.services.settings.recording_path / session_id
        logs = await asyncio.to_thread(lambda: sorted(p.name for p in directory.iterdir()))
        assert "candidate.rlog" in logs and "interviewer.rlog" in logs
        await hang_up(relay, session_id)
        item = await wait_recording(relay, session_id, "ready")
        await rec.wait_for(lambda got: len(got) == 1, 10)
        left = await asyncio.to_thread(lambda: {p.name for p in directory.iterdir()})
        async with relay.client.get(rec.received[0].data["audio_url"], headers=OPERATOR) as resp:
            assert resp.status == 200
            audio = await resp.read()
        events = await relay.sql(
            "SELECT type, interview_id FROM webhook_events WHERE data->>'recording_id' = $1",
            item["id"],
        )

    [ready] = rec.verified()
    assert ready.type == "recording.ready"
    assert ready.data == {
        "interview_id": INTERVIEW_ID,
        "session_id": session_id,
        "recording_id": item["id"],
        "duration_s": item["duration_s"],
        "audio_url": f"/api/recordings/{item['id']}/audio",
        "transcript_url": f"/api/recordings/{item['id']}/transcript",
    }
    assert hashlib.sha256(audio).hexdigest() == item["sha256"]
    assert [(e["type"], e["interview_id"]) for e in events] == [("recording.ready", INTERVIEW_ID)]
    # Finalised and checked: the packet logs, the event log and meta.json are gone.
    assert left == RENDERED


async def test_a_failed_recording_sends_recording_failed_with_its_reason(
    make_relay: MakeRelay, browser: TimedBrowser, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the recordings directory should be")
    async with receiver() as rec:
        relay = await make_relay(
            overrides={
                "webhooks": LOOPBACK,
                "recording": {"directory": str(blocker / "rec")},
            }
        )
        await register(relay, rec, ["recording.failed"])
        session_id = await connect(relay, browser)
        mic = browser.peer.mic
        assert mic is not None
        mic.play(TONE)
        await wait_until(lambda: len(browser.sent) > 20, 5, "tone sent")
        await hang_up(relay, session_id)
        item = await wait_recording(relay, session_id, "failed")
        await rec.wait_for(lambda got: len(got) == 1, 10)

    [failed] = rec.verified()
    assert failed.type == "recording.failed"
    assert failed.data == {
        "interview_id": None,  # no interview on this schema: read defensively, not an error
        "session_id": session_id,
        "recording_id": item["id"],
        "reason": item["status_reason"],
    }
    assert "NotADirectoryError" in failed.data["reason"]
