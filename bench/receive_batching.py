"""The event loop's receive path per datagram: uvloop's own UDP transport next to the
relay's media sockets (``relay.media.udp``), watching every datagram and batching.

Run from the repository root (loopback only; no network namespace needed):

    .venv/bin/python -m bench.receive_batching

This process plays the relay: pinned to core 0, on uvloop, it opens ``--sockets`` UDP
sockets on 127.0.0.1 (60: the legs of 30 interviews) and sends every datagram it
receives on to a sink, as the fast path forwards. A sender process pinned to core 1 sends
``--rate`` datagrams a second (3,000: 30 interviews' audio both ways) round-robin over
the sockets, paced by the clock, and drains the sink. For each variant the receiver's CPU
per datagram (``getrusage`` of the loop's thread) and its sleeps per datagram (voluntary
context switches: the wake-ups) are measured over ``--window`` seconds, the variants
interleaved in each round so the machine's drift falls on all of them:

* ``uvloop``: ``loop.create_datagram_endpoint``, the loop's transport (the control: what
  the relay's legs used before);
* ``watching``: the media sockets with ``batch_s = 0``, one wake-up per datagram;
* ``batching``: the media sockets with the shipped window (``media.receive_batch_ms``).

Nothing here forwards (no SRTP): the figures are the receive path's and the kernel's, and
the difference between the variants is the saving batching brings on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from typing import Any

import uvloop

from relay.config import MediaConfig
from relay.media import udp

VARIANTS = ("uvloop", "watching", "batching")
DATAGRAM = os.urandom(100)  # an Opus frame of speech plus SRTP's header and tag
WARMUP_S = 0.5


class Forward(asyncio.DatagramProtocol):
    """Sends each datagram on to the sink, as the fast path sends each packet on."""

    def __init__(self, sink: tuple[str, int], counter: list[int]) -> None:
        self.sink = sink
        self.counter = counter
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counter[0] += 1
        self.transport.sendto(data, self.sink)


def send(targets: list[tuple[str, int]], sink: socket.socket, rate: int, seconds: float) -> None:
    """The sender's loop: ``rate`` datagrams a second round-robin, for ``seconds``."""
    sink.setblocking(False)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    interval = 1 / rate
    # The receiver times its window from this line (the interpreter's start-up, about a
    # second, must not fall inside it).
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    due = time.monotonic()
    end = due + seconds
    i = 0
    while due < end:
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.sendto(DATAGRAM, targets[i % len(targets)])
        i += 1
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            pass
    out.close()


async def run_variant(
    variant: str, sockets: int, rate: int, window_s: float, batch_s: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    counter = [0]
    transports: list[Any] = []
    media = udp.MediaSockets(loop, batch_s if variant == "batching" else 0.0)
    try:
        for _ in range(sockets):
            if variant == "uvloop":
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: Forward(sink.getsockname(), counter), local_addr=("127.0.0.1", 0)
                )
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                protocol = Forward(sink.getsockname(), counter)
                transport = udp.MediaDatagramTransport(loop, sock, protocol, media)
                protocol.connection_made(transport)
                media.add(transport)
            transports.append(transport)
        targets = [t.get_extra_info("sockname") for t in transports]
        sender = await asyncio.create_subprocess_exec(
            "taskset",
            "-c",
            "1",
            sys.executable,
            "-m",
            "bench.receive_batching",
            "--sender",
            json.dumps(
                {
                    "targets": targets,
                    "sink_fd": sink.fileno(),
                    "rate": rate,
                    "seconds": WARMUP_S + window_s + 0.3,
                }
            ),
            pass_fds=(sink.fileno(),),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert sender.stdout is not None
            if await asyncio.wait_for(sender.stdout.readline(), 60) != b"ready\n":
                raise RuntimeError("the sender did not start")
            await asyncio.sleep(WARMUP_S)
            before = resource.getrusage(resource.RUSAGE_THREAD)
            count0 = counter[0]
            started = time.monotonic()
            await asyncio.sleep(window_s)
            after = resource.getrusage(resource.RUSAGE_THREAD)
            count = counter[0] - count0
            # A busy machine wakes the loop late: the window is what really elapsed.
            elapsed = time.monotonic() - started
        finally:
            await sender.wait()
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        sleeps = after.ru_nvcsw - before.ru_nvcsw
        return {
            "datagrams": count,
            "window_measured_s": round(elapsed, 3),
            "us_per_datagram": round(1e6 * cpu / max(1, count), 2),
            "datagrams_per_wakeup": round(count / max(1, sleeps), 2),
        }
    finally:
        for transport in transports:
            transport.close()
        media.close()
        sink.close()


async def measure_async(
    sockets: int, rate: int, window_s: float, rounds: int, batch_s: float
) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            results[variant].append(await run_variant(variant, sockets, rate, window_s, batch_s))
    row: dict[str, Any] = {
        "harness": "receive_batching",
        "sockets": sockets,
        "rate": rate,
        "window_s": window_s,
        "rounds": rounds,
        "batch_ms": round(batch_s * 1000, 3),
    }
    for variant, runs in results.items():
        row[variant] = {
            key: [r[key] for r in runs]
            for key in ("us_per_datagram", "datagrams_per_wakeup", "datagrams", "window_measured_s")
        }
    return row


def measure(
    sockets: int, rate: int, window_s: float, rounds: int, batch_ms: float | None = None
) -> dict[str, Any]:
    """One run of every variant ``rounds`` times, on uvloop, pinned to core 0; the
    batching variant's window ``batch_ms`` (None: the configured default).

    Runs its own loop: call it from a thread of its own when a loop is running."""
    here = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("needs two cores")
    batch_s = (MediaConfig().receive_batch_ms if batch_ms is None else batch_ms) / 1000
    os.sched_setaffinity(0, {0})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(measure_async(sockets, rate, window_s, rounds, batch_s))
    finally:
        os.sched_setaffinity(0, here)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| receive path (per round) | µs of CPU per datagram received and sent on |"
        " datagrams per wake-up | CPU / uvloop's transport |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r.get("harness") != "receive_batching":
            continue
        control = r["uvloop"]["us_per_datagram"]
        for variant, label in (
            ("uvloop", "uvloop's UDP transport (the control)"),
            ("watching", "media sockets, watching (`receive_batch_ms = 0`)"),
            ("batching", f"media sockets, batching ({r['batch_ms']:g} ms, shipped)"),
        ):
            us = r[variant]["us_per_datagram"]
            ratios = [round(a / b, 2) for a, b in zip(us, control, strict=True)]
            lines.append(
                f"| {label}: {r['sockets']} sockets, {r['rate']} datagrams/s |"
                f" {us} | {r[variant]['datagrams_per_wakeup']} | {ratios} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receive_batching", description=__doc__)
    parser.add_argument("--sockets", type=int, default=60, help="1..500")
    parser.add_argument("--rate", type=int, default=3000, help="datagrams/s, 100..20000")
    parser.add_argument("--window", type=float, default=5.0, help="s per variant, 1..30")
    parser.add_argument("--rounds", type=int, default=3, help="1..10")
    parser.add_argument("--sender", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sender:  # the other core's side (run_variant starts it)
        spec = json.loads(args.sender)
        sink = socket.socket(fileno=spec["sink_fd"])
        send([tuple(t) for t in spec["targets"]], sink, spec["rate"], spec["seconds"])
        return
    if (
        not 1 <= args.sockets <= 500
        or not 100 <= args.rate <= 20_000
        or not 1 <= args.window <= 30
        or not 1 <= args.rounds <= 10
    ):
        parser.error("keep it bounded: --sockets 1..500, --rate 100..20000, --window 1..30 s")
    # Here, not at the top: the sender (above) imports this module too, and bench.run
    # pre-encodes audio at import, a second of start-up the sender does not need.
    from bench.run import report_row

    row = measure(args.sockets, args.rate, args.window, args.rounds)
    report_row("receive-batching", row, table([row]))


if __name__ == "__main__":
    main()
