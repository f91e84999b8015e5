"""The recorder's hot path and writer thread: bounded queues that count drops, data on
disk within a flush interval, write failures that fail only the recording."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.media.tap import TappedPacket
from relay.recording import packetlog
from relay.recording.recorder import LegTap, RecordingWriter, SessionRecorder


def packet(seq: int, arrival: float) -> TappedPacket:
    return TappedPacket("opus", 48000, b"\xf8\xff\xfe", seq, seq * 960, 1234, False, arrival)


def test_tap_drops_and_counts_beyond_its_bound() -> None:
    tap = LegTap("candidate", limit=3)
    for seq in range(5):
        tap.on_packet(packet(seq, 0.0))
    assert len(tap.queue) == 3 and tap.dropped == 2 and tap.received == 5
    tap.close()
    tap.on_packet(packet(9, 0.0))
    assert tap.received == 5


async def wait_for(predicate: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_writer_puts_packets_on_disk_within_a_second_and_closes(tmp_path: Path) -> None:
    closed: list[SessionRecorder] = []
    failed: list[SessionRecorder] = []
    writer = RecordingWriter(interval_s=0.05)
    try:
        recorder = SessionRecorder(
            recording_id="rec_0123456789abcdef",
            session_id="is_x",
            directory=tmp_path / "is_x",
            instance_id="test",
            audio_format="ogg",
            on_failed=failed.append,
            on_closed=closed.append,
            loop=asyncio.get_running_loop(),
        )
        writer.add(recorder)
        tap = recorder.tap("candidate")
        now = time.monotonic()
        for seq in range(10):
            tap.on_packet(packet(seq, now + seq * 0.02))
        recorder.on_upstream_event(
            json.dumps(
                {
                    "type": "response.output_audio_transcript.done",
                    "item_id": "i1",
                    "transcript": "Hi",
                }
            )
        )
        log_file = tmp_path / "is_x" / "candidate.rlog"
        started = time.monotonic()
        size = len(packetlog.MAGIC) + 10 * (packetlog.HEADER.size + 3)
        await wait_for(lambda: log_file.exists() and log_file.stat().st_size == size, 1.0)
        assert time.monotonic() - started < 1.0
        records = await asyncio.to_thread(lambda: list(packetlog.read(log_file)))
        assert [r.seq for r in records] == list(range(10))
        assert records[0].arrival == now - recorder.origin
        recorder.stop(now, now + 1.0)
        await wait_for(lambda: closed == [recorder], 2.0)
        events = [
            json.loads(line)
            for line in (tmp_path / "is_x" / "events.jsonl").read_text().splitlines()
        ]
        kinds = [e["kind"] for e in events]
        assert kinds == ["transcript", "clock", "clock"]
        assert failed == []
    finally:
        await asyncio.to_thread(writer.close)


async def test_an_unwritable_directory_fails_only_that_recorder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    failed: list[SessionRecorder] = []
    closed: list[SessionRecorder] = []
    writer = RecordingWriter(interval_s=0.05)
    try:
        recorder = SessionRecorder(
            recording_id="rec_0123456789abcdef",
            session_id="is_y",
            directory=blocker / "is_y",
            instance_id="test",
            audio_format="ogg",
            on_failed=failed.append,
            on_closed=closed.append,
            loop=asyncio.get_running_loop(),
        )
        writer.add(recorder)
        recorder.tap("interviewer").on_packet(packet(1, time.monotonic()))
        await wait_for(lambda: failed == [recorder], 2.0)
        assert recorder.failure is not None and "NotADirectoryError" in recorder.failure
        # Later packets are ignored, not queued.
        recorder.tap("interviewer").on_packet(packet(2, time.monotonic()))
        assert not recorder.tap("interviewer").queue
        recorder.stop(None, None)
        await wait_for(lambda: closed == [recorder], 2.0)
    finally:
        await asyncio.to_thread(writer.close)


def _open_files_under(directory: Path) -> list[str]:
    """Files under ``directory`` this process holds open (from /proc/self/fd)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                out.append(target)
    return out


async def test_any_write_error_fails_the_recorder_once_and_lets_go_of_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failed: list[SessionRecorder] = []
    closed: list[SessionRecorder] = []
    writer = RecordingWriter(interval_s=0.05)
    try:
        recorder = SessionRecorder(
            recording_id="rec_0123456789abcdef",
            session_id="is_z",
            directory=tmp_path / "is_z",
            instance_id="test",
            audio_format="ogg",
            on_failed=failed.append,
            on_closed=closed.append,
            loop=asyncio.get_running_loop(),
        )
        writer.add(recorder)
        tap = recorder.tap("candidate")
        tap.on_packet(packet(1, time.monotonic()))
        # A packet no log can hold (a sequence number beyond 16 bits): not an OSError.
        tap.on_packet(packet(1 << 16, time.monotonic()))
        # Failed and closed without waiting for the session to stop, exactly once.
        await wait_for(lambda: failed == [recorder] and closed == [recorder], 2.0)
        assert recorder.failure is not None
        assert recorder.failure.startswith("struct.error: "), recorder.failure
        await wait_for(lambda: writer.recorders == 0, 2.0)
        assert await asyncio.to_thread(_open_files_under, tmp_path) == []
        tap.on_packet(packet(3, time.monotonic()))
        assert not tap.queue
        recorder.stop(None, None)
        assert (failed, closed) == ([recorder], [recorder])
    finally:
        await asyncio.to_thread(writer.close)
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
