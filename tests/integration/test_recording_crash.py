"""Crash safety: a real `relay serve` killed with SIGKILL mid-interview; the next start
finalises the recording from what was on disk, and the session row says what happened
(handed over: the page's resume would carry the interview on as part 2)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg

from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.recording_helpers import RATE, decode_stereo, first_loud, rms
from tests.support.processes import free_port
from tests.support.relay_cli import read_banner, start_serving, stop_serving

OPERATOR = "crash-test-operator-token-0123456789"
SPEECH = encode_opus(speech_like(3.0))


@contextlib.asynccontextmanager
async def serving(
    cwd: Path, env: dict[str, str], port: int
) -> AsyncIterator[tuple[str, str, asyncio.subprocess.Process]]:
    """`relay serve` on ``port``: (url, demo token, process)."""
    proc = await start_serving("--port", str(port), env=env, cwd=cwd)
    try:
        url, token = await read_banner(proc, [])
        yield url, token, proc
    finally:
        await stop_serving(proc)


async def test_kill_9_mid_interview_then_restart_finalises_a_playable_recording(
    traversable_tmp_path: Path, database_url: str
) -> None:
    data_dir = traversable_tmp_path / "state"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY", "OPENAI", "DATABASE", "REDIS", "AWS"))
    }
    env |= {
        "RELAY__SERVER__DATA_DIR": str(data_dir),
        "RELAY__SERVER__DRAIN_TIMEOUT_S": "2",
        "RELAY_OPERATOR_TOKEN": OPERATOR,
        "DATABASE_URL": database_url,
        # A configured database gets no demo user unless asked for (server.create_demo_user).
        "RELAY__SERVER__CREATE_DEMO_USER": "true",
    }
    port = free_port()  # the same port again after the crash: the same instance id
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    browser = BrowserPeer()
    try:
        async with (
            serving(traversable_tmp_path, env, port) as (url, token, proc),
            aiohttp.ClientSession() as http,
        ):
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post(
                url + "api/realtime-session", headers=auth, json={"recording_notice_shown": True}
            ) as resp:
                session = await resp.json()
                assert resp.status == 201, session
            session_id = session["session_id"]
            async with http.post(
                url + "api/webrtc-exchange",
                headers=auth,
                json={"session_id": session_id, "type": "offer", "sdp": await browser.offer()},
            ) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
            await browser.accept(answer["sdp"])
            await browser.wait_connected()
            await browser.wait_type("session.created", 10)
            mic = browser.mic
            assert mic is not None
            mic.play(SPEECH)
            await wait_until(lambda: len(mic.sent) > 100, 10, "two seconds of speech sent")
            # Written to disk within about a second: the packet log grows while we watch.
            log_file = data_dir / "recordings" / session_id / "candidate.rlog"
            await wait_until(
                lambda: log_file.exists() and log_file.stat().st_size > 100 * 40,
                3,
                "two seconds of packets on disk",
            )
            proc.kill()  # SIGKILL: no drain, no finalisation, no session finish
            await proc.wait()
            killed_at = time.monotonic()

        async with (
            serving(traversable_tmp_path, env, port) as (url, _, _),
            aiohttp.ClientSession() as http,
        ):
            item: dict[str, object] = {}
            deadline = killed_at + 60
            while item.get("status") != "ready":
                assert time.monotonic() < deadline, item
                async with http.get(url + "api/recordings", headers=operator) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                found = [i for i in body["items"] if i["session_id"] == session_id]
                item = found[0] if found else {}
                await asyncio.sleep(0.2)
            assert item["recovered_after_crash"] is True
            async with http.get(url + f"api/recordings/{item['id']}/audio", headers=operator) as r:
                assert r.status == 200
                audio = await r.read()
    finally:
        await browser.close()

    assert hashlib.sha256(audio).hexdigest() == item["sha256"]
    pcm = decode_stereo(audio)
    # Playable, and it holds the candidate's speech up to the crash (~2 s or more of it).
    assert len(pcm) / RATE > 1.5
    onset = first_loud(pcm[:, 0])
    assert onset is not None
    assert rms(pcm[onset : onset + RATE, 0]) > 0.03
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT state, end_reason, holder_lost_at, recording_notice_shown,"
            " recording_status FROM interview_sessions WHERE id = $1",
            session_id,
        )
    finally:
        await conn.close()
    assert row is not None
    # Connected, with a resume token: handed over to the page's resume (within
    # session.reconnect_grace_s), not closed relay_restarted.
    assert row["state"] == "active" and row["end_reason"] is None
    assert row["holder_lost_at"] is not None
    assert row["recording_notice_shown"] is True
    assert row["recording_status"] == "ready (recovered after a relay crash)"
