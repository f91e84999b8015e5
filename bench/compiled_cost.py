"""CPU per forwarded packet: the compiled loop next to the Python fast path, kernel included.

Run from the repository root (loopback only; no network namespace needed):

    .venv/bin/python -m bench.compiled_cost

The media section measures the whole relay per packet carried, with everything a relay
does besides forwarding (its aiortc legs' RTCP, ICE consent checks, timers, wake-ups).
This measures only what reading and forwarding a packet costs, in one process with no
event loop running (so no wake-up is counted), the same way for both paths:

* ``--sockets`` UDP sockets play the relay's receiving legs, each with its own
  ``FastOpusForwarder`` (real pylibsrtp sessions, AES-256-GCM; the aiortc objects around
  it stand-ins holding what the fast path reads, as in ``bench/forwarding_cost.py``),
  sending on a real media socket to a sink socket;
* per round a feeder sends one authentic SRTP packet to each of ``--ready`` of them
  (untimed), then the relay side reads every ready socket once and forwards what it read:
  ``MediaSockets.read_ready``, the relay's own code, timed with the process's CPU clock
  (``recvmmsg``/``recvfrom``, unprotect, rewrite, protect, ``sendmmsg``/``sendto``
  including the kernel's loopback delivery to the sink);
* ``compiled``: the media socket set reads through the compiled loop (each forwarder
  hands its direction over after its first packet, as in the relay); ``python``: the
  Python fast path; the two alternate per round of measurement.

``--ready`` is how many datagrams one wake-up finds: about 6 at 30 interviews and 60 at
300 with the shipped 2 ms window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
from types import SimpleNamespace
from typing import Any

from pylibsrtp import Session

from bench.forwarding_cost import rtp_packets, srtp_pair, stand_in_forwarder
from relay.media import udp
from relay.media.fastpath import FastOpusForwarder
from relay.media.forwarding import DirectionStats

PATHS = ("compiled", "python")


class Hook(asyncio.DatagramProtocol):
    """The socket's protocol as the fast path sees it: RTP goes to the forwarder's hook."""

    def __init__(self, forwarder: FastOpusForwarder) -> None:
        self.forwarder = forwarder

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.forwarder.on_datagram(data, 1)


class Rig:
    """``count`` receiving sockets with their forwarders, one sending socket, a sink."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, count: int, compiled: bool, threaded: bool = False
    ) -> None:
        """``threaded``: the compiled loop's forwarder thread reads the sockets (the tests'
        rig); the per-packet harness pumps on the event loop's thread, as it times."""
        self.sockets = udp.MediaSockets(loop, 0.0, compiled=compiled, threaded=threaded)
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sink.setblocking(False)
        self.feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.feeder.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.feeder.bind(("127.0.0.1", 0))
        self.feeder_address = self.feeder.getsockname()
        out_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out_sock.bind(("127.0.0.1", 0))
        self.out = udp.MediaDatagramTransport(
            loop, out_sock, asyncio.DatagramProtocol(), self.sockets
        )
        self.sockets.add(self.out)
        self.senders: list[Session] = []
        self.targets: list[tuple[str, int]] = []
        self.forwarders: list[FastOpusForwarder] = []
        self.stats: list[DirectionStats] = []
        for _ in range(count):
            browser_tx, relay_rx = srtp_pair()
            relay_tx, _ = srtp_pair()
            # The selected pairs: this socket in (its transport is made below, once the
            # forwarder its protocol hands datagrams to exists), the shared media socket
            # out to the sink.
            in_pairs: dict[int, Any] = {}
            out_pairs = {
                1: SimpleNamespace(
                    protocol=SimpleNamespace(transport=self.out),
                    remote_addr=self.sink.getsockname(),
                )
            }
            stats = DirectionStats("browser_to_upstream")
            forwarder, _ = stand_in_forwarder(
                relay_rx, relay_tx, in_pairs=in_pairs, out_pairs=out_pairs, stats=stats
            )
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            transport = udp.MediaDatagramTransport(loop, sock, Hook(forwarder), self.sockets)
            self.sockets.add(transport)
            in_pairs[1] = SimpleNamespace(
                protocol=SimpleNamespace(transport=transport), remote_addr=self.feeder_address
            )
            self.forwarders.append(forwarder)
            self.stats.append(stats)
            self.senders.append(browser_tx)
            self.targets.append(transport.get_extra_info("sockname"))

    def drain(self) -> int:
        got = 0
        while True:
            try:
                self.sink.recv(2048)
            except BlockingIOError:
                return got
            got += 1

    def close(self) -> None:
        self.sockets.close()
        self.sink.close()
        self.feeder.close()


def run(path: str, ready: int, rounds: int) -> dict[str, float]:
    """CPU µs per forwarded packet over ``rounds`` rounds of ``ready`` datagrams each."""
    loop = asyncio.new_event_loop()
    rig = Rig(loop, ready, compiled=path == "compiled")
    try:
        plain = rtp_packets(rounds + 1)
        protected = [[tx.protect(p) for p in plain] for tx in rig.senders]
        cpu = 0.0
        forwarded = 0
        for r in range(rounds + 1):
            for i, target in enumerate(rig.targets):
                rig.feeder.sendto(protected[i][r], target)
            started = time.process_time()
            rig.sockets.read_ready()
            spent = time.process_time() - started
            sent = rig.drain()
            if r == 0:
                continue  # the first packet of each direction goes through Python (setup)
            cpu += spent
            forwarded += sent
        if forwarded != rounds * ready:
            raise RuntimeError(f"{path}: forwarded {forwarded} of {rounds * ready}")
        compiled = sum(s.compiled for s in rig.stats)
        if compiled != (ready if path == "compiled" else 0):
            raise RuntimeError(f"{path}: {compiled} of {ready} directions compiled")
        return {"us_per_packet": round(1e6 * cpu / forwarded, 2)}
    finally:
        rig.close()
        loop.close()


def measure(ready_counts: list[int], packets: int, rounds: int) -> dict[str, Any]:
    row: dict[str, Any] = {"harness": "compiled_cost", "packets": packets, "rounds": rounds}
    for ready in ready_counts:
        per_path: dict[str, list[float]] = {p: [] for p in PATHS}
        for _ in range(rounds):
            for path in PATHS:
                per_path[path].append(run(path, ready, max(1, packets // ready))["us_per_packet"])
        row[f"ready_{ready}"] = per_path
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| datagrams per wake-up | compiled loop: µs of CPU per forwarded packet (per round)"
        " | Python fast path | compiled / Python |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if row.get("harness") != "compiled_cost":
            continue
        for key, per_path in row.items():
            if not key.startswith("ready_"):
                continue
            c, p = per_path["compiled"], per_path["python"]
            ratios = [round(a / b, 2) for a, b in zip(c, p, strict=True)]
            lines.append(f"| {key[6:]} | {c} | {p} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled_cost", description=__doc__)
    parser.add_argument("--ready", default="6,60", help="datagrams per wake-up, 1..500 each")
    parser.add_argument("--packets", type=int, default=30_000, help="per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="1..10")
    args = parser.parse_args(argv)
    ready = [int(x) for x in str(args.ready).split(",")]
    if (
        not all(1 <= r <= 500 for r in ready)
        or not 1000 <= args.packets <= 500_000
        or not 1 <= args.rounds <= 10
    ):
        parser.error("keep it bounded: --ready 1..500, --packets 1000..500000, --rounds 1..10")
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # the relay's core in the media section
    from bench.run import report_row  # (bench.run pre-encodes audio at import)

    row = measure(ready, args.packets, args.rounds)
    report_row("compiled-cost", row, table([row]))


if __name__ == "__main__":
    main()
