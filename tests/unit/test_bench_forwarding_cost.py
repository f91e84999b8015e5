"""The forwarding-cost benchmark: its stand-in forwarder really forwards, and every
figure it reports is measured."""

from __future__ import annotations

import struct

from bench.forwarding_cost import (
    IN_SSRC,
    OUT_SSRC,
    measure,
    ping_pong_us,
    rtp_packets,
    srtp_pair,
    stand_in_forwarder,
    table,
)


class Capturing:
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.datagrams.append(data)


def test_the_stand_in_forwarder_rewrites_and_protects_every_packet() -> None:
    browser_tx, relay_rx = srtp_pair()
    relay_tx, upstream_rx = srtp_pair()
    forwarder, _ = stand_in_forwarder(relay_rx, relay_tx)
    capture = Capturing()
    forwarder._sock = capture
    forwarder._pair = forwarder._pairs[1]  # keep the capturing socket
    plain = rtp_packets(20)
    for packet in plain:
        forwarder.on_datagram(browser_tx.protect(packet), 1)
    assert len(capture.datagrams) == 20 and forwarder.errors == 0
    first = upstream_rx.unprotect(capture.datagrams[0])
    _, pt, _, _, ssrc = struct.unpack_from("!BBHII", first)
    assert ssrc == OUT_SSRC != IN_SSRC and pt & 0x7F == 111
    assert first.endswith(plain[0][-80:])  # the Opus payload, byte for byte


def test_measure_reports_each_part_per_packet() -> None:
    row = measure(1000, 1)
    for key in ("forwarder_us", "srtp_us", "loopback_us", "wakeup_us"):
        assert len(row[key]) == 1 and row[key][0] > 0
    assert row["srtp_us"][0] < row["forwarder_us"][0]  # SRTP is part of the forwarding
    text = table([row])
    assert "| 116 B datagrams, 1000 a round |" in text


def test_ping_pong_counts_this_process_only() -> None:
    assert 0 < ping_pong_us(100, 200) < 100_000
