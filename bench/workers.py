"""Sessions per machine: `relay serve --workers 1` vs `--workers 2`, same run, same load.

Run inside a private network namespace (loopback only), from the repository root:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.workers'

For each point the script starts ``relay serve --workers W`` (embedded PostgreSQL in a
data directory kept across points, so only the first start initialises it) against one
external ``relay simulate`` process as the upstream (the same for every point, so the
upstream's cost does not favour either side). The load generator is this process: it
runs N interviews' set-up as a candidate's browser does (POST /api/realtime-session, an
aiortc peer's offer, POST /api/webrtc-exchange, ICE + DTLS until connected), at most C at
a time, each on a fresh TCP connection (so the kernel's SO_REUSEPORT spreads them over the
workers), then hangs each one up (DELETE). Measured: completed set-ups per second of wall
time and the set-up latency percentiles. Points run in ABBA order (1, 2, 2, 1, ...) so a
machine whose speed drifts during the run does not favour one side.

What it measures is the set-up path (HTTP, PostgreSQL, the upstream mint and SDP
exchange, ICE, DTLS: the relay's CPU-heavy part per interview); it does not measure how
many interviews can stay live at once. Bounded: at most 200 sessions per point,
concurrency 32, 5 repeats, 60 s per session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.config import IceConfig
from relay.media.ice import rtc_configuration

RESULTS_DIR = Path(__file__).resolve().parent / "results"
URL_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+/)")
SIM_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+/v1)")
SESSION_TIMEOUT_S = 60.0


async def _start(
    args: list[str], env: dict[str, str], pattern: re.Pattern[str]
) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    url = ""
    async with asyncio.timeout(180):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"{args[0]} exited early: {lines}")
            line = raw.decode().strip()
            lines.append(line)
            if not url and (match := pattern.search(line)):
                url = match[1]
                if args[0] == "simulate":
                    break
            if url and line.startswith("rt_"):
                break
    return proc, url, lines


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _one(http: aiohttp.ClientSession, url: str, token: str) -> float:
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    pc = RTCPeerConnection(rtc_configuration(IceConfig()))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("oai-events")
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def _changed() -> None:
            if pc.connectionState == "connected":
                connected.set()

        # The page's body: the recording notice was shown (required while recording).
        notice = {"recording_notice_shown": True}
        async with http.post(url + "api/realtime-session", headers=auth, json=notice) as resp:
            created = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"create: {resp.status} {created}")
        await pc.setLocalDescription(await pc.createOffer())
        body = {
            "session_id": created["session_id"],
            "type": "offer",
            "sdp": pc.localDescription.sdp,
        }
        async with http.post(url + "api/webrtc-exchange", json=body, headers=auth) as resp:
            answer = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"exchange: {resp.status} {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(connected.wait(), SESSION_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        async with http.delete(url + f"api/sessions/{created['session_id']}", headers=auth):
            pass
        return elapsed
    finally:
        await pc.close()


async def _point(url: str, token: str, sessions: int, concurrency: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    async def guarded(http: aiohttp.ClientSession) -> None:
        async with sem:
            try:
                latencies.append(await _one(http, url, token))
            except Exception as exc:  # counted and reported, the point goes on
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(guarded(http) for _ in range(sessions)))
        wall = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)

    return {
        "sessions": sessions,
        "concurrency": concurrency,
        "completed": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "setups_per_s": round(len(latencies) / wall, 2),
        "setup_ms_p50": pct(0.5),
        "setup_ms_p95": pct(0.95),
        "setup_ms_mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }


async def run_workers(
    args: argparse.Namespace, sink: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """The points in ABBA order; each row goes to ``sink`` as it is measured."""
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY", "OPENAI", "DATABASE", "REDIS"))
    }
    sim, sim_url, _ = await _start(["simulate", "--port", "0"], base_env, SIM_LINE)
    order: list[int] = []
    for i in range(args.repeat):
        order += [1, 2] if i % 2 == 0 else [2, 1]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-", dir=args.data_parent) as tmp:
        # The embedded PostgreSQL's system user must enter it when run as root.
        os.chmod(tmp, 0o711)
        env = {
            **base_env,
            "RELAY__SERVER__DATA_DIR": str(Path(tmp) / "state"),
            "RELAY__SERVER__DRAIN_TIMEOUT_S": "5",
            "RELAY__LIMITS__PER_USER_CONCURRENT_SESSIONS": "1000",
            "RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE": "100000",
            "RELAY__LIMITS__FAILED_AUTH_PER_MINUTE": "100000",
            "RELAY__SESSION__MAX_DURATION_S": "30",
            "OPENAI_API_KEY": "sk-sim-local",
            "OPENAI_BASE_URL": sim_url,
            "RELAY_OPERATOR_TOKEN": "bench-operator-token-0123456789ab",
        }
        try:
            for workers in order:
                proc, url, lines = await _start(
                    ["serve", "--port", "0", "--workers", str(workers)], env, URL_LINE
                )
                token = next(line for line in lines if line.startswith("rt_"))
                try:
                    await _point(url, token, min(8, args.sessions), args.concurrency)  # warm-up
                    row = await _point(url, token, args.sessions, args.concurrency)
                finally:
                    await _stop(proc)
                row.update(harness="workers", workers=workers, cpus=os.cpu_count())
                rows.append(row)
                sink(row)
        finally:
            await _stop(sim)
    return rows


async def main(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"

    def sink(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    rows = await run_workers(args, sink)
    print(table(rows))
    print(f"results: {out}")
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | set-ups/s | set-up p50 (ms) | set-up p95 (ms) | completed | errors |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['setups_per_s']} | {row['setup_ms_p50']} |"
            f" {row['setup_ms_p95']} | {row['completed']} | {row['errors']} |"
        )
    by: dict[int, list[float]] = {}
    for row in rows:
        by.setdefault(row["workers"], []).append(row["setups_per_s"])
    if 1 in by and 2 in by and statistics.fmean(by[1]) > 0:
        ratio = statistics.fmean(by[2]) / statistics.fmean(by[1])
        lines += ["", f"Workers 2 / workers 1 (mean set-ups per second): **{ratio:.2f}**"]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--data-parent",
        default=None,
        help="where the embedded PostgreSQL's temporary data directory goes (default TMPDIR)",
    )
    parser.add_argument("--table", help="re-print the table of a results file")
    return parser


if __name__ == "__main__":
    ns = parser().parse_args()
    if ns.table:
        print(table([json.loads(line) for line in Path(ns.table).read_text().splitlines()]))
        sys.exit(0)
    if not (1 <= ns.sessions <= 200 and 1 <= ns.concurrency <= 32 and 1 <= ns.repeat <= 5):
        sys.exit("bounds: --sessions 1..200, --concurrency 1..32, --repeat 1..5")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(ns)))
