"""A recording's audio and transcript download under a name that says whose interview it
was and when (Content-Disposition), whole or by range."""

from __future__ import annotations

from datetime import datetime

from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    OPERATOR,
    call,
    create_interview,
    invite_of,
    join,
)
from tests.integration.media_helpers import wait_until
from tests.integration.recording_helpers import wait_recording


async def test_audio_and_transcript_are_attachments_named_after_the_candidate_and_date(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    interview = await create_interview(
        relay, candidate={"email": "Ana.Lopez+jobs@Example.test", "name": "Ana"}
    )
    async with join(relay, invite_of(interview)) as joined:
        await wait_until(lambda: len(joined.browser.speaker.levels) > 10, 10, "interviewer audio")
        status, _, _ = await call(relay, "DELETE", f"/api/sessions/{joined.session_id}")
        assert status == 204
    item = await wait_recording(relay, joined.session_id, "ready")
    # The name keeps [a-z0-9._-] of the e-mail, lower-cased, and the start in UTC.
    assert item["candidate_email"] == "Ana.Lopez+jobs@Example.test"
    stamp = datetime.fromisoformat(item["created_at"]).strftime("%Y-%m-%d-%H%M%S")
    stem = f"interview-ana.lopez-jobs-example.test-{stamp}"
    audio = f"/api/recordings/{item['id']}/audio"

    status, _, headers = await call(relay, "GET", audio)
    assert status == 200 and headers["Content-Type"] == "audio/ogg"
    assert headers["Content-Disposition"] == f'attachment; filename="{stem}.ogg"'
    # A range (what a player asks while seeking) carries the same name.
    status, _, headers = await call(relay, "GET", audio, {**OPERATOR, "Range": "bytes=0-99"})
    assert status == 206 and headers["Content-Range"].startswith("bytes 0-99/")
    assert headers["Content-Disposition"] == f'attachment; filename="{stem}.ogg"'
    # A range past the end, or one that does not parse, is a JSON error like any other
    # (README: every error is JSON), still saying the file's length.
    size = int(headers["Content-Range"].rsplit("/", 1)[1])
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=x-y"):
        request_headers = {**OPERATOR, "Range": unsatisfiable}
        status, body, headers = await call(relay, "GET", audio, request_headers)
        assert status == 416 and body is not None, (unsatisfiable, headers)
        assert body["error"]["code"] == "invalid_range", body
        assert body["request_id"] == headers["X-Request-ID"]
        assert headers["Content-Range"] == f"bytes */{size}"
    # The last bytes (a suffix range) are served as before.
    status, _, headers = await call(relay, "GET", audio, {**OPERATOR, "Range": "bytes=-10"})
    assert status == 206 and headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"

    status, _, headers = await call(relay, "GET", f"/api/recordings/{item['id']}/transcript")
    assert status == 200
    assert headers["Content-Disposition"] == f'attachment; filename="{stem}.jsonl"'
