"""A recording whose writing fails for any reason is failed at once, with its reason, and
let go of: the writer thread, the packet logs' files, the row, a counter. Real PostgreSQL,
real files, the relay's own writer thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from relay.media.tap import TappedPacket
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until

DEADLINE_S = 10.0


def _open_files_under(directory: Path) -> list[str]:
    """Files under ``directory`` this process holds open (from /proc/self/fd)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                out.append(target)
    return out


def _packet(seq: int) -> TappedPacket:
    return TappedPacket(
        "opus", 48000, b"\xf8\xff\xfe", seq, seq * 960, 1234, False, time.monotonic()
    )


async def test_a_write_error_that_is_not_an_oserror_fails_the_recording_with_its_reason(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    recordings = relay.services.recordings
    assert recordings is not None
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = body["session_id"]
    recorder = recordings.begin(session_id)
    assert recorder is not None
    tap = recorder.tap("candidate")
    tap.on_packet(_packet(1))
    # What a forwarding bug could hand the recorder: a sequence number no RTP packet has,
    # which the packet log cannot encode (struct.error, not an OSError).
    tap.on_packet(_packet(1 << 16))

    async def row() -> tuple[str, str | None]:
        rows = await relay.sql(
            "SELECT status, status_reason FROM recordings WHERE id = $1", recorder.recording_id
        )
        return (rows[0]["status"], rows[0]["status_reason"]) if rows else ("", None)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while (current := await row())[0] != "failed":
        assert loop.time() < deadline, current
        await asyncio.sleep(0.05)  # polling for a condition, with a deadline
    reason = current[1]
    assert reason is not None and reason.startswith("write failed: struct.error: "), reason
    sessions = await relay.sql(
        "SELECT recording_status FROM interview_sessions WHERE id = $1", session_id
    )
    assert sessions[0]["recording_status"].startswith("failed: write failed: struct.error")
    assert relay.counter("relay_recordings_failed_total", stage="write") == 1
    # Let go of while the session still runs: not live, not held by the writer thread, no
    # file of its packet logs left open.
    await wait_until(lambda: recordings.live == {}, DEADLINE_S, "the recorder to leave live")
    await wait_until(lambda: recordings.writing == 0, DEADLINE_S, "the writer to let go")
    assert await asyncio.to_thread(_open_files_under, recorder.directory) == []
