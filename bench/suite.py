"""Every benchmark section in one run, into one results file, with one report.

Run inside a private network namespace (loopback only), from the repository root, on a
machine with at least two cores:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.suite'

Sections, in this order (``--sections`` picks some):

* ``media``: the shipped relay end to end (``bench/shipped.py``): the direct aiortc peer
  pair (the control, up to 30 sessions, where its generator still holds), the relay on
  its fast path compiled (``fast``; ``fast2`` with a 2 ms batching window), the same in
  Python (``pyfast``), aiortc's path, and the compiled fast path with recording on, at
  10, 30, 100, 300 and 500 sessions (each mode up to its ``--mode-max``); the relay's
  endpoints in compiled code once up (``--generator compiled``); CPU, CPU per
  forwarded packet, added latency, loss, time to first reply audio, RSS per live session.
* ``compiled_cost``: relay CPU per forwarded packet, the compiled loop and the Python
  fast path, kernel included and wake-ups not (``bench/compiled_cost.py``).
* ``srtp_libraries``: SRTP per packet with pylibsrtp's libsrtp and Debian's libsrtp2
  (``bench/srtp_libraries.py``; the second only where it is installed).
* ``forwarding_cost``: where a forwarded packet's CPU goes (``bench/forwarding_cost.py``):
  the fast path's own work, SRTP, and a loopback datagram with and without a wake-up.
* ``receive_batching``: the event loop's receive path per datagram at 60 sockets and
  3,000 datagrams/s: uvloop's transport vs the relay's media sockets, watching and
  batching (``bench/receive_batching.py``).
* ``first_audio``: time to first reply audio one session at a time (N = 1, no queueing
  behind other sessions' set-up), the relay vs the direct control, step by step.
* ``memory``: open-close cycles against one ``relay serve`` (recording on, as shipped):
  RSS, tasks, threads and descriptors after the first batch vs after the last.
* ``workers``: interview set-ups per second with ``relay serve --workers 1`` vs ``2``
  (``bench/workers.py``).
* ``admission``: ``POST /api/realtime-session`` at a fixed rate, cold, warm, Zipf over
  10,000 users (the cache hit rate) and Redis down (``bench/admission.py``).

Every row goes to ``bench/results/suite-<time>.jsonl`` tagged with its section, after a
first row describing the machine and the command; ``--report FILE`` prints the markdown
tables of such a file (what docs/benchmarks.md shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    admission,
    capacity,
    compiled_cost,
    forwarding_cost,
    receive_batching,
    relay_process,
    shipped,
    shipped_report,
    srtp_libraries,
    workers,
)
from bench.run import RESULTS_DIR

Row = dict[str, Any]
Sink = Callable[[Row], None]


# The largest media point: the compiled generator's endpoints hold it on one core.
MEDIA_MAX_SESSIONS = 500


def media_args(quick: bool) -> argparse.Namespace:
    if quick:
        argv = ["--sessions", "10,100", "--duration", "8", "--repeat", "1"]
    else:
        argv = ["--sessions", f"10,30,100,300,{MEDIA_MAX_SESSIONS}", "--duration", "15"]
        argv += ["--repeat", "2", "--quiet-wait", "90"]
    # A longer warm-up: the relay's first full garbage collection after setting up
    # hundreds of sessions at once falls before the window, not in it.
    argv += ["--warmup", "8", "--generator", "compiled"]
    argv += ["--modes", "direct,fast,fast2,pyfast,aiortc,rec"]
    # The direct control's aiortc endpoints hold about 30 sessions on one core; the relay's
    # Python paths saturate its core before 300 (their 100-session points show where);
    # recording is measured where it was before.
    for most in ("direct=30", "rec=30", "fast2=100", "pyfast=100", "aiortc=100"):
        argv += ["--mode-max", most]
    return shipped.parse_args(argv)


def first_audio_args(quick: bool) -> argparse.Namespace:
    samples = "5" if quick else "15"
    argv = ["--first-audio-samples", samples, "--modes", "direct,fast", "--repeat", "2"]
    return shipped.parse_args(argv)


def memory_args(quick: bool) -> argparse.Namespace:
    return shipped.parse_args(["--cycles", "100" if quick else "1000", "--cycle-mode", "rec"])


# The control: Python's own collection (no freezing, no release after interviews).
KEEPER_OFF = ["RELAY__SERVER__GC_FREEZE=false", "RELAY__SERVER__MEMORY_RELEASE_DELAY_S=0"]


def memory_control_args(quick: bool) -> argparse.Namespace:
    argv = ["--cycles", "100" if quick else "400", "--cycle-mode", "rec"]
    for item in KEEPER_OFF:
        argv += ["--relay-env", item]
    return shipped.parse_args(argv)


def workers_args(quick: bool) -> argparse.Namespace:
    argv = ["--sessions", "20", "--repeat", "1"] if quick else ["--sessions", "60", "--repeat", "2"]
    return workers.parser().parse_args(argv)


async def run_media(quick: bool, sink: Sink) -> list[Row]:
    return await shipped.run_shipped(media_args(quick), sink)


async def run_first_audio(quick: bool, sink: Sink) -> list[Row]:
    return await shipped.run_shipped(first_audio_args(quick), sink)


async def run_memory(quick: bool, sink: Sink) -> list[Row]:
    rows = await shipped.run_shipped(memory_args(quick), sink)
    try:
        return rows + await shipped.run_shipped(memory_control_args(quick), sink)
    finally:
        relay_process.EXTRA_RELAY_ENV.clear()


async def run_workers(quick: bool, sink: Sink) -> list[Row]:
    return await workers.run_workers(workers_args(quick), sink)


def admission_args(quick: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    admission.add_arguments(parser)
    argv = (
        ["--admission-phase-s", "5", "--admission-zipf-window-s", "10"]
        + ["--admission-long-requests", "5000", "--admission-long-block", "1000"]
        if quick
        else []
    )
    return parser.parse_args(argv)


async def run_admission(quick: bool, sink: Sink) -> list[Row]:
    args = admission_args(quick)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {args.admission_generator_cpu})
    try:
        rows = await admission.run_admission(args)
    finally:
        os.sched_setaffinity(0, affinity)
    for row in rows:
        sink(row)
    return rows


async def run_forwarding_cost(quick: bool, sink: Sink) -> list[Row]:
    packets, rounds = (2_000, 1) if quick else (20_000, 3)
    row = forwarding_cost.measure(packets, rounds)  # nothing else runs between sections
    sink(row)
    return [row]


async def run_compiled_cost(quick: bool, sink: Sink) -> list[Row]:
    packets, rounds = (3_000, 1) if quick else (30_000, 3)

    def pinned() -> dict[str, Any]:
        # In a thread of its own, pinned to the relay's core (as its harness's main does).
        os.sched_setaffinity(0, {0})
        return compiled_cost.measure([6, 60], packets, rounds)

    row = await asyncio.to_thread(pinned)
    sink(row)
    return [row]


async def run_srtp_libraries(quick: bool, sink: Sink) -> list[Row]:
    packets, rounds = (20_000, 1) if quick else (200_000, 3)
    # Instructions too (callgrind), unless quick or valgrind is missing.
    callgrind = not quick and shutil.which("valgrind") is not None
    row = await asyncio.to_thread(srtp_libraries.measure, packets, rounds, callgrind)
    sink(row)
    return [row]


async def run_receive_batching(quick: bool, sink: Sink) -> list[Row]:
    window, rounds = (2.0, 1) if quick else (5.0, 3)
    # Its own uvloop, in a thread of its own (pinned to the relay's core there).
    row = await asyncio.to_thread(receive_batching.measure, 60, 3000, window, rounds)
    sink(row)
    return [row]


SECTIONS: dict[str, Callable[[bool, Sink], Awaitable[list[Row]]]] = {
    "media": run_media,
    "compiled_cost": run_compiled_cost,
    "srtp_libraries": run_srtp_libraries,
    "forwarding_cost": run_forwarding_cost,
    "receive_batching": run_receive_batching,
    "first_audio": run_first_audio,
    "memory": run_memory,
    "workers": run_workers,
    "admission": run_admission,
}


def machine() -> Row:
    versions: dict[str, str | None] = {}
    for package in ("aiortc", "aioice", "pylibsrtp", "aiohttp", "av"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        **versions,
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


async def main_async(args: argparse.Namespace, argv: list[str]) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / time.strftime("suite-%Y%m%d-%H%M%S.jsonl")

    def write(row: Row) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    write(
        {
            "harness": "suite",
            "suite_section": "run",
            "command": "python -m bench.suite " + shlex.join(argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "sections": args.sections,
        }
    )
    for name in args.sections:

        def sink(row: Row, section: str = name) -> None:
            # Its own key: a harness's rows may have a "section" of their own (admission).
            row["suite_section"] = section
            print(json.dumps({k: v for k, v in row.items() if "stalls" not in k}), flush=True)
            write(row)

        started = time.monotonic()
        print(f"== {name}", flush=True)
        await SECTIONS[name](args.quick, sink)
        took = time.monotonic() - started
        write({"harness": "suite", "suite_section": name, "section_s": took})
    ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write({"harness": "suite", "suite_section": "end", "ended": ended})
    print(report([json.loads(line) for line in out.read_text().splitlines()]))
    print(f"\nraw results: {out}")


def report(rows: list[Row]) -> str:
    """The markdown of every section found in one suite results file."""
    parts: list[str] = []
    head = next((r for r in rows if r.get("suite_section") == "run"), None)
    if head:
        parts.append(f"Command: `{head['command']}`, started {head['started']}.")
        parts.append(f"Machine: `{json.dumps(head['machine'])}`.")
    media = [r for r in rows if r.get("suite_section") == "media" and r.get("harness") == "shipped"]
    if media:
        loops = sorted({str(r["relay_event_loop"]) for r in media if r.get("relay_event_loop")})
        if loops:
            parts.append(f"The relay's event loop: {', '.join(loops)}.")
        parts += ["### Media", shipped_report.table(media)]
        parts += ["### Every relay point by size", capacity.table(media)]
        if any(r.get("mode") == "rec" for r in media):
            parts += ["### Recording on vs off", recording_table(media)]
    compiled = section(rows, "compiled_cost")
    if compiled:
        parts += [
            "### CPU per forwarded packet: the compiled loop and the Python fast path",
            compiled_cost.table(compiled),
        ]
    libraries = section(rows, "srtp_libraries")
    if libraries:
        parts += ["### SRTP per packet: the two libsrtp", srtp_libraries.table(libraries)]
    costs = section(rows, "forwarding_cost")
    if costs:
        parts += ["### Where a forwarded packet's CPU goes", forwarding_cost.table(costs)]
    batching = section(rows, "receive_batching")
    if batching:
        parts += [
            "### Reading the media sockets: batched wake-ups",
            receive_batching.table(batching),
        ]
    first = [r for r in section(rows, "first_audio") if "first_audio_samples" in r]
    if first:
        parts += ["### Time to first reply audio, one session at a time", first_audio_report(first)]
    memory = [r for r in rows if r.get("suite_section") == "memory" and r.get("mode") == "cycles"]
    if memory:
        parts += ["### Memory: open-close cycles", cycles_table(memory)]
    rows_workers = [r for r in rows if r.get("suite_section") == "workers" and "workers" in r]
    if rows_workers:
        parts += ["### Workers", workers.table(rows_workers)]
    rows_admission = [r for r in section(rows, "admission") if "section_s" not in r]
    if rows_admission:
        parts += ["### Admission", admission.table(rows_admission)]
    timings = [r for r in rows if "section_s" in r]
    if timings:
        parts.append(
            "Section durations: "
            + ", ".join(f"{r['suite_section']} {r['section_s']:.0f} s" for r in timings)
            + "."
        )
    return "\n\n".join(parts)


def section(rows: list[Row], name: str) -> list[Row]:
    return [r for r in rows if r.get("suite_section") == name]


def first_audio_report(rows: list[Row]) -> str:
    """The steps' table, then the relay's share: the fast path's "rest" (exchange request
    to first audio heard, minus the upstream's own answering and first-packet delay) minus
    the direct control's, per run, at p50 and p90."""
    lines = [shipped_report.first_audio_table(rows), ""]
    for run in sorted({r.get("run") for r in rows}, key=str):
        by_mode = {r["mode"]: r for r in rows if r.get("run") == run}
        direct, fast = by_mode.get("direct"), by_mode.get("fast")
        if not direct or not fast:
            continue
        shares = []
        for q in ("p50", "p90"):
            key = f"rest_ms_{q}"
            if key in direct and key in fast:
                shares.append(f"{q} {round(fast[key] - direct[key], 1)} ms")
        lines.append(f"Run {run}: the relay's share " + ", ".join(shares) + ".")
    return "\n".join(lines)


def recording_table(rows: list[Row]) -> str:
    """Relay CPU per session-second, recording on (``rec``) vs off (``fast``), both on the
    fast path: in the measured window, and over the sessions' whole life (set-up to
    hang-up, plus finalising the recordings, which happens after the window)."""
    lines = [
        "| N | off: window (ms CPU/s per session, per run) | on: window |"
        " off: whole life | on: whole life | extra per recorded session-second (ms CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted({r["sessions"] for r in rows}):
        off = [r for r in rows if r["sessions"] == n and r["mode"] == "fast" and "error" not in r]
        on = [r for r in rows if r["sessions"] == n and r["mode"] == "rec" and "error" not in r]
        if not off or not on:
            continue
        window_off = [r.get("relay_cpu_ms_per_session_s") for r in off]
        window_on = [r.get("relay_cpu_ms_per_session_s") for r in on]
        life_off = [r.get("relay_cpu_ms_per_session_s_life") for r in off]
        life_on = [r.get("relay_cpu_ms_per_session_s_life") for r in on]
        extra = mean_difference(life_on, life_off)
        lines.append(
            f"| {n} | {window_off} | {window_on} | {life_off} | {life_on} |"
            f" {'-' if extra is None else round(extra, 2)} |"
        )
    return "\n".join(lines)


def mean_difference(a: list[Any], b: list[Any]) -> float | None:
    a_values = [float(x) for x in a if x is not None]
    b_values = [float(x) for x in b if x is not None]
    if not a_values or not b_values:
        return None
    return sum(a_values) / len(a_values) - sum(b_values) / len(b_values)


def cycles_table(rows: list[Row]) -> str:
    lines = [
        "| cycles | relay | | at start | after the first batch | at the end | growth |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['cycles']} | {relay_label(r)} | error: {r['error']} |||||")
            continue
        for key, label in (
            ("rss_mb", "RSS (MB)"),
            ("tasks", "asyncio tasks"),
            ("threads", "threads"),
            ("fds", "open descriptors"),
        ):
            lines.append(
                f"| {r['cycles']} | {relay_label(r)} | {label} | {r['start'].get(key)} |"
                f" {r['after_first_batch'].get(key)} | {r['end'].get(key)} |"
                f" {r['growth_after_first_batch'].get(key)} |"
            )
    for r in rows:
        if r.get("rss_mb_by_batch"):
            lines += [
                "",
                f"{relay_label(r)}, RSS after each batch of 10 (MB): {r['rss_mb_by_batch']}",
            ]
    return "\n".join(lines)


def relay_label(row: Row) -> str:
    keeper = "keeper off" if row.get("relay_env") else "as shipped"
    return f"{row.get('relay_mode')}, {keeper}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the harness")
    parser.add_argument("--report", metavar="RESULTS", help="only print a results file's report")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in str(args.sections).split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; sections are {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report:
        print(report([json.loads(line) for line in Path(args.report).read_text().splitlines()]))
        return
    asyncio.run(main_async(args, argv))


if __name__ == "__main__":
    main()
