"""Every process the relay starts ends with it: the renderer's workers, multiprocessing's
fork server and resource tracker, whether the relay closes (in-process, as in the tests)
or is killed with SIGKILL (`relay serve`, a real process). Real interviews (an aiortc
browser, the simulator as the interviewer) so that a recording is really rendered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.recording_helpers import TimedBrowser, connect, hang_up, wait_recording
from tests.support import leftovers
from tests.support.processes import exited
from tests.support.relay_cli import read_banner, start_serving, stop_serving

SPEECH = encode_opus(speech_like(1.6))
OPERATOR = "lifetime-test-operator-token-of-32-chars"
# How long the processes of a killed relay get to notice and exit.
EXIT_WITHIN_S = 10.0


def _live_descendants(root: int) -> dict[int, str]:
    processes = leftovers.snapshot()
    return {
        pid: processes[pid].command
        for pid in leftovers.descendants(root, processes)
        if processes[pid].state != "Z"
    }


def _renderer_processes(processes: dict[int, str]) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes.items() if "multiprocessing" in cmd}


async def _until_exited(pids: set[int], within_s: float) -> set[int]:
    """Wait (bounded) for every pid to exit; return those still running."""
    deadline = time.monotonic() + within_s
    running = set(pids)
    while running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling for a condition, with a deadline
        running = {pid for pid in running if not await asyncio.to_thread(exited, pid)}
    return running


def _kill_running(pids: set[int]) -> None:
    for pid in pids:
        if not exited(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def _killed_at_the_end(pids: set[int]) -> AsyncIterator[None]:
    """A failing test must not leave what it is about running."""
    try:
        yield
    finally:
        await asyncio.to_thread(_kill_running, pids)


@pytest.fixture
async def browser() -> AsyncIterator[TimedBrowser]:
    made = TimedBrowser.create()
    yield made
    await made.peer.close()


async def test_a_closed_relay_leaves_none_of_the_renderers_processes(
    make_relay: MakeRelay, browser: TimedBrowser
) -> None:
    me = os.getpid()
    before = await asyncio.to_thread(_live_descendants, me)
    relay = await make_relay()
    session_id = await connect(relay, browser)
    mic = browser.peer.mic
    assert mic is not None
    mic.play(SPEECH)
    await browser.peer.wait_type("conversation.item.input_audio_transcription.completed", 20)
    await hang_up(relay, session_id)
    await wait_recording(relay, session_id, "ready")
    started = {
        pid: cmd
        for pid, cmd in (await asyncio.to_thread(_live_descendants, me)).items()
        if pid not in before
    }
    # Rendered in a worker forked from the fork server, with the resource tracker beside.
    assert len(_renderer_processes(started)) >= 3, started
    async with _killed_at_the_end(set(started)):
        await relay.client.close()  # the relay's whole shut-down sequence
        left = await _until_exited(set(started), EXIT_WITHIN_S)
        assert left == set(), {pid: started[pid] for pid in left}


async def test_a_relay_killed_with_sigkill_leaves_none_of_its_processes(
    traversable_tmp_path: Path, database_url: str
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY", "OPENAI", "DATABASE", "REDIS", "AWS"))
    }
    env |= {
        "RELAY__SERVER__DATA_DIR": str(traversable_tmp_path / "state"),
        "RELAY_OPERATOR_TOKEN": OPERATOR,
        "DATABASE_URL": database_url,
        # A configured database gets no demo user unless asked for (server.create_demo_user).
        "RELAY__SERVER__CREATE_DEMO_USER": "true",
    }
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    peer = BrowserPeer()
    proc = await start_serving("--port", "0", env=env, cwd=traversable_tmp_path)
    try:
        url, token = await read_banner(proc, [])
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + "api/realtime-session", headers=auth, json={"recording_notice_shown": True}
            ) as resp:
                session = await resp.json()
                assert resp.status == 201, session
            session_id = session["session_id"]
            async with http.post(
                url + "api/webrtc-exchange",
                headers=auth,
                json={"session_id": session_id, "type": "offer", "sdp": await peer.offer()},
            ) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
            await peer.accept(answer["sdp"])
            await peer.wait_connected()
            mic = peer.mic
            assert mic is not None
            mic.play(SPEECH)
            await wait_until(lambda: len(mic.sent) > 50, 10, "a second of speech sent")
            async with http.delete(url + f"api/sessions/{session_id}", headers=auth) as resp:
                assert resp.status == 204
            status = ""
            deadline = time.monotonic() + 60
            while status != "ready":  # the recording rendered: the renderer's processes exist
                assert time.monotonic() < deadline, status
                async with http.get(url + "api/recordings", headers=operator) as resp:
                    items = (await resp.json())["items"]
                status = next((i["status"] for i in items if i["session_id"] == session_id), "")
                await asyncio.sleep(0.2)  # polling for a condition, with a deadline
        started = await asyncio.to_thread(_live_descendants, proc.pid)
        assert len(_renderer_processes(started)) >= 3, started
        async with _killed_at_the_end(set(started)):
            proc.kill()  # SIGKILL: no shut-down sequence at all
            await proc.wait()
            left = await _until_exited(set(started), EXIT_WITHIN_S)
            assert left == set(), {pid: started[pid] for pid in left}
    finally:
        await peer.close()
        await stop_serving(proc)
