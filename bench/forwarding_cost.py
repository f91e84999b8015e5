"""Where a forwarded packet's CPU goes: the fast path's own work next to the kernel's.

Run from the repository root (no network namespace needed: loopback only):

    .venv/bin/python -m bench.forwarding_cost

The media section measures the whole relay per packet carried (``relay_us_per_packet``).
This splits that figure, in one process and one run, into:

* ``forwarder``: ``FastOpusForwarder`` handling one incoming SRTP datagram, as the
  relay's datagram callback does (SRTP unprotect, header rewrite, the receiver's RTCP
  statistics, SRTP protect, the sender report's counters) with real pylibsrtp sessions
  (AES-256-GCM, what aiortc negotiates first) and the socket's ``sendto`` replaced by a
  no-op: everything of the fast path that is ours;
* ``srtp``: one unprotect plus one protect alone (``SrtpCodec``), the part of the above
  that is libsrtp;
* ``loopback``: one UDP datagram of the same size sent and received on loopback with
  plain sockets (``sendto`` + ``recv``): the kernel's floor per forwarded packet, which
  every relay pays once in and once out, before any event loop is involved;
* ``wakeup``: the same datagram sent to an echo process on the other core and its echo
  awaited with a blocking ``recv``, this process's CPU per exchange: a ``sendto`` and a
  ``recv`` that sleeps and is woken, which is what a relay that is idle between packets
  pays per packet (the media section's relay is: its core is far from busy, see its CPU
  in docs/benchmarks.md).

The aiortc objects around the forwarder are stand-ins holding exactly what the fast
path reads from them (``relay.media.aiortc_private`` names them); nothing here runs an
event loop, so the loop's own per-datagram work (a readiness event, the callback) is
the remainder when these are set against the media section's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import socket
import struct
import time
from types import SimpleNamespace
from typing import Any

from pylibsrtp import Policy, Session

from bench.run import report_row
from relay.media import aiortc_private
from relay.media.fastpath import FastOpusForwarder
from relay.media.forwarding import DirectionStats
from relay.media.sdp import AUDIO_LEVEL_EXTENSION, MID_EXTENSION, RtpLeg

PAYLOAD_BYTES = 80  # a 20 ms Opus frame of speech at ~32 kbit/s
IN_SSRC, OUT_SSRC = 0x1111, 0x2222


def srtp_pair() -> tuple[Session, Session]:
    """An (outbound, inbound) pair of sessions sharing a random AES-256-GCM key."""
    key = os.urandom(44)  # 32-byte key + 12-byte salt
    profile = Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


class NullDatagramTransport:
    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent += 1


def _ignore(data: bytes, component: int) -> None:
    return None


def _started_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def stand_in_forwarder(
    rx_session: Session,
    tx_session: Session,
    *,
    in_pairs: dict[int, Any] | None = None,
    out_pairs: dict[int, Any] | None = None,
    stats: DirectionStats | None = None,
) -> tuple[FastOpusForwarder, NullDatagramTransport]:
    """A started forwarder between stand-in aiortc objects, sending to a null socket.

    ``in_pairs`` / ``out_pairs``: the receiving and the sending leg's selected pairs
    (component → pair), when the caller has real sockets for them; ``stats``: the
    direction's counters, when the caller reads them."""
    out = NullDatagramTransport()
    pair = SimpleNamespace(protocol=SimpleNamespace(transport=out), remote_addr=("127.0.0.1", 9))

    def dtls(nominated: dict[int, Any], rx: Session | None, tx: Session | None) -> Any:
        connection = SimpleNamespace(_nominated=nominated, _queue=queue.Queue())
        return SimpleNamespace(
            transport=SimpleNamespace(_connection=connection), _rx_srtp=rx, _tx_srtp=tx
        )

    in_dtls = dtls({} if in_pairs is None else in_pairs, rx_session, None)
    out_dtls = dtls({1: pair} if out_pairs is None else out_pairs, None, tx_session)
    receiver = SimpleNamespace(transport=in_dtls)
    setattr(receiver, aiortc_private.REMOTE_STREAMS, {})
    in_dtls._rtp_router = SimpleNamespace(ssrc_table={})
    sender = SimpleNamespace(transport=out_dtls, _ssrc=OUT_SSRC)
    for name in (
        aiortc_private.SENDER_NTP,
        aiortc_private.SENDER_RTP_TS,
        aiortc_private.SENDER_PACKETS,
        aiortc_private.SENDER_OCTETS,
    ):
        setattr(sender, name, 0)
    setattr(sender, aiortc_private.SENDER_RTP_STARTED, _started_event())
    extensions = {MID_EXTENSION: 1, AUDIO_LEVEL_EXTENSION: 2}
    leg = RtpLeg(payload_type=111, mid="0", extensions=extensions)
    forwarder = FastOpusForwarder(
        receiver,  # type: ignore[arg-type]
        sender,  # type: ignore[arg-type]
        DirectionStats("browser_to_upstream") if stats is None else stats,
        frozenset({111}),
        incoming=leg,
        outgoing=leg,
    )
    # Not ``start()``, which hooks aiortc's leg: datagrams are handed to ``on_datagram``
    # as the socket's hook hands them; whatever is not RTP (none is sent here) is dropped.
    forwarder.feed_directly(_ignore)
    return forwarder, out


def rtp_packets(count: int) -> list[bytes]:
    """Serialised RTP as a browser sends it: mid and audio-level extensions, Opus payload."""
    ext_body = bytes((0x10, ord("0"), 0x20, 0x85))  # mid "0", audio level 5 (voice)
    ext = struct.pack("!HH", 0xBEDE, 1) + ext_body
    payload = os.urandom(PAYLOAD_BYTES)
    return [
        struct.pack("!BBHII", 0x90, 111, i & 0xFFFF, i * 960, IN_SSRC) + ext + payload
        for i in range(count)
    ]


def per_item_us(run: Any, count: int) -> float:
    started = time.process_time()
    run()
    return round(1e6 * (time.process_time() - started) / count, 3)


def measure(packets: int, rounds: int) -> dict[str, Any]:
    plain = rtp_packets(packets)
    # The forwarder: fresh sessions each round (SRTP's replay window refuses repeats).
    forwarder_us: list[float] = []
    for _ in range(rounds):
        browser_tx, relay_rx = srtp_pair()
        relay_tx, _upstream_rx = srtp_pair()
        protected = [browser_tx.protect(p) for p in plain]
        forwarder, out = stand_in_forwarder(relay_rx, relay_tx)

        def forward(batch: list[bytes] = protected, f: FastOpusForwarder = forwarder) -> None:
            for datagram in batch:
                f.on_datagram(datagram, 1)

        forwarder_us.append(per_item_us(forward, packets))
        if out.sent != packets or forwarder.errors:
            raise RuntimeError(f"forwarded {out.sent} of {packets}, {forwarder.errors} errors")
    # SRTP alone: unprotect + protect per packet.
    srtp_us: list[float] = []
    for _ in range(rounds):
        browser_tx, relay_rx = srtp_pair()
        relay_tx, _ = srtp_pair()
        protected = [browser_tx.protect(p) for p in plain]
        rx, tx = aiortc_private.SrtpCodec(relay_rx), aiortc_private.SrtpCodec(relay_tx)

        def srtp(batch: list[bytes] = protected, rx: Any = rx, tx: Any = tx) -> None:
            for datagram in batch:
                tx.protect(rx.unprotect(datagram))

        srtp_us.append(per_item_us(srtp, packets))
    # The kernel's floor: one loopback datagram of the forwarded size, out and in.
    size = len(protected[0])
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    target, data = b.getsockname(), os.urandom(size)
    loopback_us: list[float] = []
    try:
        for _ in range(rounds):

            def loopback() -> None:
                for _ in range(packets):
                    a.sendto(data, target)
                    b.recv(2048)

            loopback_us.append(per_item_us(loopback, packets))
    finally:
        a.close()
        b.close()
    wakeup_us = [ping_pong_us(size, packets) for _ in range(rounds)]
    return {
        "harness": "forwarding_cost",
        "packets_per_round": packets,
        "rounds": rounds,
        "datagram_bytes": size,
        "forwarder_us": forwarder_us,
        "srtp_us": srtp_us,
        "loopback_us": loopback_us,
        "wakeup_us": wakeup_us,
    }


def echo(sock: socket.socket) -> None:
    """The other core's side of ``ping_pong_us``: echo until an empty datagram."""
    while True:
        data, addr = sock.recvfrom(2048)
        if not data:
            return
        sock.sendto(data, addr)


def ping_pong_us(size: int, count: int) -> float:
    """This process's CPU per datagram exchanged with an echo on the other core (µs)."""
    here = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) < 2:
        raise RuntimeError("needs two cores")
    mine, theirs = 0, 1  # the relay's core and the load generator's in the media section
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:  # the echo: pinned to the other core, exits when told
        try:
            os.sched_setaffinity(0, {theirs})
            echo(server)
        finally:
            os._exit(0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    target, data = server.getsockname(), os.urandom(size)
    try:
        os.sched_setaffinity(0, {mine})
        for _ in range(100):  # both sides running and cached before timing
            client.sendto(data, target)
            client.recv(2048)

        def exchange() -> None:
            for _ in range(count):
                client.sendto(data, target)
                client.recv(2048)

        return per_item_us(exchange, count)
    finally:
        client.sendto(b"", target)
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, here)
        client.close()
        server.close()


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| per forwarded packet (µs of CPU, per round) | the fast path, ours (SRTP included)"
        " | of which SRTP | one loopback datagram, send + receive (the kernel) |"
        " the same, the receive woken from sleep by another core |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("harness") == "forwarding_cost":
            lines.append(
                f"| {r['datagram_bytes']} B datagrams, {r['packets_per_round']} a round |"
                f" {r['forwarder_us']} | {r['srtp_us']} | {r['loopback_us']} |"
                f" {r['wakeup_us']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarding_cost", description=__doc__)
    parser.add_argument("--packets", type=int, default=20_000, help="per round (1000..200000)")
    parser.add_argument("--rounds", type=int, default=3, help="1..10")
    args = parser.parse_args(argv)
    if not 1000 <= args.packets <= 200_000 or not 1 <= args.rounds <= 10:
        parser.error("--packets 1000..200000, --rounds 1..10")
    row = measure(args.packets, args.rounds)
    report_row("forwarding-cost", row, table([row]))


if __name__ == "__main__":
    main()
