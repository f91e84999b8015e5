"""The relay under test: ``relay serve`` started in the benchmark's data directory with a
mode's settings, its candidate, and what its operator endpoints say (``/api/stats``,
``/metrics``), including waiting until it is idle or settled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu_accounting import descendants, proc_cpu
from bench.ga_upstream import UPSTREAM_PORT

RELAY_PORT = 18091
OPERATOR_TOKEN = "op_bench_" + "x" * 24
# Relay modes: (media.fast_path, recording.enabled, media.receive_batch_ms or None for the
# shipped window). "fast", "watch" and "aiortc" record nothing, so they compare forwarding
# alone; "watch" is the fast path woken for every datagram (no batching); "rec" is the
# fast path with recording on (as shipped); "inline" is "fast" with the compiled loop on
# the event loop's thread (media.forwarding_thread = false, as before the forwarder thread).
RELAY_MODES: dict[str, tuple[bool, bool, str | None]] = {
    "fast": (True, False, None),
    "inline": (True, False, None),
    # The same with a 2 ms receive batching window (the default before the compiled loop).
    "fast2": (True, False, "2"),
    "pyfast": (True, False, None),
    "watch": (True, False, "0"),
    "aiortc": (False, False, None),
    "rec": (True, True, None),
}

# ``--relay-env KEY=VALUE``: extra settings for every relay of the run (an A/B of one key).
EXTRA_RELAY_ENV: dict[str, str] = {}


def base_relay_env(data_dir: Path) -> dict[str, str]:
    """What every benchmark's ``relay serve`` gets: this environment without any relay,
    OpenAI, database or Redis setting of the caller's, the data directory, quiet logs, a
    short drain, the operator token and the benchmark's upstream."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY", "OPENAI", "DATABASE", "REDIS"))
    }
    env.update(
        RELAY__SERVER__DATA_DIR=str(data_dir),
        RELAY__SERVER__LOG_LEVEL="WARNING",
        RELAY__SERVER__DRAIN_TIMEOUT_S="2",
        RELAY_OPERATOR_TOKEN=OPERATOR_TOKEN,
        OPENAI_API_KEY="sk-bench-not-a-real-key",
        OPENAI_BASE_URL=f"http://127.0.0.1:{UPSTREAM_PORT}/v1",
    )
    return env


def relay_env(data_dir: Path, mode: str) -> dict[str, str]:
    fast_path, recording, batch_ms = RELAY_MODES[mode]
    env = base_relay_env(data_dir)
    if batch_ms is not None:
        env["RELAY__MEDIA__RECEIVE_BATCH_MS"] = batch_ms
    env.update(
        RELAY__LIMITS__PER_USER_CONCURRENT_SESSIONS="1000",
        RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE="100000",
        RELAY__LIMITS__GLOBAL_MAX_SESSIONS="1000",
        # "pyfast": the fast path in Python even where the compiled loop is built.
        RELAY__MEDIA__COMPILED_FAST_PATH="false" if mode == "pyfast" else "true",
        RELAY__MEDIA__FAST_PATH="true" if fast_path else "false",
        RELAY__RECORDING__ENABLED="true" if recording else "false",
        RELAY__MEDIA__FORWARDING_THREAD="false" if mode == "inline" else "true",
    )
    env.update(EXTRA_RELAY_ENV)
    return env


def add_user(data_dir: Path) -> str:
    """A candidate with plenty of interview seconds; returns its token."""
    out = subprocess.run(
        # --create: the benchmark's data folder is new, its database made here on purpose.
        [sys.executable, "-m", "relay", "users", "add", "--email", "bench@localhost"]
        + ["--seconds", "100000000", "--create"],
        env=relay_env(data_dir, "fast"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = next((w for w in out.stdout.split() if w.startswith("rt_")), None)
    if token is None:
        raise RuntimeError(f"no token from `relay users add`: {out.stdout!r} {out.stderr!r}")
    return token


class RelayProcess:
    """``relay serve`` pinned to one CPU, in the benchmark's data directory."""

    def __init__(
        self,
        data_dir: Path,
        mode: str,
        cpu: int,
        profile: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        # --profile: the relay runs under cProfile, which writes its stats at exit.
        profiler = ["-m", "cProfile", "-o", profile] if profile else []
        # ``settings``: more of the relay's environment (RELAY__SECTION__KEY: value).
        self.process = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, *profiler, "-m", "relay", "serve"]
            + ["--port", str(RELAY_PORT)],
            env=relay_env(data_dir, mode) | (settings or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.pid = self.process.pid

    async def ready(self, within_s: float = 90) -> None:
        assert self.process.stdout is not None
        stdout = self.process.stdout
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(stdout.readline)
            if not line:
                raise RuntimeError("relay serve exited during start-up")
            if re.search(r"listening on http://", line):
                # Drain the rest of the banner off the loop, so the pipe never fills.
                asyncio.get_running_loop().run_in_executor(None, stdout.read)
                return
        raise TimeoutError("relay serve did not start")

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the relay process (all threads) and of the
        processes it started and still runs (the recordings' render pool), so recording
        work done off the relay's own process is counted. The embedded PostgreSQL runs
        detached (its parent is init) and is not counted."""
        user = system = 0.0
        for pid in (self.pid, *descendants(self.pid)):
            with contextlib.suppress(OSError):
                times = proc_cpu(pid)
                user, system = user + times[0], system + times[1]
        return user, system

    def status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{self.pid}/fd"))
        return out

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


async def operator_get(http: aiohttp.ClientSession, path: str) -> aiohttp.ClientResponse:
    """An operator endpoint of the relay under test (read, then released)."""
    async with http.get(
        f"http://127.0.0.1:{RELAY_PORT}/{path}",
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    ) as resp:
        resp.raise_for_status()
        await resp.read()
        return resp


async def relay_metrics(http: aiohttp.ClientSession) -> str:
    return await (await operator_get(http, "metrics")).text()


async def relay_stats(http: aiohttp.ClientSession) -> dict[str, Any]:
    body: dict[str, Any] = await (await operator_get(http, "api/stats")).json()
    return body


async def receive_counters(http: aiohttp.ClientSession) -> dict[str, Any] | None:
    """How the relay read its media sockets so far (``/api/stats`` ``media_receive``)."""
    try:
        receive: dict[str, Any] | None = (await relay_stats(http)).get("media_receive")
    except Exception:
        return None
    return receive


def wakeups_in_window(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any]:
    """Datagrams the relay read per wake-up in the window (and its batching window)."""
    if not before or not after:
        return {}
    woken = (after["wakeups"] + after["polls"]) - (before["wakeups"] + before["polls"])
    datagrams = after["datagrams"] - before["datagrams"]
    return {
        "relay_receive_batch_ms": after["batch_ms"],
        "relay_datagrams_per_wakeup": round(datagrams / woken, 2) if woken else None,
        # Which fast path forwarded (relay.media.fastloop): "compiled" or "python".
        "relay_forwarding_path": (after.get("forwarding") or {}).get("path"),
    }


async def relay_event_loop(http: aiohttp.ClientSession) -> str | None:
    """Which event loop the relay runs ("uvloop" or "asyncio", server.event_loop)."""
    loop: str | None = ((await relay_stats(http)).get("process") or {}).get("event_loop")
    return loop


async def operator_stats(http: aiohttp.ClientSession) -> dict[str, Any]:
    """What the relay itself says (best effort; its shape belongs to the relay)."""
    try:
        body = await relay_stats(http)
    except Exception as exc:
        return {"error": type(exc).__name__}
    return media_totals(body.get("sessions") or [])


def media_totals(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Forwarding counters summed over the relay's live sessions (from ``/api/stats``)."""
    totals: dict[str, Any] = {"sessions": len(sessions), "fast_path_directions": 0}
    for session in sessions:
        media = session.get("media") or {}
        for direction in ("browser_to_upstream", "upstream_to_browser"):
            d = media.get(direction) or {}
            totals["fast_path_directions"] += 1 if d.get("fast_path") else 0
            totals["forwarded"] = totals.get("forwarded", 0) + d.get("forwarded", 0)
            for kind, count in (d.get("dropped") or {}).items():
                key = f"dropped_{kind}"
                totals[key] = totals.get(key, 0) + count
    return totals


async def process_snapshot(relay: RelayProcess, http: aiohttp.ClientSession) -> dict[str, Any]:
    status = relay.status()
    snapshot: dict[str, Any] = {
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        "threads": status["Threads"],
        "fds": status["fds"],
    }
    body = await relay_stats(http)
    snapshot["tasks"] = (body.get("process") or {}).get("tasks")
    snapshot["live_sessions"] = len(body.get("sessions") or [])
    return snapshot


# The relay frees ended interviews within server.memory_release_delay_s (10 s by default).
SETTLE_S = 12.0


async def settled_snapshot(relay: RelayProcess, http: aiohttp.ClientSession) -> dict[str, Any]:
    """A snapshot once the relay has had time to free what the last sessions left: the
    state a quiet relay stays in, rather than the moment the last session ended."""
    await asyncio.sleep(SETTLE_S)
    return await process_snapshot(relay, http)


async def wait_settled(http: aiohttp.ClientSession) -> None:
    """Until the relay has no live session and no recording live or being finalised."""
    deadline = time.monotonic() + 90
    while True:
        body = await relay_stats(http)
        recordings = body.get("recordings") or {}
        if (
            not body.get("sessions")
            and not recordings.get("live")
            and not recordings.get("finalising")
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("sessions or recordings still live 90 s after the browsers left")
        await asyncio.sleep(0.2)


async def wait_idle(relay: RelayProcess, http: aiohttp.ClientSession) -> None:
    """Until the relay has no live session (each browser hang-up ends its bridge)."""
    deadline = time.monotonic() + 60
    while (await process_snapshot(relay, http))["live_sessions"]:
        if time.monotonic() > deadline:
            raise TimeoutError("sessions still live 60 s after their browsers left")
        await asyncio.sleep(0.2)
