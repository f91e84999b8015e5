"""The compiled loop's forwarder thread (``Loop.start_forwarding``, ``media.forwarding_thread``).

The forwarder reads the media sockets and forwards their RTP without the interpreter, so
the audio keeps flowing while the event loop is busy (a long callback, a full collection);
what is for Python waits in a queue until the event loop takes it. The rig is the
per-packet harness's (``bench.compiled_cost.Rig``: real sockets, real SRTP, the relay's
own forwarders and media socket set), here with the forwarder thread reading the set.
"""

from __future__ import annotations

import asyncio
import gc
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from bench.compiled_cost import Rig
from bench.forwarding_cost import rtp_packets, srtp_pair
from relay.media import fastloop
from tests.integration.media_helpers import wait_until

ROUTES = 4


@pytest.fixture
def rig() -> Iterator[Rig]:
    if not fastloop.built():  # never skipped (as the media tests' compiled runs)
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    loop = asyncio.new_event_loop()
    rig = Rig(loop, ROUTES, compiled=True, threaded=True)
    try:
        yield rig
    finally:
        rig.close()
        loop.run_until_complete(asyncio.sleep(0))  # the set's last take of the queue
        loop.close()


def _hand_over(rig: Rig, protected: list[list[bytes]]) -> None:
    """Each direction's first packet goes through Python (the event loop takes it from the
    forwarder's queue), which hands the direction to the compiled loop."""
    for i, target in enumerate(rig.targets):
        rig.feeder.sendto(protected[i][0], target)
    loop = rig.sockets._loop
    loop.run_until_complete(
        wait_until(lambda: all(s.compiled for s in rig.stats), 5, "routes handed over")
    )
    loop.run_until_complete(wait_until(lambda: rig.drain() == 0, 5, "first packets out"))


def _arrivals(sink: socket.socket) -> list[float]:
    """The kernel's receive time of every datagram waiting on ``sink``."""
    times: list[float] = []
    while True:
        try:
            _, ancillary, _, _ = sink.recvmsg(2048, 64)
        except BlockingIOError:
            return times
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == fastloop_timestamp():
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                times.append(seconds + nanoseconds * 1e-9)


def fastloop_timestamp() -> int:
    from relay.media import _fastloop

    value: int = _fastloop.SO_TIMESTAMPNS
    return value


def test_packets_are_forwarded_while_the_interpreter_is_busy(rig: Rig) -> None:
    """The interpreter never lets go for 0.4 s (no event loop turn, no GIL released), and
    sends a packet to every route every 20 ms meanwhile: each is forwarded within
    milliseconds. On the event loop's thread the first ones would wait the whole 0.4 s."""
    rounds = 20
    protected = [[tx.protect(p) for p in rtp_packets(rounds + 1)] for tx in rig.senders]
    _hand_over(rig, protected)
    fastloop.enable_receive_times(rig.sink)
    sent: list[float] = []
    started = time.monotonic()
    for r in range(1, rounds + 1):
        while time.monotonic() < started + (r - 1) * 0.02:
            pass  # busy: holds the interpreter
        sent.append(time.time())
        for i, target in enumerate(rig.targets):
            rig.feeder.sendto(protected[i][r], target)
    while time.monotonic() < started + 0.4:
        pass
    arrived = sorted(_arrivals(rig.sink))
    assert len(arrived) == rounds * ROUTES
    # Round r's packets are the r-th group of ROUTES to arrive (rounds are 20 ms apart).
    late = [arrived[r * ROUTES + ROUTES - 1] - sent[r] for r in range(rounds)]
    assert max(late) < 0.05, late
    # Python has not seen them yet (the event loop never ran); it does once it runs.
    assert all(s.forwarded == 1 for s in rig.stats)
    rig.sockets._loop.run_until_complete(
        wait_until(lambda: all(s.forwarded == rounds + 1 for s in rig.stats), 5, "synced")
    )


def test_python_holding_the_media_lock_holds_the_forwarder(rig: Rig) -> None:
    """While Python holds the media lock (reading a route's counters, using a libsrtp
    context a route shares), the forwarder waits; it forwards as soon as it is let go."""
    protected = [[tx.protect(p) for p in rtp_packets(2)] for tx in rig.senders]
    _hand_over(rig, protected)
    fastloop.enable_receive_times(rig.sink)
    with fastloop.locked():
        with fastloop.locked():  # recursive: the loops' own methods take it inside
            for i, target in enumerate(rig.targets):
                rig.feeder.sendto(protected[i][1], target)
            held = time.monotonic() + 0.2
            while time.monotonic() < held:
                pass
            assert _arrivals(rig.sink) == []
        let_go = time.time()
    deadline = time.monotonic() + 5
    arrived: list[float] = []
    while len(arrived) < ROUTES and time.monotonic() < deadline:
        select.select([rig.sink], [], [], 0.1)
        arrived += _arrivals(rig.sink)
    assert len(arrived) == ROUTES and min(arrived) >= let_go


def test_the_media_lock_is_released_only_by_its_holder() -> None:
    from relay.media import _fastloop

    with pytest.raises(RuntimeError, match="not held"):
        _fastloop.release()
    failed: list[BaseException] = []

    def other_thread() -> None:
        try:
            _fastloop.release()
        except RuntimeError as exc:
            failed.append(exc)

    with fastloop.locked():
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(failed) == 1


def test_the_forwarder_runs_from_the_first_socket_to_the_last(rig: Rig) -> None:
    compiled = rig.sockets.compiled
    assert compiled.forwarding and rig.sockets.snapshot()["forwarding"]["thread"]["running"]
    threads = threading.active_count()  # the forwarder is not an interpreter thread
    for transport in list(rig.sockets._transports.values()):
        transport.close()
    assert not compiled.forwarding
    assert not rig.sockets.snapshot()["forwarding"]["thread"]["running"]
    assert threading.active_count() == threads
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    from relay.media import udp

    again = udp.MediaDatagramTransport(
        rig.sockets._loop, sock, asyncio.DatagramProtocol(), rig.sockets
    )
    rig.sockets.add(again)
    assert compiled.forwarding


def test_a_route_removed_with_punts_queued_lives_until_they_are_taken() -> None:
    """A packet of a new SSRC is queued for Python with its route; the route is detached
    and every Python reference to it dropped before the event loop takes the queue: the
    punt still names the route, alive (retired until then; tests/fastloop_asan.sh runs
    this under AddressSanitizer)."""
    if not fastloop.built():
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    compiled = fastloop.endpoint_loop()  # any compiled loop: libsrtp handed in
    epoll = select.epoll()
    receiving = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiving.bind(("127.0.0.1", 0))
    receiving.setblocking(False)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.1", 0))
    feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx, rx = srtp_pair()
    relay_tx, _ = srtp_pair()

    class Owner:
        """Nothing is handed to it: the test takes the queue itself."""

        def compiled_plain(self, route: object, plain: bytes) -> None: ...

        def compiled_tap(
            self, payload: bytes, seq: int, ts: int, ssrc: int, marker: bool, arrival: float
        ) -> None: ...

        def compiled_sync(self, route: object) -> None: ...

        def compiled_rtcp(self, route: object, plain: bytes) -> None: ...

    try:
        epoll.register(receiving.fileno(), select.EPOLLIN)
        route = fastloop.new_route(
            in_fd=receiving.fileno(),
            out_fd=out.fileno(),
            out_addr=out.getsockname(),
            rx_session=rx,
            tx_session=relay_tx,
            owner=Owner(),
        )
        route.ssrc = 1  # the packets' SSRC is another: a new source, for Python
        compiled.add_route(route)
        compiled.start_forwarding(epoll.fileno(), 0.0, 8)
        packet = rtp_packets(1)[0]
        feeder.sendto(tx.protect(packet), receiving.getsockname())
        ready, _, _ = select.select([compiled.notify_fd], [], [], 5)
        assert ready, "the forwarder queued nothing"
        assert compiled.remove_route(route)
        del route
        gc.collect()
        punts = compiled.take_punts()
        assert punts is not None and len(punts) == 1
        kind, named, plain = punts[0]
        assert kind == 1  # PUNT_PLAIN
        assert named.in_fd == receiving.fileno() and isinstance(named.owner, Owner)
        assert plain == packet
    finally:
        compiled.close()
        for sock in (receiving, out, feeder):
            sock.close()
        epoll.close()
