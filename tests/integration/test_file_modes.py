"""What the relay writes is its own user's only: directories 0700, files 0600. Real files:
a recorded interview (a real aiortc browser, the simulator as the interviewer), the
embedded PostgreSQL's data directory, the state key."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.db.embedded_pg import postgres_os_user, start_embedded_postgres
from relay.sealing import KEY_FILE, load_or_create_key
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import encode_opus, speech_like, wait_until
from tests.integration.recording_helpers import TimedBrowser, connect, hang_up, wait_recording
from tests.support.processes import wait_exited

SPEECH = encode_opus(speech_like(1.6))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes_under(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (itself included), by relative path."""
    out = {".": _mode(root)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = _mode(path)
    return out


def _wider_than_private(modes: dict[str, int], root: Path) -> dict[str, str]:
    return {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }


@pytest.fixture
async def browser() -> AsyncIterator[TimedBrowser]:
    made = TimedBrowser.create()
    yield made
    await made.peer.close()


async def test_recordings_are_readable_by_the_relay_user_only(
    make_relay: MakeRelay, browser: TimedBrowser, tmp_path: Path
) -> None:
    # As an older version left it: the recordings directory 0755, a recording 0755/0644.
    root = tmp_path / "recordings"
    old = root / "is_old"
    old.mkdir(parents=True)
    (old / "recording.ogg").write_bytes(b"OggS")
    for path, mode in ((root, 0o755), (old, 0o755), (old / "recording.ogg", 0o644)):
        path.chmod(mode)
    relay = await make_relay(overrides={"recording": {"directory": str(root)}})
    # Closed at start: the old recording is out of every other user's reach.
    await wait_until(lambda: _mode(root) == 0o700, 10, "the recordings directory closed")

    session_id = await connect(relay, browser)
    mic = browser.peer.mic
    assert mic is not None
    mic.play(SPEECH)
    await browser.peer.wait_type("conversation.item.input_audio_transcription.completed", 20)
    session_dir = root / session_id
    # While the interview runs: the session's directory and its packet logs.
    live = await asyncio.to_thread(_modes_under, session_dir)
    assert {"meta.json", "candidate.rlog", "interviewer.rlog", "events.jsonl"} <= set(live)
    assert _wider_than_private(live, session_dir) == {}
    await hang_up(relay, session_id)
    item = await wait_recording(relay, session_id, "ready")
    assert item["format"] == "ogg"
    # Finalised (in the renderer's worker process): the audio, transcript and manifest.
    done = await asyncio.to_thread(_modes_under, session_dir)
    assert {"recording.ogg", "transcript.jsonl", "manifest.json"} <= set(done)
    assert _wider_than_private(done, session_dir) == {}
    assert _mode(root) == 0o700


async def test_the_embedded_databases_data_dir_is_private(traversable_tmp_path: Path) -> None:
    data_dir = traversable_tmp_path / "state"
    pg = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        mode = _mode(data_dir)
    finally:
        await asyncio.to_thread(pg.stop)
    await wait_exited(pg.pid, 60)
    # As root, postgres runs as its own user, which must enter (never list) data_dir.
    assert mode == (0o701 if postgres_os_user() is not None else 0o700)
    # One created by an older version (the umask's 0755) is closed at the next start.
    await asyncio.to_thread(data_dir.chmod, 0o755)
    pg = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        assert _mode(data_dir) == (0o701 if postgres_os_user() is not None else 0o700)
    finally:
        await asyncio.to_thread(pg.stop)
    await wait_exited(pg.pid, 60)


def test_the_state_key_and_its_directory_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    load_or_create_key("", data_dir)
    assert (_mode(data_dir), _mode(data_dir / KEY_FILE)) == (0o700, 0o600)
    # A key copied in by hand (its mode the umask's), in a directory made by hand.
    other = tmp_path / "copied"
    other.mkdir(mode=0o755)
    other.chmod(0o755)
    key = os.urandom(32)
    (other / KEY_FILE).write_text(base64.b64encode(key).decode() + "\n")
    (other / KEY_FILE).chmod(0o644)
    assert load_or_create_key("", other) == key
    assert (_mode(other), _mode(other / KEY_FILE)) == (0o700, 0o600)
