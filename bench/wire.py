"""The relay's own latency per hop, from kernel timestamps of its packets on loopback.

End-to-end latency measured by the load generator (from the sending track handing a frame
to aiortc to the receiving endpoint's hook) carries the generator's own scheduling: when
its core is busy, its tail, not the relay's, sets the p99 (it did in the runs before this
probe: docs/benchmarks.md, "Figures behind the code's choices"). This measures the hop
itself. A capture process (``python -m bench.wire``) opens a packet
socket on ``lo`` with a classic BPF filter that keeps only outgoing IPv4/UDP RTP packets
of the SSRCs given (the probe sessions: the browser's and the upstream's, and what the
relay sends each of them), and asks the kernel for the time each one was handed to the
device (``SO_TIMESTAMPNS``). SRTP leaves the RTP header in the clear, so every packet's
SSRC and sequence number are readable without keys.

For one direction, a packet entering the relay (``in_ssrc``, from the sending endpoint)
and the packet the relay sends for it (``out_ssrc``) differ by a constant sequence-number
offset (nothing is lost in these runs; the offset is the most common difference between
each outgoing packet and the newest incoming one before it). The hop is the difference
of the two kernel timestamps: the relay's socket queue, its event loop, the forwarding,
and its ``sendto`` until the packet reaches the device. Neither endpoint's scheduling is in
it: the sender's timestamp is taken when its packet was already sent, the receiver's
delay comes after the relay's packet left.

The capture runs in its own process so that reading packets never takes the generator's
GIL; the kernel timestamps a packet when it is sent, so when the capture process reads it
does not matter (its socket's drop counter is reported, and must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
# Classic BPF: the ancillary load of the packet's type (SKF_AD_OFF + SKF_AD_PKTTYPE).
SKF_AD_PKTTYPE = 0xFFFFF000 + 4
SNAP = 64  # IPv4 (20) + UDP (8) + the RTP fixed header (12), with room to spare
_TIMESPEC = struct.Struct("@ll")
_RTP = struct.Struct("!BBHII")
_RECORD = struct.Struct("!QIH")  # kernel time (ns), SSRC, sequence number


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def rtp_filter(ssrcs: Sequence[int]) -> bytes:
    """A classic BPF program: outgoing IPv4/UDP packets whose RTP SSRC is one of ``ssrcs``.

    Offsets are from the IP header (a ``SOCK_DGRAM`` packet socket hands outgoing packets
    to the filter without their link-layer header)."""
    if not 0 < len(ssrcs) <= 200:
        raise ValueError("1 to 200 SSRCs")
    n = len(ssrcs)
    program = [
        _insn(0x20, 0, 0, SKF_AD_PKTTYPE),  # ld  pkttype
        _insn(0x15, 0, n + 4, PACKET_OUTGOING),  # jeq #OUTGOING, else drop
        _insn(0x30, 0, 0, 9),  # ldb [9]            IP protocol
        _insn(0x15, 0, n + 2, socket.IPPROTO_UDP),  # jeq #17, else drop
        _insn(0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)   X = IP header length
        _insn(0x40, 0, 0, 8 + 8),  # ld  [x+16]     UDP header, then RTP's SSRC
    ]
    for i, ssrc in enumerate(ssrcs):
        program.append(_insn(0x15, n - i, 0, ssrc))  # jeq #ssrc → accept
    program.append(_insn(0x06, 0, 0, 0))  # drop
    program.append(_insn(0x06, 0, 0, SNAP))  # accept SNAP bytes
    return b"".join(program)


def _attach(sock: socket.socket, program: bytes) -> ctypes.Array[ctypes.c_char]:
    code = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return code  # the kernel copied it, but keep it alive until then


def capture(ssrcs: Sequence[int], out: str, ready: str | None) -> None:
    """Until SIGTERM: every outgoing RTP packet of ``ssrcs`` on ``lo``, as records in ``out``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    _attach(sock, rtp_filter(ssrcs))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("lo", ETH_P_ALL))
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock.settimeout(0.2)
    records = bytearray()
    not_rtp = 0
    if ready:
        Path(ready).write_text("ready")
    while True:
        if stop:
            # What the kernel queued before the signal is still to be read: drain it.
            sock.setblocking(False)
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(SNAP, 64)
        except BlockingIOError:
            break
        except (TimeoutError, InterruptedError):
            continue
        stamp = next(
            (
                d
                for level, kind, d in ancillary
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS
            ),
            None,
        )
        ihl = (data[0] & 0x0F) * 4
        rtp = ihl + 8
        if stamp is None or len(data) < rtp + 12:
            not_rtp += 1
            continue
        b0, b1, seq, _ts, ssrc = _RTP.unpack_from(data, rtp)
        if b0 >> 6 != 2 or 191 < b1 < 224:  # not RTP version 2, or RTCP (RFC 5761)
            not_rtp += 1
            continue
        sec, nsec = _TIMESPEC.unpack(stamp[: _TIMESPEC.size])
        records += _RECORD.pack(sec * 1_000_000_000 + nsec, ssrc, seq)
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    meta = {"kernel_packets": packets, "kernel_drops": drops, "not_rtp": not_rtp}
    Path(out).write_bytes(json.dumps(meta).encode() + b"\n" + bytes(records))


@dataclass(frozen=True)
class Packet:
    t: float  # kernel time, s since the epoch
    ssrc: int
    seq: int


def read_capture(path: str) -> tuple[dict[str, int], list[Packet]]:
    with open(path, "rb") as f:
        head = f.readline()
        body = f.read()
    meta: dict[str, int] = json.loads(head)
    packets = [Packet(t / 1e9, ssrc, seq) for t, ssrc, seq in _RECORD.iter_unpack(body)]
    return meta, packets


def hop_latencies(
    packets: Iterable[Packet], in_ssrc: int, out_ssrc: int, start: float, end: float
) -> tuple[list[float], int]:
    """Per packet of one direction: kernel time out of the relay minus time into it (s).

    Returns the latencies of outgoing packets inside [start, end] and how many of those
    had no incoming packet to pair with."""
    incoming: dict[int, float] = {}
    outgoing: list[Packet] = []
    newest_in: list[tuple[float, int]] = []
    for p in packets:
        if p.ssrc == in_ssrc:
            incoming.setdefault(p.seq, p.t)
            newest_in.append((p.t, p.seq))
        elif p.ssrc == out_ssrc:
            outgoing.append(p)
    if not outgoing or not incoming:
        return [], len(outgoing)
    # The offset: the most common difference between an outgoing packet's sequence number
    # and the newest incoming one's before it (nearly always the packet it carries).
    newest_in.sort()
    diffs: Counter[int] = Counter()
    j = -1
    for p in sorted(outgoing, key=lambda q: q.t):
        while j + 1 < len(newest_in) and newest_in[j + 1][0] <= p.t:
            j += 1
        if j >= 0:
            diffs[(p.seq - newest_in[j][1]) & 0xFFFF] += 1
    if not diffs:
        return [], len(outgoing)
    offset = diffs.most_common(1)[0][0]
    latencies: list[float] = []
    unmatched = 0
    for p in outgoing:
        if not start <= p.t <= end:
            continue
        t_in = incoming.get((p.seq - offset) & 0xFFFF)
        if t_in is None or t_in > p.t:
            unmatched += 1
            continue
        latencies.append(p.t - t_in)
    return latencies, unmatched


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class WireProbe:
    """The capture process for some hops ((incoming SSRC, outgoing SSRC) per direction),
    driven from the load generator's event loop."""

    def __init__(
        self, proc: asyncio.subprocess.Process, out: Path, hops: list[tuple[int, int]]
    ) -> None:
        self._proc = proc
        self._out = out
        self.hops = hops
        self._cpu0 = self.cpu_seconds()  # its start-up is not the capture's cost

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    async def start(cls, hops: list[tuple[int, int]], workdir: Path, cpu: int) -> WireProbe:
        out, ready = workdir / "wire.bin", workdir / "wire.ready"
        for path in (out, ready):
            path.unlink(missing_ok=True)
        ssrcs = ",".join(str(s) for hop in hops for s in hop)
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", str(cpu), sys.executable, "-m", "bench.wire",
            "--ssrcs", ssrcs, "--out", str(out), "--ready", str(ready),
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not ready.exists():  # the socket is bound and filtered once this exists
            if proc.returncode is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise RuntimeError("the wire capture did not start (root and AF_PACKET needed)")
            await asyncio.sleep(0.01)
        return cls(proc, out, hops)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def finish(self, start: float, end: float) -> dict[str, Any]:
        """Stop the capture; the hops' latencies for packets sent in [start, end]."""
        cpu = self.cpu_seconds() - self._cpu0
        self._proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(self._proc.wait(), 30)
        meta, packets = read_capture(str(self._out))
        latencies: list[float] = []
        unmatched = 0
        for in_ssrc, out_ssrc in self.hops:
            hop, missing = hop_latencies(packets, in_ssrc, out_ssrc, start, end)
            latencies += hop
            unmatched += missing
        ms = [1000 * x for x in latencies]
        return {
            "hop_samples": len(ms),
            "hop_unmatched": unmatched,
            "hop_p50_ms": round(_pct(ms, 50), 3) if ms else None,
            "hop_p99_ms": round(_pct(ms, 99), 3) if ms else None,
            "hop_p999_ms": round(_pct(ms, 99.9), 3) if ms else None,
            "hop_max_ms": round(max(ms), 3) if ms else None,
            "wire_kernel_drops": meta["kernel_drops"],
            "wire_cpu": round(cpu / max(1e-9, end - start), 4),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__)
    parser.add_argument("--ssrcs", required=True, help="comma-separated RTP SSRCs")
    parser.add_argument("--out", required=True, help="where to write the records on SIGTERM")
    parser.add_argument("--ready", help="a file written once the capture is listening")
    args = parser.parse_args(argv)
    capture([int(s) for s in args.ssrcs.split(",")], args.out, args.ready)


if __name__ == "__main__":
    main()
