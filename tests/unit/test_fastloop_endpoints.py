"""The compiled loop's endpoints (the benchmark's load generator plays its browsers and its
upstream with them): a ``Source`` sends paced SRTP, a sink route records what arrives."""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from pylibsrtp import Policy, Session

from relay.media import fastloop

PAYLOADS = tuple(os.urandom(60 + i) for i in range(5))


def srtp_pair() -> tuple[Session, Session]:
    key = os.urandom(44)
    profile = Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (a, b):
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    fastloop.enable_receive_times(b)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_source_paces_protected_rtp_and_a_sink_records_it(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = sockets
    tx, rx = srtp_pair()
    loop = fastloop.endpoint_loop()
    epoll = select.epoll()
    epoll.register(receiver.fileno(), select.EPOLLIN)
    ext = struct.pack("!HH", 0xBEDE, 1) + bytes((0x10, ord("0"), 0, 0))  # mid "0"
    started = time.monotonic()
    source = fastloop.new_source(
        fd=sender.fileno(),
        out_addr=receiver.getsockname(),
        tx_session=tx,
        ssrc=0xABCD,
        payload_type=111,
        extensions=ext,
        payloads=PAYLOADS,
        start=started,
        seq0=65530,
        ts0=1000,
    )
    sink = fastloop.new_sink(fd=receiver.fileno(), rx_session=rx, keep_payloads=True)
    loop.add_source(source)
    loop.add_route(sink)
    receiver.sendto(b"\x00\x01 not rtp", receiver.getsockname())  # handed back as is
    punted: list[tuple[object, ...]] = []
    try:
        while source.next < 12:
            loop.tick()
            time.sleep(0.002)  # the traffic pattern: 20 ms frames, ticked every 2 ms
            _, punts = loop.pump(epoll.fileno(), 8)
            punted += punts or []
        deadline = time.monotonic() + 5
        while sink.packets_in < 12 and time.monotonic() < deadline:
            epoll.poll(0.1)  # until the last datagrams are readable
            _, punts = loop.pump(epoll.fileno(), 8)
            punted += punts or []
    finally:
        epoll.close()
    elapsed = time.monotonic() - started
    assert 12 * 0.02 - 0.02 <= elapsed < 12 * 0.02 + 0.2  # paced, not sent at once
    records, payloads = sink.take_records()
    rows = list(struct.iter_unpack("=dIIHH", records))
    assert [r[3] for r in rows] == [(65530 + n) & 0xFFFF for n in range(12)]
    assert [r[1] for r in rows] == [1000 + 960 * n for n in range(12)]
    assert {r[2] for r in rows} == {0xABCD}
    assert payloads == b"".join(PAYLOADS[n % 5] for n in range(12))
    sent = struct.unpack(f"={source.next}d", source.sent_times())
    wall = time.time()
    for (arrival, *_), at in zip(rows, sent, strict=True):
        assert at <= arrival < wall  # the kernel's receive time, after the send
    assert [p[:3] for p in punted] == [(0, receiver.fileno(), b"\x00\x01 not rtp")]
    assert sink.packets_in == 12 and sink.dropped_invalid == 0 and source.sent_packets == 12
    # Taken: the sink starts empty again.
    assert sink.take_records() == (b"", b"")
