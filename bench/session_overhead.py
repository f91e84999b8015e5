"""What a live interview costs the relay when no audio flows, next to when it does.

Run inside a private network namespace (loopback only), from the repository root:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.session_overhead'

``relay serve`` (compiled fast path, recording off) pinned to CPU 0 carries ``--sessions``
interviews from this process (the compiled generator of ``bench/compiled_endpoints.py``)
on CPU 1. The relay's CPU is read over a window with both directions' audio flowing, then
over a window after every endpoint stopped sending (each leg still has its aiortc peer:
RTCP sender and receiver reports both ways, ICE consent checks, the data channel, the
bridge's supervision every few seconds). The second figure is what each interview costs
whatever the forwarding; the difference is the forwarding. ``--idle`` first measures the
relay with no interview at all. ``--syscalls`` also counts the relay's system calls and
context switches over the window with audio (``bench/syscall_counts.py``, ``perf stat``);
``--perf-record PREFIX`` samples the relay's CPU over each window into
``PREFIX.with-audio.data`` and ``PREFIX.without-audio.data`` (``perf record``).
``--endings K`` then ends K interviews, one every ``--ending-gap`` seconds, while the rest
stay live, and reads the relay's full collections over that time and the 15 s after: the
memory keeper's, which free the ended interviews (``relay.memory``), how many ran and how
long each paused the relay (``relay_gc_pause_seconds``, generation 2);
``--pause-share`` sets the relay's ``server.memory_release_pause_share`` for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import compiled_endpoints, syscall_counts
from bench.ga_upstream import UPSTREAM_PORT, GaUpstream
from bench.prometheus import gc_pauses
from bench.relay_process import RelayProcess, add_user, relay_metrics
from bench.run import Pair
from bench.session_setup import open_session


async def relay_cpu_over(
    relay: RelayProcess, window_s: float, perf_out: Path | None = None
) -> float:
    """The relay's CPU (cores) over ``window_s``; sampled into ``perf_out`` meanwhile."""
    recording = (
        asyncio.ensure_future(syscall_counts.record_over(relay.pid, window_s, perf_out))
        if perf_out is not None
        else None
    )
    before = sum(relay.cpu_seconds())
    started = time.monotonic()
    await asyncio.sleep(window_s)
    cores = (sum(relay.cpu_seconds()) - before) / (time.monotonic() - started)
    if recording is not None:
        await recording  # perf writes its file after the window: not counted in it
    return cores


# After the last ending, how long full collections are still counted: longer than the
# memory keeper's delay (10 s), so that the collection for the last ones is in.
ENDINGS_SETTLE_S = 15.0


async def end_interviews(
    http: aiohttp.ClientSession,
    media: compiled_endpoints.CompiledMedia,
    pairs: list[Pair],
    gap_s: float,
) -> dict[str, Any]:
    """End ``pairs`` one every ``gap_s`` (their peers close, so the relay ends them), the
    others live; the relay's full collections meanwhile and for ENDINGS_SETTLE_S after."""
    before = await relay_metrics(http)
    started = time.monotonic()
    for pair in pairs:
        media.release(pair)
        await pair.close()
        await asyncio.sleep(gap_s)
    await asyncio.sleep(ENDINGS_SETTLE_S)
    pauses = gc_pauses(before, await relay_metrics(http))
    count = int(pauses["gen2_count"])
    return {
        "endings": len(pairs),
        "endings_over_s": round(time.monotonic() - started, 1),
        "full_collections": count,
        "full_collection_ms_each": round(pauses["gen2_total_ms"] / count, 1) if count else None,
    }


async def measure(
    sessions: int,
    window_s: float,
    idle: bool,
    syscalls: bool = False,
    perf_record: str | None = None,
    endings: int = 0,
    ending_gap_s: float = 2.0,
    pause_share: float | None = None,
) -> dict[str, Any]:
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    upstream = GaUpstream()
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", UPSTREAM_PORT).start()
    data_dir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    row: dict[str, Any] = {"harness": "session_overhead", "sessions": sessions}
    settings = {}
    if pause_share is not None:
        settings["RELAY__SERVER__MEMORY_RELEASE_PAUSE_SHARE"] = str(pause_share)
        row["pause_share"] = pause_share
    relay = RelayProcess(data_dir, "fast", 0, settings=settings)
    compiled_endpoints.enable(True)
    media = compiled_endpoints.CompiledMedia()
    pairs = [compiled_endpoints.new_pair(i, False) for i in range(sessions)]
    try:
        token = await asyncio.to_thread(add_user, data_dir)
        async with aiohttp.ClientSession() as http:
            await relay.ready()
            if idle:
                await asyncio.sleep(3)
                row["relay_core_idle"] = round(await relay_cpu_over(relay, window_s), 4)
            lock = asyncio.Lock()
            await asyncio.gather(
                *(
                    open_session(p, upstream, http, token, lock, {}, {}, media.take_over)
                    for p in pairs
                )
            )
            await asyncio.sleep(8)  # the set-up's garbage collected before the window
            if syscalls:
                with_audio, counts = await asyncio.gather(
                    relay_cpu_over(relay, window_s),
                    syscall_counts.count_over(relay.pid, window_s),
                )
                # 100 packets a second per interview are forwarded (50 each way).
                packets = 100 * sessions * window_s
                row["syscalls_with_audio"] = counts
                row["syscalls_per_packet"] = round(counts.get("all", 0) / packets, 2)
                row["wakeups_per_packet"] = round(counts.get("context_switches", 0) / packets, 3)
            else:
                with_audio = await relay_cpu_over(relay, window_s, _perf_out(perf_record, "with"))
            media.stop_sending()
            await asyncio.sleep(3)
            without = await relay_cpu_over(relay, window_s, _perf_out(perf_record, "without"))
            row.update(
                relay_core_with_audio=round(with_audio, 4),
                relay_core_without_audio=round(without, 4),
                ms_per_session_s_with_audio=round(1000 * with_audio / sessions, 3),
                ms_per_session_s_without_audio=round(1000 * without / sessions, 3),
                # 100 packets a second per interview (50 each way) were forwarded.
                us_per_packet_forwarding_only=round(
                    1e6 * (with_audio - without) / (100 * sessions), 2
                ),
            )
            if endings:
                row.update(await end_interviews(http, media, pairs[:endings], ending_gap_s))
    finally:
        await media.close()
        for pair in pairs:
            await pair.close()
        await relay.stop()
        await runner.cleanup()
        compiled_endpoints.enable(False)
        shutil.rmtree(data_dir, ignore_errors=True)
        os.sched_setaffinity(0, affinity)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| interviews | relay core, no interview | with audio | without audio (RTCP, ICE,"
        " supervision) | ms CPU/s per interview, with / without audio |"
        " µs per forwarded packet, the forwarding alone |",
        "|---|---|---|---|---|---|",
    ]
    counted = []
    for r in rows:
        if r.get("harness") != "session_overhead":
            continue
        if "syscalls_with_audio" in r:
            counted.append(r)
        lines.append(
            f"| {r['sessions']} | {r.get('relay_core_idle', '-')} | {r['relay_core_with_audio']} |"
            f" {r['relay_core_without_audio']} | {r['ms_per_session_s_with_audio']} /"
            f" {r['ms_per_session_s_without_audio']} | {r['us_per_packet_forwarding_only']} |"
        )
    ended = [r for r in rows if r.get("endings")]
    if ended:
        lines += [
            "",
            "| interviews | pause share | ended, over (s) | full collections |"
            " pause of each (ms, mean) |",
            "|---|---|---|---|---|",
        ]
        for r in ended:
            lines.append(
                f"| {r['sessions']} | {r.get('pause_share', 'default')} |"
                f" {r['endings']}, {r['endings_over_s']} |"
                f" {r['full_collections']} | {r['full_collection_ms_each']} |"
            )
    if counted:
        names = [*syscall_counts.SYSCALLS, "all", "context_switches"]
        lines += [
            "",
            "| interviews | per forwarded packet: system calls / context switches | "
            + " | ".join(names)
            + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for r in counted:
            counts = r["syscalls_with_audio"]
            lines.append(
                f"| {r['sessions']} | {r['syscalls_per_packet']} / {r['wakeups_per_packet']} | "
                + " | ".join(str(counts.get(n, "-")) for n in names)
                + " |"
            )
    return "\n".join(lines)


def _perf_out(prefix: str | None, audio: str) -> Path | None:
    return None if prefix is None else Path(f"{prefix}.{audio}-audio.data")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.session_overhead", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100, help="1..500")
    parser.add_argument("--window", type=float, default=10.0, help="s per window, 2..60")
    parser.add_argument("--idle", action="store_true", help="first the relay with no interview")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the relay's system calls over the window with audio (perf stat)",
    )
    parser.add_argument(
        "--perf-record",
        metavar="PREFIX",
        help="sample the relay's CPU over each window into PREFIX.with-audio.data and "
        "PREFIX.without-audio.data (perf record; not with --syscalls)",
    )
    parser.add_argument(
        "--endings",
        type=int,
        default=0,
        help="then end this many interviews and time the full collections that free them",
    )
    parser.add_argument(
        "--ending-gap", type=float, default=2.0, help="s between two endings, 0..10"
    )
    parser.add_argument(
        "--pause-share",
        type=float,
        help="the relay's server.memory_release_pause_share (0: every release delay)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.sessions <= 500 or not 2 <= args.window <= 60:
        parser.error("keep it bounded: --sessions 1..500, --window 2..60 s")
    if not 0 <= args.endings <= min(args.sessions, 100) or not 0 <= args.ending_gap <= 10:
        parser.error("keep it bounded: --endings 0..min(sessions, 100), --ending-gap 0..10 s")
    if (args.syscalls or args.perf_record) and not syscall_counts.available():
        parser.error("--syscalls and --perf-record need perf (Debian: apt install linux-perf)")
    if args.syscalls and args.perf_record:
        parser.error("one perf at a time: --syscalls or --perf-record")
    from bench.run import report_row

    row = asyncio.run(
        measure(
            args.sessions,
            args.window,
            args.idle,
            args.syscalls,
            args.perf_record,
            args.endings,
            args.ending_gap,
            args.pause_share,
        )
    )
    report_row("session-overhead", row, table([row]))


if __name__ == "__main__":
    main()
