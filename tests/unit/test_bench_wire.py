"""The wire probe of the media benchmark: its BPF filter on real loopback traffic, and the
pairing of a relay's incoming and outgoing packets."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import pytest

from bench.wire import Packet, WireProbe, hop_latencies, rtp_filter


def _rtp(seq: int, ssrc: int, payload_type: int = 111) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq, seq * 960, ssrc) + b"\x00" * 40


def test_filter_jumps_land_on_drop_and_accept() -> None:
    program = rtp_filter([1, 2, 3])
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    drop, accept = len(insns) - 2, len(insns) - 1
    assert insns[drop] == (0x06, 0, 0, 0)
    assert insns[accept][0] == 0x06 and insns[accept][3] > 0
    # Every failed check jumps to the drop, every SSRC match to the accept.
    assert 1 + 1 + insns[1][2] == drop and 3 + 1 + insns[3][2] == drop
    for i in range(6, 9):
        assert i + 1 + insns[i][1] == accept
    with pytest.raises(ValueError):
        rtp_filter([])


def test_hops_pair_by_the_constant_sequence_offset() -> None:
    packets = []
    for i in range(50):
        t = 100 + i * 0.02
        packets.append(Packet(t, 7, (65530 + i) & 0xFFFF))  # wraps around
        packets.append(Packet(t + 0.001 * (i % 3), 9, 1000 + i))
    latencies, unmatched = hop_latencies(packets, 7, 9, 100.0, 200.0)
    assert unmatched == 0 and len(latencies) == 50
    assert sorted({round(x, 6) for x in latencies}) == [0.0, 0.001, 0.002]
    # Only outgoing packets inside the window count.
    inside, _ = hop_latencies(packets, 7, 9, 100.0, 100.5)
    assert len(inside) == 25  # i = 0..24; i = 25 leaves at 100.501


def test_an_outgoing_packet_without_its_incoming_one_is_unmatched() -> None:
    packets = [Packet(1.0 + i * 0.02, 7, i) for i in range(10) if i != 4]
    packets += [Packet(1.0005 + i * 0.02, 9, 500 + i) for i in range(10)]
    latencies, unmatched = hop_latencies(packets, 7, 9, 0.0, 10.0)
    assert len(latencies) == 9 and unmatched == 1


async def test_the_capture_times_a_forwarding_hop_on_loopback(tmp_path: Path) -> None:
    """A real capture (root, loopback namespace): only the given SSRCs' RTP, no RTCP."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
    probe = await WireProbe.start([(1111, 2222)], tmp_path, cpu=0)
    start = time.time()
    for i in range(20):
        a.sendto(_rtp(100 + i, 1111), b.getsockname())
        b.recv(100)  # the "relay": receives, then sends its own packet for it
        b.sendto(_rtp(7000 + i, 2222, 96), a.getsockname())
        a.recv(100)
        a.sendto(_rtp(i, 3333), b.getsockname())  # another SSRC: filtered out
        b.recv(100)
        a.sendto(_rtp(i, 1111, 200), b.getsockname())  # RTCP-shaped: not RTP
        b.recv(100)
    result = await asyncio.wait_for(probe.finish(start, time.time()), 30)
    a.close()
    b.close()
    assert result["hop_samples"] == 20 and result["hop_unmatched"] == 0
    assert result["wire_kernel_drops"] == 0
    assert 0 < result["hop_p50_ms"] <= result["hop_max_ms"] < 1000
