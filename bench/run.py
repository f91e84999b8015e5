"""Relay CPU per bridged session and added one-way latency, passthrough vs decode.

Run inside a private network namespace (loopback only), from the repository root:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.run'

This process holds the endpoints (every "browser" and every "upstream" peer) pinned to
CPU 1; for each point it starts ``bench.relay_server`` pinned to CPU 0 with ``taskset``.
Endpoints send pre-encoded Opus (a 100 ms tone burst every second over silence) through
aiortc's ``av.Packet`` path, and receive through the raw RTP hook, so they neither encode
nor decode. Per point: set up N sessions, 3 s of
warm-up, a measured window, then tear down.

Measured per point:
* relay CPU (all threads, ``os.times``) per second of wall time, and per session;
* per-packet one-way latency on probe sessions: each received packet is matched to the
  frame it carries (by payload bytes and RTP timestamp), arrival minus the time that frame
  was handed to the sender; ``direct`` points (browser peer talking straight to the
  upstream peer, same load) are the control, so *added* latency = relay - direct;
* burst-onset latency (payloads decoded offline), comparable across modes;
* packets received vs expected, sequence gaps, relay queue drops, relay loop lag.
Results go to ``bench/results/<time>.jsonl`` and a table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from bench.audio import FRAME, PERIOD_FRAMES, TIME_BASE, onset_times, preencode_bursts
from bench.loop_lag import LoopLag
from relay.config import IceConfig
from relay.media import aiortc_private
from relay.media.ice import rtc_configuration

RELAY_PORT = 18081
ENDPOINT_PORT = 18082
SETUP_CONCURRENCY = 10
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def report_row(name: str, row: dict[str, Any], table: str) -> Path:
    """A one-row harness's ending: its row to ``bench/results/<name>-<time>.jsonl``, its
    table to stdout, the file's path to stderr."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.write_text(json.dumps(row) + "\n")
    print(table)
    print(f"\nraw results: {out}", file=sys.stderr)
    return out


BROWSER_PAYLOADS = preencode_bursts(1000.0)
UPSTREAM_PAYLOADS = preencode_bursts(600.0)


# ---------------------------------------------------------------------- endpoints


class BurstSender(MediaStreamTrack):
    """Paced 20 ms pre-encoded Opus packets; remembers when frame n was handed over."""

    kind = "audio"

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__()
        self.payloads = payloads
        self.n = 0
        self.t0: float | None = None
        self.sent: dict[int, float] = {}

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = time.time()
        else:
            wait = self.t0 + self.n * 0.02 - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        n = self.n
        self.n += 1
        packet = av.Packet(self.payloads[n % PERIOD_FRAMES])
        packet.pts = n * FRAME
        packet.time_base = TIME_BASE
        self.sent[n] = time.time()
        return packet


@dataclass
class Arrivals:
    """What one receiving endpoint saw of one direction (raw RTP, nothing decoded)."""

    keep_payloads: bool
    t: list[float] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    ssrc: int | None = None  # the sender's, as last seen

    def reset(self) -> None:
        self.t, self.seq, self.ts, self.payloads = [], [], [], []

    async def hook(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.t.append(time.time())
        self.seq.append(packet.sequence_number)
        self.ts.append(packet.timestamp)
        self.ssrc = packet.ssrc
        if self.keep_payloads:
            self.payloads.append(bytes(packet.payload))


@dataclass
class Pair:
    """One session's two endpoints: the candidate's browser and the upstream."""

    index: int
    probe: bool
    browser_tx: BurstSender = field(default_factory=lambda: BurstSender(BROWSER_PAYLOADS))
    upstream_tx: BurstSender = field(default_factory=lambda: BurstSender(UPSTREAM_PAYLOADS))
    browser: RTCPeerConnection | None = None
    upstream: RTCPeerConnection | None = None
    # Direction browser → upstream is received at the upstream peer, and vice versa.
    at_upstream: Arrivals = field(init=False)
    at_browser: Arrivals = field(init=False)

    def __post_init__(self) -> None:
        self.at_upstream = Arrivals(self.probe)
        self.at_browser = Arrivals(self.probe)

    async def close(self) -> None:
        for pc in (self.browser, self.upstream):
            if pc is not None:
                await pc.close()


def new_peer() -> RTCPeerConnection:
    return RTCPeerConnection(rtc_configuration(IceConfig()))


def hook_receiver(pc: RTCPeerConnection, arrivals: Arrivals) -> None:
    receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "audio")
    aiortc_private.install_rtp_hook(receiver, arrivals.hook)


class Endpoints:
    def __init__(self) -> None:
        self.pairs: dict[int, Pair] = {}

    async def answer_as_upstream(self, index: int, offer_sdp: str) -> str:
        pair = self.pairs[index]
        pc = pair.upstream = new_peer()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        pc.addTrack(pair.upstream_tx)
        hook_receiver(pc, pair.at_upstream)
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def http_upstream(self, request: web.Request) -> web.Response:
        body = await request.json()
        sdp = await self.answer_as_upstream(int(body["id"]), body["sdp"])
        return web.json_response({"sdp": sdp})

    async def setup(self, pair: Pair, http: aiohttp.ClientSession | None) -> None:
        self.pairs[pair.index] = pair
        pc = pair.browser = new_peer()
        pc.addTransceiver(pair.browser_tx, direction="sendrecv")
        pc.createDataChannel("oai-events")
        hook_receiver(pc, pair.at_browser)
        await pc.setLocalDescription(await pc.createOffer())
        offer = str(pc.localDescription.sdp)
        if http is None:  # direct: the upstream answers the browser itself
            answer = await self.answer_as_upstream(pair.index, offer)
        else:
            url = f"http://127.0.0.1:{RELAY_PORT}/session"
            async with http.post(url, json={"sdp": offer, "id": pair.index}) as resp:
                resp.raise_for_status()
                answer = (await resp.json())["sdp"]
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


# ---------------------------------------------------------------------- analysis


def _signed32(delta: int) -> int:
    delta &= 0xFFFFFFFF
    return delta - (1 << 32) if delta >= 1 << 31 else delta


def packet_latencies(rx: Arrivals, tx: BurstSender, loop: list[bytes]) -> tuple[list[float], int]:
    """Per-packet one-way latency (s), and how many packets were not byte-identical.

    A burst packet's payload says which frame of the loop it is; its arrival time says
    which loop; RTP timestamps (20 ms apart) then place every other packet.
    """
    index = {payload: j for j, payload in enumerate(loop[:5])}
    anchor = next((i for i, p in enumerate(rx.payloads) if p in index), None)
    if anchor is None:
        return [], len(rx.payloads)
    j = index[rx.payloads[anchor]]
    before = [n for n, sent in tx.sent.items() if n % PERIOD_FRAMES == j and sent <= rx.t[anchor]]
    if not before:
        return [], len(rx.payloads)
    n_anchor = max(before)
    latencies: list[float] = []
    mismatched = 0
    for t, ts, payload in zip(rx.t, rx.ts, rx.payloads, strict=True):
        n = n_anchor + round(_signed32(ts - rx.ts[anchor]) / FRAME)
        if payload != loop[n % PERIOD_FRAMES] or n not in tx.sent:
            mismatched += 1
            continue
        latencies.append(t - tx.sent[n])
    return latencies, mismatched


def onset_latencies(rx: Arrivals, tx: BurstSender) -> list[float]:
    sent_onsets = sorted(t for n, t in tx.sent.items() if n % PERIOD_FRAMES == 0)
    out = []
    for heard in onset_times(rx.t, rx.payloads):
        earlier = [s for s in sent_onsets if s <= heard]
        if earlier:
            out.append(heard - earlier[-1])
    return out


def relative_delays(rx: Arrivals) -> list[float]:
    if len(rx.t) < 2:
        return []
    ts = np.unwrap(np.array(rx.ts, dtype=np.float64), period=2**32)
    delay = np.array(rx.t) - (ts - ts[0]) / 48000.0
    return list(delay - delay.min())


def seq_missing(rx: Arrivals) -> int:
    """Sequence-number gaps (loss on the last hop)."""
    if not rx.seq:
        return 0
    seq = np.unwrap(np.array(rx.seq, dtype=np.float64), period=65536)
    return int(seq.max() - seq.min() + 1 - len(np.unique(seq)))


def frames_missing(rx: Arrivals) -> int:
    """20 ms frames absent by RTP timestamp: loss anywhere on the path, relay drops
    included (a relay's sender renumbers sequence numbers, so those hide drops)."""
    if not rx.ts:
        return 0
    ts = np.unwrap(np.array(rx.ts, dtype=np.float64), period=2**32)
    frames = np.unique(np.round((ts - ts.min()) / FRAME))
    return int(frames.max() + 1 - len(frames))


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


# ---------------------------------------------------------------------- a point


async def relay_stats(http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{RELAY_PORT}/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


def others_cpu_seconds(exclude: set[int]) -> float:
    """CPU seconds used so far by every other process on the machine (kernel threads
    included), to tell a disturbed measurement window from a quiet one."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def start_relay(mode: str, relay_cpu: int, keep_rtp_history: bool) -> subprocess.Popen[str]:
    command = [
        "taskset",
        "-c",
        str(relay_cpu),
        sys.executable,
        "-m",
        "bench.relay_server",
        "--mode",
        mode,
        "--port",
        str(RELAY_PORT),
        "--upstream",
        f"http://127.0.0.1:{ENDPOINT_PORT}/upstream",
    ]
    if keep_rtp_history:
        command.append("--keep-rtp-history")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != "READY":
        process.kill()
        raise RuntimeError(f"relay did not start: {line!r}")
    return process


async def run_point(
    mode: str, sessions: int, args: argparse.Namespace, endpoints: Endpoints
) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": mode, "sessions": sessions, "window_s": args.duration}
    if args.keep_rtp_history and mode != "direct":
        result["mode"] = mode + "+rtp-history"
    relay = start_relay(mode, args.relay_cpu, args.keep_rtp_history) if mode != "direct" else None
    pairs = [Pair(i, probe=i < args.probes) for i in range(sessions)]
    endpoints.pairs = {}
    async with aiohttp.ClientSession() as http:
        try:
            relay_http = http if relay is not None else None
            before = await relay_stats(http) if relay else None
            started = time.monotonic()
            for first in range(0, sessions, SETUP_CONCURRENCY):
                batch = pairs[first : first + SETUP_CONCURRENCY]
                await asyncio.gather(*(endpoints.setup(p, relay_http) for p in batch))
            result["setup_s"] = round(time.monotonic() - started, 2)
            if relay and before:
                after = await relay_stats(http)
                result["relay_setup_cpu_ms_per_session"] = round(
                    1000 * (after["cpu"] - before["cpu"]) / sessions, 2
                )
                result["relay_rss0_mb"] = before["rss_mb"]
            await asyncio.sleep(args.warmup)
            for pair in pairs:
                pair.at_upstream.reset()
                pair.at_browser.reset()
            if relay:
                async with http.post(f"http://127.0.0.1:{RELAY_PORT}/reset"):
                    pass
                s0 = await relay_stats(http)
            ours = {os.getpid()} | ({relay.pid} if relay else set())
            others0 = others_cpu_seconds(ours)
            mine0 = sum(os.times()[:2])
            stalls = LoopLag()
            watch = asyncio.create_task(stalls.run())
            t0 = time.time()
            await asyncio.sleep(args.duration)
            wall = time.time() - t0
            watch.cancel()
            mine1 = sum(os.times()[:2])
            result["endpoint_cpu"] = round((mine1 - mine0) / wall, 3)
            result["others_cpu"] = round((others_cpu_seconds(ours) - others0) / wall, 3)
            result["endpoint_stalls"] = stalls.stalls
            if relay:
                s1 = await relay_stats(http)
                cpu = (s1["cpu"] - s0["cpu"]) / wall
                result.update(
                    relay_cpu=round(cpu, 3),
                    relay_cpu_ms_per_session_s=round(1000 * cpu / sessions, 2),
                    # Per packet received by the relay: comparable across modes even when
                    # a loaded machine delivers fewer packets than were sent.
                    relay_cpu_us_per_packet=round(
                        1e6
                        * (s1["cpu"] - s0["cpu"])
                        / max(1, s1.get("packets_in", 0) - s0.get("packets_in", 0)),
                        2,
                    ),
                    relay_sys_share=round(
                        (s1["sys"] - s0["sys"]) / max(1e-9, s1["cpu"] - s0["cpu"]), 3
                    ),
                    relay_rss_mb=round(s1["rss_mb"], 1),
                    relay_rss_per_session_mb=round(
                        (s1["rss_mb"] - result["relay_rss0_mb"]) / sessions, 3
                    ),
                    relay_threads=s1["threads"],
                    relay_active=s1["active"],
                    relay_modes=s1["modes"],
                    # During the window; "before_connect" is audio that arrived before
                    # the other leg was up (set-up only), so it is not a loss.
                    relay_drops={k: v - s0["drops"][k] for k, v in s1["drops"].items()},
                    relay_drops_total=s1["drops"],
                    relay_lag_p99_ms=round(s1["lag_p99_ms"], 2),
                    relay_lag_max_ms=round(s1["lag_max_ms"], 2),
                    relay_gc=s1["gc"],
                    relay_stalls=s1["stalls"],
                    relay_stall_count=s1["stall_count"],
                    relay_preempted=s1["preempted"] - s0["preempted"],
                )
            analyse(result, pairs, wall)
        except Exception as exc:  # a point that cannot run is recorded, not fatal
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            for pair in pairs:
                with contextlib.suppress(Exception):
                    await pair.close()
            if relay is not None:
                with contextlib.suppress(Exception):
                    async with http.post(f"http://127.0.0.1:{RELAY_PORT}/close") as resp:
                        result["relay_after_close"] = await resp.json()
                relay.terminate()
                relay.wait(timeout=10)
    return result


def analyse(result: dict[str, Any], pairs: list[Pair], wall: float) -> None:
    expected = 50 * wall
    counts, missing, missing_frames, relative = [], 0, 0, []
    exact: list[float] = []
    not_identical = 0
    onsets: list[float] = []
    for pair in pairs:
        for rx, tx, loop in (
            (pair.at_upstream, pair.browser_tx, BROWSER_PAYLOADS),
            (pair.at_browser, pair.upstream_tx, UPSTREAM_PAYLOADS),
        ):
            counts.append(len(rx.t))
            missing += seq_missing(rx)
            missing_frames += frames_missing(rx)
            relative += relative_delays(rx)
            if pair.probe:
                latencies, mismatched = packet_latencies(rx, tx, loop)
                exact += latencies
                not_identical += mismatched
                onsets += onset_latencies(rx, tx)
    relay_stalls = result.get("relay_stalls", [])
    endpoint_stalls = result.get("endpoint_stalls", [])
    # A relay stall with an endpoint stall within 100 ms: the machine paused both processes.
    result["shared_stalls"] = sum(
        1 for t, _ in relay_stalls if any(abs(t - u) < 0.1 for u, _ in endpoint_stalls)
    )
    result.update(
        received_ratio_min=round(min(counts) / expected, 3),
        received_ratio_mean=round(float(np.mean(counts)) / expected, 3),
        seq_missing=missing,
        frames_missing=missing_frames,
        reldelay_p99_ms=ms(pct(relative, 99)),
        latency_samples=len(exact),
        packets_not_identical=not_identical,
        latency_p50_ms=ms(pct(exact, 50)),
        latency_p99_ms=ms(pct(exact, 99)),
        latency_max_ms=ms(max(exact) if exact else None),
        onset_samples=len(onsets),
        onset_p50_ms=ms(pct(onsets, 50)),
    )


# ---------------------------------------------------------------------- main


def _added(row: dict[str, Any], base: dict[str, Any], key: str, base_key: str) -> float | None:
    value, reference = row.get(key), base.get(base_key)
    return None if value is None or reference is None else round(value - reference, 2)


def _losses(drops: dict[str, int]) -> int:
    return sum(v for k, v in drops.items() if k != "before_connect")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per point, then the decode/passthrough ratios per N."""
    direct: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["mode"] == "direct" and "error" not in r:
            direct.setdefault(r["sessions"], r)  # the control: each N's first direct run
    lines = [
        "| mode | N | relay core | relay ms CPU/s per session | endpoints core |"
        " other processes (cores) |"
        " packets received (min ratio) | lost frames | added latency p50 / p99 (ms) |"
        " added onset latency p50 (ms) | relay drops | relay loop lag p99 (ms) |"
        " stalls > 10 ms: relay / endpoints / both at once |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['sessions']} | error: {r['error']} |" + " |" * 10)
            continue
        base = direct.get(r["sessions"], {})
        if r["mode"] == "direct":
            added = f"({r.get('latency_p50_ms')} / {r.get('latency_p99_ms')} end to end)"
            onset = f"({r.get('onset_p50_ms')} end to end)"
        else:
            p50 = _added(r, base, "latency_p50_ms", "latency_p50_ms")
            p99 = _added(r, base, "latency_p99_ms", "latency_p50_ms")
            if r.get("latency_p50_ms") is None:
                added = "n/a (re-encoded)"
            elif p50 is None:
                added = f"n/a, no direct run ({r['latency_p50_ms']} / {r['latency_p99_ms']} e2e)"
            else:
                added = f"{p50} / {p99}"
            onset = str(_added(r, base, "onset_p50_ms", "onset_p50_ms"))
        drops = r.get("relay_drops")
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {r.get('relay_cpu', '-')} |"
            f" {r.get('relay_cpu_ms_per_session_s', '-')} | {r.get('endpoint_cpu')} |"
            f" {r.get('others_cpu', '-')} |"
            f" {r['received_ratio_min']} | {r['frames_missing'] + r['seq_missing']} | {added} |"
            f" {onset} | {'-' if drops is None else _losses(drops)} |"
            f" {r.get('relay_lag_p99_ms', '-')} |"
            f" {r.get('relay_stall_count', len(r.get('relay_stalls', [])))} /"
            f" {len(r.get('endpoint_stalls', []))} /"
            f" {r.get('shared_stalls', 0)} |"
        )
    # With --repeat, the ratios use each point's least disturbed run (fewest stalls that
    # hit both processes at once, i.e. the machine rather than the relay).
    by_point: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["mode"], r["sessions"])
        if key not in by_point or r.get("shared_stalls", 0) < by_point[key].get("shared_stalls", 0):
            by_point[key] = r
    ratios = [
        "",
        "| N | relay CPU, decode / passthrough | added onset latency p50, decode / passthrough |",
        "|---|---|---|",
    ]
    for n in sorted({r["sessions"] for r in rows}):
        fast, slow = by_point.get(("passthrough", n)), by_point.get(("decode", n))
        if not fast or not slow:
            continue
        base = direct.get(n, {})
        cpu = slow.get("relay_cpu", 0) / max(1e-9, fast.get("relay_cpu", 0))
        # A saturated relay cannot show its true cost: the ratio is a lower bound.
        saturated = slow.get("relay_cpu", 0) >= 0.95 or slow.get("received_ratio_min", 1) < 0.99
        cpu_text = f">= {cpu:.1f}x (decode saturated)" if saturated else f"{cpu:.1f}x"
        fast_onset = _added(fast, base, "onset_p50_ms", "onset_p50_ms")
        slow_onset = _added(slow, base, "onset_p50_ms", "onset_p50_ms")
        ratios.append(f"| {n} | {cpu_text} | {slow_onset} ms / {fast_onset} ms |")
    ratios += _recording_table(rows)
    return "\n".join(lines + ratios)


def _recording_table(rows: list[dict[str, Any]]) -> list[str]:
    """Recording vs passthrough, per N: relay CPU per received packet, median over repeats
    (each run alternates the modes), and the extra CPU per recorded session-second
    (a bridged session receives 100 packets a second: 50 each way)."""
    out = [
        "",
        "| N | runs | relay µs CPU per packet, passthrough / recording (median) |"
        " extra ms CPU per recorded session-second | recording / passthrough |",
        "|---|---|---|---|---|",
    ]
    for n in sorted({r["sessions"] for r in rows}):
        cost: dict[str, list[float]] = {"passthrough": [], "recording": []}
        for r in rows:
            if r["sessions"] == n and r["mode"] in cost and "relay_cpu_us_per_packet" in r:
                cost[r["mode"]].append(r["relay_cpu_us_per_packet"])
        if not cost["passthrough"] or not cost["recording"]:
            continue
        off = statistics.median(cost["passthrough"])
        on = statistics.median(cost["recording"])
        extra_ms = (on - off) * 100 / 1000
        out.append(
            f"| {n} | {len(cost['recording'])} | {off:.1f} / {on:.1f} |"
            f" {extra_ms:.2f} | {on / max(1e-9, off):.2f}x |"
        )
    return out if len(out) > 3 else []


async def main_async(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {args.endpoint_cpu})
    endpoints = Endpoints()
    app = web.Application()
    app.router.add_post("/upstream", endpoints.http_upstream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", ENDPOINT_PORT).start()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / time.strftime("%Y%m%d-%H%M%S.jsonl")
    rows = []
    try:
        for sessions in args.sessions:
            # Modes alternate within each repeat, so a machine-wide disturbance is shared.
            for run in range(args.repeat):
                for mode in args.modes:
                    started = time.monotonic()
                    row = await run_point(mode, sessions, args, endpoints)
                    row["run"] = run + 1
                    row["point_s"] = round(time.monotonic() - started, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    finally:
        await runner.cleanup()
    print()
    print(table(rows))
    print(f"\nraw results: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description="relay media benchmark (see module docstring)")
    parser.add_argument("--table", metavar="RESULTS", help="only print the table of a results file")
    parser.add_argument("--sessions", default="10,50,100", help="comma-separated session counts")
    parser.add_argument(
        "--modes",
        default="direct,passthrough,decode",
        help="also: recording (passthrough + recorder)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--probes", type=int, default=4, help="sessions analysed per packet")
    parser.add_argument("--repeat", type=int, default=1, help="runs per point")
    parser.add_argument(
        "--keep-rtp-history",
        action="store_true",
        help="give the relay's senders aiortc's retransmission history back (for comparison)",
    )
    parser.add_argument("--relay-cpu", type=int, default=0)
    parser.add_argument("--endpoint-cpu", type=int, default=1)
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    args.sessions = [int(x) for x in args.sessions.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    if not set(args.modes) <= {"direct", "passthrough", "aiortc", "recording", "decode"}:
        parser.error("modes are direct, passthrough (the fast path), aiortc, recording and decode")
    if not 1 <= args.duration <= 60 or max(args.sessions) > 150 or not 1 <= args.repeat <= 5:
        parser.error("keep it bounded: duration 1..60 s, at most 150 sessions, 1..5 repeats")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
