"""Relay CPU added by recording, in one process, without a network: the project's
``OpusPassthrough`` forwarding N sessions' packets (both directions, 50 packets/s each, real
time) with and without a recorder; runs alternate, CPU from ``os.times`` (all threads: the
writer thread included). The network stack's cost is the same in both and left out, so
this isolates what recording adds to each received packet.

    .venv/bin/python -m bench.recording_tap --sessions 20 --seconds 10 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiortc.rtp import RtpPacket

from relay.media.forwarding import DirectionStats, OpusPassthrough
from relay.media.tracks import BoundedQueueTrack
from relay.recording.recorder import RecordingWriter, SessionRecorder

PACKETS_PER_S = 50
OPUS_PT = 111


def cpu() -> float:
    t = os.times()
    return t.user + t.system


async def run(sessions: int, seconds: float, record: bool, root: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    writer = RecordingWriter() if record else None
    forwarders: list[OpusPassthrough] = []
    for s in range(sessions):
        recorder = None
        if writer is not None:
            recorder = SessionRecorder(
                recording_id=f"rec_{s}",
                session_id=f"s{s}",
                directory=root / f"s{s}",
                instance_id="bench",
                audio_format="ogg",
                on_failed=lambda r: None,
                on_closed=lambda r: None,
                loop=loop,
            )
            writer.add(recorder)
        for leg in ("candidate", "interviewer"):
            forwarder = OpusPassthrough(
                None,  # type: ignore[arg-type]  # never started: packets are fed directly
                BoundedQueueTrack(50),
                DirectionStats("browser_to_upstream"),
                frozenset({OPUS_PT}),
                keep_receiver_reports=False,
                tap=recorder.tap(leg) if recorder else None,
            )
            forwarders.append(forwarder)
    payload = os.urandom(90)  # a typical 32 kb/s Opus packet
    ticks = int(seconds * PACKETS_PER_S)
    start_cpu, start = cpu(), time.perf_counter()
    for tick in range(ticks):
        for index, forwarder in enumerate(forwarders):
            packet = RtpPacket(
                payload_type=OPUS_PT,
                sequence_number=tick & 0xFFFF,
                timestamp=tick * 960,
                ssrc=1000 + index,
            )
            packet.payload = payload
            await forwarder.on_rtp(packet, 0)
        delay = start + (tick + 1) / PACKETS_PER_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    if writer is not None:
        await asyncio.to_thread(writer.close)  # its last pass counts too
    used = cpu() - start_cpu
    packets = ticks * len(forwarders)
    return {
        "mode": "recording" if record else "passthrough",
        "sessions": sessions,
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_s": round(used, 4),
        "us_per_packet": round(1e6 * used / packets, 2),
    }


async def main_async(args: argparse.Namespace) -> None:
    rows = []
    for _ in range(args.repeat):
        for record in (False, True):
            root = Path(tempfile.mkdtemp(prefix="bench-tap-"))
            try:
                row = await run(args.sessions, args.seconds, record, root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
    off = statistics.median(r["us_per_packet"] for r in rows if r["mode"] == "passthrough")
    on = statistics.median(r["us_per_packet"] for r in rows if r["mode"] == "recording")
    # A session receives 100 packets a second (50 each way).
    print(
        json.dumps(
            {
                "passthrough_us_per_packet": off,
                "recording_us_per_packet": on,
                "extra_ms_cpu_per_session_second": round((on - off) * 100 / 1000, 3),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.sessions <= 200 or not 1 <= args.seconds <= 60 or not 1 <= args.repeat <= 9:
        parser.error("bounded: 1..200 sessions, 1..60 s, 1..9 repeats")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
