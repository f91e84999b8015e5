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
relay with ``media.fast_path = true``, as shipped: the compiled loop when it is built, on
its forwarder thread), ``inline`` (the compiled loop on the event loop's thread,
``media.forwarding_thread = false``), ``pyfast`` (the same fast path in Python,
``media.compiled_fast_path = false``) and
``aiortc`` (``media.fast_path = false``: aiortc's receiver and sender carry the packets).
``--generator compiled`` hands the endpoints' audio to compiled code once each session
is up (``bench/compiled_endpoints.py``), so the generator carries hundreds of sessions;
the direct control keeps aiortc's own media path whatever the generator.

The relay's CPU is read from ``/proc/<pid>/stat`` (all its threads; the embedded
PostgreSQL is a separate process), the generator's own from ``os.times``; a generator
above 0.85 of its core is flagged ``generator_saturated`` and such a point says nothing
about the relay.

This module runs the points (the sweep, first audio one session at a time, open-close
cycles) and the command line; its parts each have a module: ``bench.ga_upstream`` (the
upstream), ``bench.relay_process`` (the relay under test and what its operator endpoints
say), ``bench.session_setup`` (one interview end to end), ``bench.cpu_accounting``
(``/proc``) and ``bench.shipped_report`` (the tables).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import compiled_endpoints
from bench.cpu_accounting import cpu_by_process, others_cpu_delta, steal_seconds
from bench.ga_upstream import UPSTREAM_PORT, GaUpstream
from bench.loop_lag import LoopLag
from bench.prometheus import gc_pauses
from bench.quiet import wait_for_quiet
from bench.relay_process import (
    EXTRA_RELAY_ENV,
    RELAY_MODES,
    RelayProcess,
    add_user,
    operator_stats,
    process_snapshot,
    receive_counters,
    relay_event_loop,
    relay_metrics,
    settled_snapshot,
    wait_idle,
    wait_settled,
    wakeups_in_window,
)
from bench.run import RESULTS_DIR, Pair, analyse
from bench.session_setup import open_session, probe_hops
from bench.shipped_report import GENERATOR_SATURATED, first_audio_table, table
from bench.wire import WireProbe

MODES = ("direct", "fast", "inline", "fast2", "pyfast", "watch", "aiortc", "rec")


def wire_pids(wire: WireProbe | None) -> set[int]:
    return {wire.pid} if wire is not None else set()


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
                result.update(media.lateness_summary())
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
