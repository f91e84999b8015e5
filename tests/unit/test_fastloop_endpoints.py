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


def source_between(
    sockets: tuple[socket.socket, socket.socket],
    tx: Session,
    ssrc: int,
    start: float,
    *,
    extensions: bytes = b"",
    seq0: int = 1,
    ts0: int = 0,
) -> fastloop.Source:
    """A source of PAYLOADS from the first socket to the second, from ``start`` on."""
    sender, receiver = sockets
    return fastloop.new_source(
        fd=sender.fileno(),
        out_addr=receiver.getsockname(),
        tx_session=tx,
        ssrc=ssrc,
        payload_type=111,
        extensions=extensions,
        payloads=PAYLOADS,
        start=start,
        seq0=seq0,
        ts0=ts0,
    )


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
    source = source_between(sockets, tx, 0xABCD, started, extensions=ext, seq0=65530, ts0=1000)
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


def threads() -> set[int]:
    return {int(tid) for tid in os.listdir(f"/proc/{os.getpid()}/task")}


@pytest.mark.parametrize("raised", [False, True])
def test_a_tickers_sources_keep_their_pace_while_the_interpreter_is_busy(
    sockets: tuple[socket.socket, socket.socket], raised: bool
) -> None:
    """A loop's ticker thread sends its sources' due frames without the interpreter: a
    busy interpreter (here, spinning for 0.5 s) does not hold them back, and the frames
    arrive byte for byte in order (each source's stream is made on this thread when it is
    added, so the ticker never adds to an SRTP session's stream list)."""
    sender, receiver = sockets
    tx, rx = srtp_pair()
    loop, sink_loop = fastloop.endpoint_loop(), fastloop.endpoint_loop()
    before = threads()
    loop.start_ticker(0.001, raised=raised)
    assert loop.ticker_running
    [ticker] = threads() - before
    # Raised: real-time (its lowest priority) where the process may, as here as root;
    # otherwise the scheduler's default, as the interpreter's thread.
    policy = os.SCHED_FIFO if raised and os.geteuid() == 0 else os.SCHED_OTHER
    deadline = time.monotonic() + 5
    while os.sched_getscheduler(ticker) != policy and time.monotonic() < deadline:
        time.sleep(0.001)  # the thread sets its own policy as it starts
    assert os.sched_getscheduler(ticker) == policy
    started = time.monotonic()
    source = source_between(sockets, tx, 0x5150, started)
    start_wall = time.time() - (time.monotonic() - started)
    loop.add_source(source)
    assert source.next == 1  # the first frame went out at once, from this thread
    while time.monotonic() < started + 0.5:
        pass  # busy: the interpreter is not released
    loop.stop_ticker()
    assert not loop.ticker_running
    sent = struct.unpack(f"={source.next}d", source.sent_times())
    assert len(sent) >= 24  # 0.5 s of 20 ms frames
    late = [t - (start_wall + n * 0.02) for n, t in enumerate(sent)]
    # Each on time (to the ticker's millisecond on an idle machine; a loaded one's
    # scheduler may add some), none held until the interpreter was free at 0.5 s.
    assert max(late) < 0.15, late
    sink = fastloop.new_sink(fd=receiver.fileno(), rx_session=rx, keep_payloads=True)
    sink_loop.add_route(sink)
    epoll = select.epoll()
    epoll.register(receiver.fileno(), select.EPOLLIN)
    try:
        while sink.packets_in < len(sent) and epoll.poll(1.0):
            sink_loop.pump(epoll.fileno(), 8)
    finally:
        epoll.close()
    _, payloads = sink.take_records()
    assert payloads == b"".join(PAYLOADS[n % 5] for n in range(len(sent)))
    assert loop.remove_source(source) and source.send_errors == 0
    loop.close()
