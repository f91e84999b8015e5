"""The shipped relay end to end: ``relay serve`` against a GA-shaped upstream.

Run inside a private network namespace (loopback only), from the repository root:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench'

This process is the load generator, pinned to CPU 1: every candidate's "browser" peer,
and the upstream, an aiohttp + aiortc server speaking the OpenAI Realtime GA surface
(``POST /v1/realtime/client_secrets``, ``POST /v1/realtime/calls`` answering with SDP and
a ``Location``, ``POST /v1/realtime/calls/{id}/hangup``; it opens no data channel
itself, answers the relay's ``oai-events`` channel with ``session.created`` and plays
its own pre-encoded audio, as the model speaks). For each point it starts the real
``relay serve`` (embedded PostgreSQL, in-process cache) pinned to CPU 0 with ``taskset``,
and every session goes the whole way: admission (``POST /api/realtime-session`` with a
user token), the exchange (``POST /api/webrtc-exchange``), both legs, events, hang-up.

Modes, interleaved per N in one run: ``direct`` (the browser peer talks straight to the
upstream peer: the same peers and packets without a relay, the control), ``fast`` (the
relay with ``media.fast_path = true``, as shipped: the compiled loop when it is built),
``pyfast`` (the same fast path in Python, ``media.compiled_fast_path = false``) and
``aiortc`` (``media.fast_path = false``: aiortc's receiver and sender carry the packets).
``--generator compiled`` hands the endpoints' audio to compiled code once each session
is up (``bench/compiled_endpoints.py``), so the generator carries hundreds of sessions;
the direct control keeps aiortc's own media path whatever the generator.

The relay's CPU is read from ``/proc/<pid>/stat`` (all its threads; the embedded
PostgreSQL is a separate process), the generator's own from ``os.times``; a generator
above 0.85 of its core is flagged ``generator_saturated`` and such a point says nothing
about the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from bench import compiled_endpoints
from bench.loop_lag import LoopLag
from bench.prometheus import gc_pauses
from bench.run import (
    RESULTS_DIR,
    Endpoints,
    Pair,
    analyse,
    hook_receiver,
    new_peer,
)
from bench.wire import WireProbe

RELAY_PORT = 18091
UPSTREAM_PORT = 18092
OPERATOR_TOKEN = "op_bench_" + "x" * 24
GENERATOR_SATURATED = 0.85
MODES = ("direct", "fast", "fast2", "pyfast", "watch", "aiortc", "rec")
# Relay modes: (media.fast_path, recording.enabled, media.receive_batch_ms or None for the
# shipped window). "fast", "watch" and "aiortc" record nothing, so they compare forwarding
# alone; "watch" is the fast path woken for every datagram (no batching); "rec" is the
# fast path with recording on (as shipped).
RELAY_MODES: dict[str, tuple[bool, bool, str | None]] = {
    "fast": (True, False, None),
    # The same with a 2 ms receive batching window (the default before the compiled loop).
    "fast2": (True, False, "2"),
    "pyfast": (True, False, None),
    "watch": (True, False, "0"),
    "aiortc": (False, False, None),
    "rec": (True, True, None),
}


# ---------------------------------------------------------------------- the upstream


class GaUpstream(Endpoints):
    """The upstream peers behind a GA-shaped HTTP surface.

    Sessions are set up one exchange at a time (``current``), so the upstream knows
    which session's endpoints an incoming call belongs to; connecting runs in parallel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current: int | None = None
        self.calls: dict[str, int] = {}
        self.hangups = 0
        self.events_in = 0
        # Per session: seconds the upstream spent answering, and when its leg connected.
        self.answer_s: dict[int, float] = {}
        self.answered_at: dict[int, float] = {}
        self.connected_at: dict[int, float] = {}

    async def answer_timed(self, index: int, offer: str) -> str:
        started = time.time()
        answer = await self.answer_as_upstream(index, offer)
        self.answered_at[index] = time.time()
        self.answer_s[index] = self.answered_at[index] - started
        pc = self.pairs[index].upstream
        assert pc is not None

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected_at.setdefault(index, time.time())

        return answer

    async def client_secrets(self, request: web.Request) -> web.Response:
        await request.read()
        n = len(self.calls) + self.hangups
        return web.json_response(
            {
                "value": f"ek_bench_{n}_{time.monotonic_ns()}",
                "expires_at": int(time.time()) + 600,
                "session": {"id": f"sess_bench_{n}", "model": "gpt-realtime"},
            }
        )

    async def calls_post(self, request: web.Request) -> web.Response:
        offer = await request.text()
        index = self.current
        if index is None:
            return web.json_response({"error": {"message": "unexpected call"}}, status=400)
        answer = await self.answer_timed(index, offer)
        pc = self.pairs[index].upstream
        assert pc is not None

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            channel.on("message", self._count_event)
            channel.send(json.dumps({"type": "session.created", "event_id": "event_bench"}))

        call_id = f"rtc_bench_{index}_{time.monotonic_ns()}"
        self.calls[call_id] = index
        return web.Response(
            text=answer,
            status=201,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call_id}"},
        )

    def _count_event(self, message: Any) -> None:
        self.events_in += 1

    async def hangup(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        index = self.calls.pop(call_id, None)
        self.hangups += 1
        if index is not None and index in self.pairs:
            pc = self.pairs[index].upstream
            if pc is not None:
                await pc.close()
        return web.Response(status=200)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/realtime/client_secrets", self.client_secrets)
        app.router.add_post("/v1/realtime/calls", self.calls_post)
        app.router.add_post("/v1/realtime/calls/{call_id}/hangup", self.hangup)
        return app


def steal_seconds(cpus: tuple[int, ...]) -> list[float]:
    """CPU time the hypervisor took from each of ``cpus`` so far (``steal`` in /proc/stat).

    A virtual machine's core can be taken away while a process is running on it: the
    process sees a pause it did not cause (a latency spike at the relay, a gap in the
    generator's sending). It is reported per window rather than hidden."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{c}": i for i, c in enumerate(cpus)}
    out = [0.0] * len(cpus)
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            out[wanted[fields[0]]] = int(fields[8]) / tick
    return out


def cpu_by_process(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every other process (kernel threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def others_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings by the processes alive at the second (a process
    that exited in between is not counted, rather than counted negative)."""
    return sum(max(0.0, used - before.get(pid, 0.0)) for pid, used in after.items())


# ---------------------------------------------------------------------- the relay


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{name}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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
    )
    env.update(EXTRA_RELAY_ENV)
    return env


def add_user(data_dir: Path) -> str:
    """A candidate with plenty of interview seconds; returns its token."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "users", "add", "--email", "bench@localhost"]
        + ["--seconds", "100000000"],
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


async def sent_ssrc(pc: RTCPeerConnection) -> int:
    """A peer's sending audio SSRC, from its statistics."""
    for stats in (await pc.getStats()).values():
        if stats.type == "outbound-rtp":
            return int(stats.ssrc)
    raise RuntimeError("a peer sends no audio")


async def probe_hops(pairs: list[Pair]) -> list[tuple[int, int]]:
    """(SSRC into the relay, SSRC out of it) for both directions of every pair."""
    hops = []
    for pair in pairs:
        assert pair.browser is not None and pair.upstream is not None
        if pair.at_upstream.ssrc is None or pair.at_browser.ssrc is None:
            raise RuntimeError(f"session {pair.index} has not received audio both ways")
        hops += [
            (await sent_ssrc(pair.browser), pair.at_upstream.ssrc),
            (await sent_ssrc(pair.upstream), pair.at_browser.ssrc),
        ]
    return hops


def wire_pids(wire: WireProbe | None) -> set[int]:
    return {wire.pid} if wire is not None else set()


class RelayProcess:
    """``relay serve`` pinned to one CPU, in the benchmark's data directory."""

    def __init__(self, data_dir: Path, mode: str, cpu: int, profile: str | None = None) -> None:
        # --profile: the relay runs under cProfile, which writes its stats at exit.
        profiler = ["-m", "cProfile", "-o", profile] if profile else []
        self.process = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, *profiler, "-m", "relay", "serve"]
            + ["--port", str(RELAY_PORT)],
            env=relay_env(data_dir, mode),
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


# ---------------------------------------------------------------------- sessions


async def open_session(
    pair: Pair,
    upstream: GaUpstream,
    http: aiohttp.ClientSession | None,
    token: str,
    lock: asyncio.Lock,
    events: dict[int, int],
    first_audio: dict[int, dict[str, float]],
    after: Callable[[Pair], None] | None = None,
) -> None:
    """Admission, exchange, both legs connected (``http`` None: direct, no relay); then
    ``after(pair)`` (the compiled generator takes the endpoints' audio over)."""
    upstream.pairs[pair.index] = pair
    pc = pair.browser = new_peer()
    pc.addTransceiver(pair.browser_tx, direction="sendrecv")
    channel = pc.createDataChannel("oai-events")
    events[pair.index] = 0

    def on_message(message: Any) -> None:
        events[pair.index] += 1

    channel.on("message", on_message)
    hook_receiver(pc, pair.at_browser)
    await pc.setLocalDescription(await pc.createOffer())
    offer = str(pc.localDescription.sdp)
    browser_at = watch_browser_leg(pc)
    server_timing = ""
    async with lock:
        upstream.current = pair.index
        if http is None:
            exchange_at = time.time()
            answer = await upstream.answer_timed(pair.index, offer)
        else:
            auth = {"Authorization": f"Bearer {token}"}
            base = f"http://127.0.0.1:{RELAY_PORT}"
            # As the page says it: the recording notice was shown (required while recording).
            notice = {"recording_notice_shown": True}
            async with http.post(f"{base}/api/realtime-session", json=notice, headers=auth) as r:
                body = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"admission {r.status}: {body}")
            exchange = {"session_id": body["session_id"], "type": "offer", "sdp": offer}
            # From the exchange request on (admission is a request of its own).
            exchange_at = time.time()
            async with http.post(f"{base}/api/webrtc-exchange", json=exchange, headers=auth) as r:
                reply = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"exchange {r.status}: {reply}")
                server_timing = r.headers.get("Server-Timing", "")
            answer = reply["sdp"]
        upstream.current = None
    browser_at["answer"] = time.time()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    deadline = time.monotonic() + 60
    while not (
        pc.connectionState == "connected"
        and pair.upstream is not None
        and pair.upstream.connectionState == "connected"
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {pair.index} did not connect")
        await asyncio.sleep(0.05)
    while not pair.at_browser.t:
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {pair.index}: no upstream audio at the browser")
        await asyncio.sleep(0.005)
    relay_side: dict[str, float] = {}
    if http is not None:
        relay_side = await relay_first_audio(http, token, body["session_id"])
    first_audio[pair.index] = (
        relay_side
        | first_audio_split(
            exchange_at,
            pair.at_browser.t[0],
            upstream.answer_s.get(pair.index, 0.0),
            upstream.connected_at.get(pair.index),
            pair.upstream_tx.sent.get(0),
        )
        | first_audio_timeline(
            exchange_at,
            browser_at
            | {
                "upstream_answered": upstream.answered_at.get(pair.index),
                "upstream_connected": upstream.connected_at.get(pair.index),
                "upstream_first_sent": pair.upstream_tx.sent.get(0),
                "heard": pair.at_browser.t[0],
            },
            server_timing,
        )
    )
    if after is not None:
        after(pair)


async def relay_first_audio(
    http: aiohttp.ClientSession, token: str, session_id: str
) -> dict[str, float]:
    """What the relay saw of the reply audio so far: upstream packets it had to drop
    because the browser leg was not up yet (20 ms each), and when the first arrived."""
    async with http.get(
        f"http://127.0.0.1:{RELAY_PORT}/api/sessions/{session_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        media = (await r.json()).get("media") or {}
    out: dict[str, float] = {}
    direction = media.get("upstream_to_browser") or {}
    dropped = (direction.get("dropped") or {}).get("before_connect")
    if dropped is not None:
        out["relay_dropped_before_browser_leg"] = dropped
    first = media.get("time_to_first_upstream_audio_ms")
    if first is not None:
        out["relay_first_upstream_packet_ms"] = first
    return out


def watch_browser_leg(pc: RTCPeerConnection) -> dict[str, float | None]:
    """When the browser's leg completed ICE and connected (DTLS), wall clock."""
    at: dict[str, float | None] = {}

    @pc.on("iceconnectionstatechange")
    def on_ice() -> None:
        if pc.iceConnectionState in ("connected", "completed"):
            at.setdefault("browser_ice", time.time())

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            at.setdefault("browser_connected", time.time())

    return at


def first_audio_timeline(
    exchange_at: float, at: dict[str, float | None], server_timing: str
) -> dict[str, float]:
    """Each step of one session's set-up in ms since the exchange request (``at_*``), and
    the relay's own ``Server-Timing`` segments of the exchange (``st_*``, ms)."""
    out = {f"at_{k}_ms": round((t - exchange_at) * 1000, 2) for k, t in at.items() if t}
    for part in server_timing.split(","):
        name, _, dur = part.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            out[f"st_{name}_ms"] = float(dur)
    return out


def first_audio_split(
    exchange_at: float,
    heard_at: float,
    upstream_answer_s: float,
    upstream_connected_at: float | None,
    upstream_first_sent_at: float | None,
) -> dict[str, float]:
    """Exchange request → first upstream audio heard at the browser, in ms, split into
    the upstream's own share (answering the SDP; from its leg connecting to its first
    packet) and the rest: the relay's share (both legs, forwarding) plus the browser
    leg's ICE/DTLS, which the direct control measures alone."""
    total = heard_at - exchange_at
    own = upstream_answer_s
    if upstream_connected_at is not None and upstream_first_sent_at is not None:
        own += max(0.0, upstream_first_sent_at - upstream_connected_at)
    return {
        "total_ms": round(total * 1000, 2),
        "upstream_ms": round(own * 1000, 2),
        "rest_ms": round((total - own) * 1000, 2),
    }


async def run_point(
    mode: str,
    sessions: int,
    args: argparse.Namespace,
    upstream: GaUpstream,
    data_dir: Path,
    token: str,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "harness": "shipped",
        "mode": mode,
        "sessions": sessions,
        "window_s": args.duration,
    }
    relay = None
    if mode != "direct":
        profile = f"{args.profile}.{mode}.{sessions}" if args.profile else None
        relay = RelayProcess(data_dir, mode, args.relay_cpu, profile)
    # The compiled generator for the relay's points; the control keeps aiortc's media.
    compiled = args.generator == "compiled" and relay is not None
    result["generator"] = "compiled" if compiled else "aiortc"
    new_pair = compiled_endpoints.new_pair if compiled else Pair
    pairs = [new_pair(i, i < args.probes) for i in range(sessions)]
    upstream.pairs = {}
    upstream.answer_s, upstream.answered_at, upstream.connected_at = {}, {}, {}
    events: dict[int, int] = {}
    first_audio: dict[int, dict[str, float]] = {}
    lock = asyncio.Lock()
    media: compiled_endpoints.CompiledMedia | None = None
    if args.generator == "compiled":
        compiled_endpoints.enable(compiled)
        media = compiled_endpoints.CompiledMedia() if compiled else None
    async with aiohttp.ClientSession() as http:
        try:
            if relay is not None:
                await relay.ready()
                result["relay_rss0_mb"] = round(relay.status()["VmRSS"] / 1024, 1)
                result["relay_event_loop"] = await relay_event_loop(http)
                cpu_before = sum(relay.cpu_seconds())
            started = time.monotonic()
            after = media.take_over if media is not None else None
            await asyncio.gather(
                *(
                    open_session(
                        p,
                        upstream,
                        http if relay else None,
                        token,
                        lock,
                        events,
                        first_audio,
                        after,
                    )
                    for p in pairs
                )
            )
            result["setup_s"] = round(time.monotonic() - started, 2)
            for key in ("total_ms", "upstream_ms", "rest_ms"):
                values = sorted(v[key] for v in first_audio.values())
                result[f"first_audio_{key}_p50"] = values[len(values) // 2]
                result[f"first_audio_{key}_max"] = values[-1]
            if relay is not None:
                result["relay_setup_cpu_ms_per_session"] = round(
                    1000 * (sum(relay.cpu_seconds()) - cpu_before) / sessions, 2
                )
            await asyncio.sleep(args.warmup)
            for pair in pairs:
                pair.at_upstream.reset()
                pair.at_browser.reset()
            if media is not None:
                media.reset()
            wire = None
            if relay is not None and args.probes > 0:  # --probes 0: no per-hop latency
                probes = [p for p in pairs if p.probe]
                hops = media.hops(probes) if media is not None else await probe_hops(probes)
                wire = await WireProbe.start(hops, data_dir, args.endpoint_cpu)
            ours = {os.getpid()} | ({relay.pid} if relay else set()) | wire_pids(wire)
            others0 = cpu_by_process(ours)
            cores = (args.relay_cpu, args.endpoint_cpu)
            steal0 = steal_seconds(cores)
            mine0 = sum(os.times()[:2])
            relay0 = relay.cpu_seconds() if relay else (0.0, 0.0)
            metrics0 = await relay_metrics(http) if relay is not None else ""
            receive0 = await receive_counters(http) if relay is not None else None
            stalls = LoopLag()
            watch = asyncio.create_task(stalls.run())
            t0 = time.time()
            await asyncio.sleep(args.duration)
            wall = time.time() - t0
            watch.cancel()
            mine1 = sum(os.times()[:2])
            if media is not None:
                media.collect()
                result["generator_counts"] = media.counts()
            result["endpoint_cpu"] = round((mine1 - mine0) / wall, 3)
            result["generator_saturated"] = result["endpoint_cpu"] > GENERATOR_SATURATED
            result["others_cpu"] = round(others_cpu_delta(others0, cpu_by_process(ours)) / wall, 3)
            # Milliseconds per second the hypervisor took from the relay's core and the
            # generator's: a window with steal says less about the relay.
            result["steal_ms_per_s"] = [
                round(1000 * (after - before) / wall, 1)
                for before, after in zip(steal0, steal_seconds(cores), strict=True)
            ]
            result["endpoint_stalls"] = stalls.stalls
            if wire is not None:
                result.update(await wire.finish(t0, t0 + wall))
            if relay is not None:
                user, system = relay.cpu_seconds()
                cpu = (user + system - sum(relay0)) / wall
                status = relay.status()
                result.update(
                    relay_cpu=round(cpu, 3),
                    relay_cpu_ms_per_session_s=round(1000 * cpu / sessions, 2),
                    relay_sys_share=round((system - relay0[1]) / max(1e-9, cpu * wall), 3),
                    relay_rss_mb=round(status["VmRSS"] / 1024, 1),
                    relay_rss_per_session_mb=round(
                        (status["VmRSS"] / 1024 - result["relay_rss0_mb"]) / sessions, 3
                    ),
                    relay_threads=status["Threads"],
                    relay_fds=status["fds"],
                )
                result["relay_gc"] = gc_pauses(metrics0, await relay_metrics(http))
                result.update(wakeups_in_window(receive0, await receive_counters(http)))
                result["relay_stats"] = await operator_stats(http)
                # A session the relay ended early (e.g. its legs did not connect within
                # session.connect_timeout_s on a starved machine) carries no audio.
                result["sessions_live_at_end"] = result["relay_stats"].get("sessions")
            result["sessions_with_events"] = sum(1 for n in events.values() if n > 0)
            analyse(result, pairs, wall)
            # Per packet carried: robust when a starved process did less work.
            packets = sum(len(p.at_upstream.t) + len(p.at_browser.t) for p in pairs)
            result["packets_in_window"] = packets
            result["endpoint_us_per_packet"] = round(
                1e6 * result["endpoint_cpu"] * wall / max(1, packets), 2
            )
            if relay is not None:
                result["relay_us_per_packet"] = round(
                    1e6 * result["relay_cpu"] * wall / max(1, packets), 2
                )
                # The sessions' whole life, hang-up and (when recording) finalisation
                # included: most of what recording costs comes after the window.
                for pair in pairs:
                    await pair.close()
                life_s = time.monotonic() - started
                await wait_settled(http)
                result["session_life_s"] = round(life_s, 1)
                result["relay_cpu_ms_per_session_s_life"] = round(
                    1000 * (sum(relay.cpu_seconds()) - cpu_before) / (sessions * life_s), 2
                )
        except Exception as exc:  # a point that cannot run is recorded, not fatal
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if media is not None:
                await media.close()
            for pair in pairs:
                with contextlib.suppress(Exception):
                    await pair.close()
            if relay is not None:
                await relay.stop()
    return result


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


async def run_first_audio(
    mode: str,
    samples: int,
    args: argparse.Namespace,
    upstream: GaUpstream,
    data_dir: Path,
    token: str,
) -> dict[str, Any]:
    """Time to first reply audio without queueing: ``samples`` sessions one after
    another against one relay (N = 1 each), every one closed before the next opens."""
    result: dict[str, Any] = {"harness": "shipped", "mode": mode, "first_audio_samples": samples}
    relay = RelayProcess(data_dir, mode, args.relay_cpu) if mode != "direct" else None
    samples_out: list[dict[str, float]] = []
    async with aiohttp.ClientSession() as http:
        try:
            if relay is not None:
                await relay.ready()
            for i in range(samples):
                pair = Pair(i, probe=False)
                upstream.pairs = {}
                upstream.answer_s, upstream.answered_at, upstream.connected_at = {}, {}, {}
                first: dict[int, dict[str, float]] = {}
                try:
                    await open_session(
                        pair, upstream, http if relay else None, token, asyncio.Lock(), {}, first
                    )
                finally:
                    await pair.close()
                samples_out.append(first[i])
                if relay is not None:
                    await wait_idle(relay, http)
        except Exception as exc:  # a point that cannot run is recorded, not fatal
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if relay is not None:
                await relay.stop()
    # The first session of a process pays one-time costs (imports, first certificate):
    # reported apart, left out of the percentiles.
    if samples_out:
        result["first_session"] = samples_out[0]
    steady = samples_out[1:]
    for key in sorted({k for sample in steady for k in sample}):
        values = sorted(sample[key] for sample in steady if key in sample)
        result[f"{key}_p50"] = values[len(values) // 2]
        result[f"{key}_p90"] = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    result["samples"] = samples_out
    return result


def first_audio_table(rows: list[dict[str, Any]]) -> str:
    """Per mode and run: p50 / p90 of each step, ms since the exchange request."""
    keys = sorted({k[:-4] for r in rows for k in r if k.endswith("_p50")})
    lines = [
        "| mode | run | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for r in rows:
        cells = [f"{r.get(k + '_p50', '-')} / {r.get(k + '_p90', '-')}" for k in keys]
        lines.append(f"| {r['mode']} | {r.get('run')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


async def run_cycles(
    cycles: int, args: argparse.Namespace, upstream: GaUpstream, data_dir: Path, token: str
) -> dict[str, Any]:
    """Open and close ``cycles`` sessions (10 at a time, each carrying audio for a moment)
    against one relay; the relay's RSS, tasks, threads and descriptors after the first
    batch vs after the last, once every session has ended and ``SETTLE_S`` has passed
    (``rss_mb_by_batch``: right after each batch, without settling)."""
    result: dict[str, Any] = {
        "harness": "shipped",
        "mode": "cycles",
        "relay_mode": args.cycle_mode,
        "relay_env": dict(EXTRA_RELAY_ENV),
        "cycles": cycles,
    }
    relay = RelayProcess(data_dir, args.cycle_mode, args.relay_cpu)
    batch_size = 10
    async with aiohttp.ClientSession() as http:
        try:
            await relay.ready()
            result["start"] = await process_snapshot(relay, http)
            done = 0
            started = time.monotonic()
            while done < cycles:
                size = min(batch_size, cycles - done)
                pairs = [Pair(done + i, probe=False) for i in range(size)]
                upstream.pairs = {}
                lock = asyncio.Lock()
                events: dict[int, int] = {}
                first: dict[int, dict[str, float]] = {}
                await asyncio.gather(
                    *(open_session(p, upstream, http, token, lock, events, first) for p in pairs)
                )
                for pair in pairs:
                    await pair.close()
                done += size
                await wait_idle(relay, http)
                snapshot = await process_snapshot(relay, http)
                result.setdefault("rss_mb_by_batch", []).append(snapshot["rss_mb"])
                if done == size:
                    result["after_first_batch"] = await settled_snapshot(relay, http)
            result["cycles_s"] = round(time.monotonic() - started, 1)
            result["end"] = await settled_snapshot(relay, http)
            first_batch, end = result["after_first_batch"], result["end"]
            result["growth_after_first_batch"] = {
                key: round(end[key] - first_batch[key], 1)
                for key in ("rss_mb", "threads", "fds", "tasks")
                if end.get(key) is not None and first_batch.get(key) is not None
            }
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await relay.stop()
    return result


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


# ---------------------------------------------------------------------- the table


def by_point(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    points: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row:
            points.setdefault((row["mode"], row["sessions"]), []).append(row)
    return points


def cpu_ratio(relay: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """Relay CPU per bridged session over the direct pair's CPU per session.

    The direct control's cost is the generator's CPU for N browser + N upstream
    endpoints talking to each other: what a pair of aiortc peers costs.
    """
    direct_cpu = direct.get("endpoint_cpu")
    relay_cpu = relay.get("relay_cpu")
    if not direct_cpu or relay_cpu is None:
        return None
    return round(float(relay_cpu) / float(direct_cpu), 3)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per N and relay mode: CPU ratios against the direct control, per run pairing."""
    points = by_point(rows)
    out: list[dict[str, Any]] = []
    for n in sorted({r["sessions"] for r in rows}):
        directs = points.get(("direct", n), [])
        for mode in RELAY_MODES:
            runs = points.get((mode, n), [])
            if not runs or not directs:
                continue
            # Pair each relay run with the direct run of the same repeat.
            ratios = [
                cpu_ratio(r, d) for r, d in zip(runs, directs, strict=False) if cpu_ratio(r, d)
            ]
            base = sorted(d["latency_p50_ms"] for d in directs if d.get("latency_p50_ms"))
            median_direct = base[len(base) // 2] if base else None
            rests = sorted(
                d["first_audio_rest_ms_p50"] for d in directs if "first_audio_rest_ms_p50" in d
            )
            direct_rest = rests[len(rests) // 2] if rests else None
            added_p99 = [
                round(r["latency_p99_ms"] - median_direct, 2)
                for r in runs
                if r.get("latency_p99_ms") is not None and median_direct is not None
            ]
            # The direct control's own tail is the generator's and the machine's jitter
            # (both runs have it): the relay's tail over the control's tail, the quietest
            # control run's (one disturbed control window must not hide the relay's tail).
            tails = sorted(d["latency_p99_ms"] for d in directs if d.get("latency_p99_ms"))
            direct_p99 = tails[0] if tails else None
            added_p99_over_tail = [
                round(r["latency_p99_ms"] - direct_p99, 2)
                for r in runs
                if r.get("latency_p99_ms") is not None and direct_p99 is not None
            ]
            out.append(
                {
                    "sessions": n,
                    "mode": mode,
                    "cpu_ratio_vs_direct": ratios,
                    # Per packet carried: relay µs over the direct pair's µs.
                    "per_packet_ratio_vs_direct": [
                        round(r["relay_us_per_packet"] / d["endpoint_us_per_packet"], 3)
                        for r, d in zip(runs, directs, strict=False)
                        if r.get("relay_us_per_packet") and d.get("endpoint_us_per_packet")
                    ],
                    # The same endpoints, measured in the same window as the relay.
                    "cpu_ratio_vs_generator": [
                        round(r["relay_cpu"] / r["endpoint_cpu"], 3) for r in runs
                    ],
                    "relay_ms_per_session": [r["relay_cpu_ms_per_session_s"] for r in runs],
                    "direct_ms_per_session": [
                        round(1000 * d["endpoint_cpu"] / n, 2) for d in directs
                    ],
                    # The relay's own hop, from kernel timestamps at the wire (bench/wire.py):
                    # neither endpoint's scheduling is in it.
                    "hop_ms": [
                        (r["hop_p50_ms"], r["hop_p99_ms"], r["hop_max_ms"])
                        for r in runs
                        if r.get("hop_p99_ms") is not None
                    ],
                    "wire_drops": [r.get("wire_kernel_drops") for r in runs],
                    # The most the hypervisor took from either core in the window (ms/s).
                    "steal_ms_per_s": [max(r.get("steal_ms_per_s") or [0.0]) for r in runs],
                    # End to end (the generator's scheduling included) over the control.
                    "added_p99_ms": added_p99,
                    "added_p99_over_direct_p99_ms": added_p99_over_tail,
                    # Exchange → first upstream audio at the browser, minus the upstream's
                    # own share, minus the same for the direct control (the browser leg).
                    "first_audio_relay_share_ms": [
                        round(r["first_audio_rest_ms_p50"] - direct_rest, 2)
                        for r in runs
                        if r.get("first_audio_rest_ms_p50") is not None and direct_rest is not None
                    ],
                    "lost": [r["frames_missing"] + r["seq_missing"] for r in runs],
                    "not_identical": [r["packets_not_identical"] for r in runs],
                    # Below 0.99, some endpoint fell behind: the point did less work.
                    "received_min": min(r.get("received_ratio_min", 0) for r in runs + directs),
                    "sessions_live_at_end": [r.get("sessions_live_at_end") for r in runs],
                    "generator_saturated": any(
                        r.get("endpoint_cpu", 0) > GENERATOR_SATURATED for r in runs + directs
                    ),
                }
            )
    return out


def gc_cell(row: dict[str, Any]) -> str:
    gc = row.get("relay_gc")
    if not gc:
        return "-"
    return f"{gc.get('gen2_count', 0):.0f} / {gc.get('over_5ms', 0):.0f}"


def hop_cell(hops: list[tuple[float, float, float]]) -> str:
    return ", ".join(f"{p50} / {p99} / {top}" for p50, p99, top in hops) or "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | mode | relay CPU / direct pair CPU (per run) |"
        " per packet (per run) |"
        " relay CPU / generator CPU, same window (per run) | relay ms CPU/s per session |"
        " direct pair ms CPU/s per session |"
        " relay hop at the wire p50 / p99 / max (ms, per run) |"
        " steal in the window (ms/s, per run) | end to end p99 over the direct median (ms) |"
        " lost packets | payloads not identical | first audio, relay's share p50 (ms) |"
        " received, min ratio | relay sessions live at the end | generator saturated |",
        "|" + "---|" * 16,
    ]
    for s in summary(rows):
        lines.append(
            f"| {s['sessions']} | {s['mode']} | {s['cpu_ratio_vs_direct']} |"
            f" {s['per_packet_ratio_vs_direct']} | {s['cpu_ratio_vs_generator']} |"
            f" {s['relay_ms_per_session']} | {s['direct_ms_per_session']} |"
            f" {hop_cell(s['hop_ms'])} | {s['steal_ms_per_s']} | {s['added_p99_ms']} |"
            f" {s['lost']} | {s['not_identical']} |"
            f" {s['first_audio_relay_share_ms']} | {s['received_min']} |"
            f" {s['sessions_live_at_end']} |"
            f" {'YES' if s['generator_saturated'] else 'no'} |"
        )
    lines += [
        "",
        "| mode | N | run | relay core | generator core | other processes (cores) |"
        " received (min ratio) | latency p50 / p99 (ms, end to end) |"
        " relay hop p50 / p99 / p99.9 / max (ms, wire) |"
        " steal, relay's / generator's core (ms/s) | events |"
        " first audio p50: total / upstream / rest (ms) | relay RSS per session (MB) |"
        " relay collections: full / any over 5 ms |"
        " relay datagrams per wake-up (batch window, ms) | error |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {r.get('run')} | {r.get('relay_cpu', '-')} |"
            f" {r.get('endpoint_cpu')} | {r.get('others_cpu')} |"
            f" {r.get('received_ratio_min')} |"
            f" {r.get('latency_p50_ms')} / {r.get('latency_p99_ms')} |"
            f" {r.get('hop_p50_ms', '-')} / {r.get('hop_p99_ms', '-')} /"
            f" {r.get('hop_p999_ms', '-')} / {r.get('hop_max_ms', '-')} |"
            f" {' / '.join(str(x) for x in r.get('steal_ms_per_s', [])) or '-'} |"
            f" {r.get('sessions_with_events', '-')} |"
            f" {r.get('first_audio_total_ms_p50')} / {r.get('first_audio_upstream_ms_p50')} /"
            f" {r.get('first_audio_rest_ms_p50')} |"
            f" {r.get('relay_rss_per_session_mb', '-')} | {gc_cell(r)} |"
            f" {r.get('relay_datagrams_per_wakeup', '-')}"
            f" ({r.get('relay_receive_batch_ms', '-')}) | {r.get('error', '')} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


async def run_shipped(
    args: argparse.Namespace, sink: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """The open-close cycles (``--cycles``) or the sweep; each row goes to ``sink`` as it
    is measured. The caller's CPU affinity is restored at the end."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {args.endpoint_cpu})
    upstream = GaUpstream()
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", UPSTREAM_PORT).start()
    data_dir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        token = await asyncio.to_thread(add_user, data_dir)
        if args.cycles:
            row = await run_cycles(args.cycles, args, upstream, data_dir, token)
            rows.append(row)
            sink(row)
            return rows
        if args.first_audio_samples:
            for run in range(args.repeat):
                for mode in args.modes:
                    row = await run_first_audio(
                        mode, args.first_audio_samples, args, upstream, data_dir, token
                    )
                    row["run"] = run + 1
                    rows.append(row)
                    sink(row)
            return rows
        for run in range(args.repeat):
            for sessions in args.sessions:
                for mode in args.modes:
                    if sessions > args.mode_max.get(mode, sessions):
                        continue  # --mode-max: a mode that cannot carry this many
                    # Every point starts from an idle machine: a virtual machine's CPU
                    # allowance spent by the point before can otherwise be taken back
                    # (as steal) during this one's window.
                    await asyncio.sleep(args.settle)
                    quiet: dict[str, Any] = {}
                    if args.quiet_wait:  # --quiet-wait: other work off the cores first
                        from bench.quiet import wait_for_quiet

                        quiet = await wait_for_quiet(set(), args.quiet_wait)
                    started = time.monotonic()
                    row = await run_point(mode, sessions, args, upstream, data_dir, token)
                    row.update(quiet)
                    row["run"] = run + 1
                    row["point_s"] = round(time.monotonic() - started, 1)
                    rows.append(row)
                    sink(row)
    finally:
        await runner.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
        os.sched_setaffinity(0, affinity)
    return rows


async def main_async(args: argparse.Namespace) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / time.strftime("shipped-%Y%m%d-%H%M%S.jsonl")

    def sink(row: dict[str, Any]) -> None:
        shown = {k: v for k, v in row.items() if "stalls" not in k and k != "samples"}
        print(json.dumps(shown), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    rows = await run_shipped(args, sink)
    if args.first_audio_samples:
        print()
        print(first_audio_table(rows))
    elif not args.cycles:
        print()
        print(table(rows))
    print(f"\nraw results: {out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="the shipped relay, end to end (module docstring)"
    )
    parser.add_argument("--table", metavar="RESULTS", help="only print the table of a results file")
    parser.add_argument("--sessions", default="10,30,60", help="comma-separated session counts")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--duration", type=float, default=20.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before each point")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="then wait up to this many s for other processes to use < 5%% of a core (0..600)",
    )
    parser.add_argument("--probes", type=int, default=4, help="sessions analysed per packet")
    parser.add_argument("--repeat", type=int, default=2, help="runs of the whole sweep")
    parser.add_argument(
        "--cycles", type=int, default=0, help="instead: open and close this many sessions"
    )
    parser.add_argument(
        "--cycle-mode", default="rec", choices=sorted(RELAY_MODES), help="the relay in --cycles"
    )
    parser.add_argument(
        "--first-audio-samples",
        type=int,
        default=0,
        help="instead: this many sequential sessions per mode, time to first reply audio",
    )
    parser.add_argument(
        "--profile", help="write cProfile stats of each relay to PROFILE.<mode>.<N>"
    )
    parser.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every relay of the run, e.g. RELAY__SERVER__GC_FREEZE=false",
    )
    parser.add_argument(
        "--generator",
        choices=("aiortc", "compiled"),
        default="aiortc",
        help="the relay points' endpoints: aiortc's media path, or compiled code once each"
        " session is up (bench/compiled_endpoints.py; up to 600 sessions)",
    )
    parser.add_argument(
        "--mode-max",
        action="append",
        default=[],
        metavar="MODE=N",
        help="run MODE only up to N sessions (e.g. direct=60: the control's generator holds"
        " no more on one core)",
    )
    parser.add_argument("--relay-cpu", type=int, default=0)
    parser.add_argument("--endpoint-cpu", type=int, default=1)
    args = parser.parse_args(argv)
    if args.table:
        return args
    for item in args.relay_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("RELAY__"):
            parser.error(f"--relay-env takes RELAY__SECTION__KEY=VALUE, not {item!r}")
        EXTRA_RELAY_ENV[key] = value
    args.sessions = [int(x) for x in str(args.sessions).split(",")]
    mode_max: dict[str, int] = {}
    for item in args.mode_max:
        mode, sep, most = item.partition("=")
        if not sep or mode not in MODES or not most.isdigit():
            parser.error(f"--mode-max takes MODE=N with a mode of {', '.join(MODES)}")
        mode_max[mode] = int(most)
    args.mode_max = mode_max
    args.modes = [m.strip() for m in str(args.modes).split(",")]
    if not set(args.modes) <= set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")
    if not 0 <= args.first_audio_samples <= 200:
        parser.error("keep it bounded: at most 200 first-audio samples")
    if not 0 <= args.cycles <= 2000:
        parser.error("keep it bounded: at most 2000 cycles")
    if not 0 <= args.settle <= 60:
        parser.error("keep it bounded: --settle 0..60 s")
    if not 0 <= args.quiet_wait <= 600:
        parser.error("keep it bounded: --quiet-wait 0..600 s")
    most = 600 if args.generator == "compiled" else 150
    if not 1 <= args.duration <= 60 or max(args.sessions) > most or not 1 <= args.repeat <= 5:
        parser.error(
            f"keep it bounded: duration 1..60 s, at most {most} sessions"
            " (600 with --generator compiled), 1..5 repeats"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    asyncio.run(main_async(args))
