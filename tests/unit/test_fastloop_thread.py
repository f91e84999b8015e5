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
import os
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
            if level == socket.SOL_SOCKET and kind == _receive_time_kind():
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                times.append(seconds + nanoseconds * 1e-9)


def _receive_time_kind() -> int:
    """SCM_TIMESTAMPNS (the same number as the option that asks for it)."""
    from relay.media import _fastloop

    value: int = _fastloop.SO_TIMESTAMPNS
    return value


def test_packets_are_forwarded_while_the_interpreter_is_busy(rig: Rig) -> None:
    """The interpreter spins for 0.4 s without returning to the event loop, and sends a
    packet to every route every 20 ms meanwhile: each is forwarded within milliseconds. On
    the event loop's thread the first ones would wait the whole 0.4 s."""
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
    # Twice: recursive, as the loops' own methods take it inside.
    with fastloop.locked(), fastloop.locked():
        for i, target in enumerate(rig.targets):
            rig.feeder.sendto(protected[i][1], target)
        held = time.monotonic() + 0.2
        while time.monotonic() < held:
            pass
        assert _arrivals(rig.sink) == []
        held_until = time.time()  # still held: nothing can be forwarded before this
    deadline = time.monotonic() + 5
    arrived: list[float] = []
    while len(arrived) < ROUTES and time.monotonic() < deadline:
        select.select([rig.sink], [], [], 0.1)
        arrived += _arrivals(rig.sink)
    assert len(arrived) == ROUTES and min(arrived) >= held_until


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
    stopped = rig.sockets.snapshot()["forwarding"]["thread"]
    assert not stopped["running"] and stopped["priority"] is None
    assert threading.active_count() == threads
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    from relay.media import udp

    again = udp.MediaDatagramTransport(
        rig.sockets._loop, sock, asyncio.DatagramProtocol(), rig.sockets
    )
    rig.sockets.add(again)
    assert compiled.forwarding


class Owner:
    """Nothing is handed to it: the tests below take the queue themselves."""

    def compiled_plain(self, route: object, plain: bytes) -> None: ...

    def compiled_tap(
        self, payload: bytes, seq: int, ts: int, ssrc: int, marker: bool, arrival: float
    ) -> None: ...

    def compiled_sync(self, route: object) -> None: ...

    def compiled_rtcp(self, route: object, plain: bytes) -> None: ...


class Bare:
    """A compiled loop's forwarder over one receiving socket with a route to another, the
    route waiting for another SSRC than the feeder's (so each packet goes to Python)."""

    def __init__(self) -> None:
        self.loop = fastloop.endpoint_loop()  # any compiled loop: libsrtp handed in
        self.epoll = select.epoll()
        self.receiving = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiving.bind(("127.0.0.1", 0))
        self.receiving.setblocking(False)
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.bind(("127.0.0.1", 0))
        self.feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx, rx = srtp_pair()
        relay_tx, _ = srtp_pair()
        self.epoll.register(self.receiving.fileno(), select.EPOLLIN)
        self.route = fastloop.new_route(
            in_fd=self.receiving.fileno(),
            out_fd=self.out.fileno(),
            out_addr=self.out.getsockname(),
            rx_session=rx,
            tx_session=relay_tx,
            owner=Owner(),
        )
        self.route.ssrc = 1  # the packets' SSRC is another: a new source, for Python
        self.loop.add_route(self.route)
        self.loop.start_forwarding(self.epoll.fileno(), 0.0, 8)
        self.packets = rtp_packets(4)

    def send(self, *indexes: int) -> None:
        for i in indexes:
            self.feeder.sendto(self.tx.protect(self.packets[i]), self.receiving.getsockname())

    def wait_queued(self, count: int) -> None:
        """Until ``count`` packets of the route wait for Python."""
        deadline = time.monotonic() + 5
        while self.route.plain_pending < count:
            assert time.monotonic() < deadline, "the forwarder queued too little"
            select.select([self.loop.notify_fd], [], [], 0.05)

    def close(self) -> None:
        self.loop.close()
        for sock in (self.receiving, self.out, self.feeder):
            sock.close()
        self.epoll.close()


@pytest.fixture
def bare() -> Iterator[Bare]:
    if not fastloop.built():
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    bare = Bare()
    try:
        yield bare
    finally:
        bare.close()


def test_a_route_removed_with_punts_queued_lives_until_they_are_taken(bare: Bare) -> None:
    """A packet of a new SSRC is queued for Python with its route; the route is detached
    and every Python reference to it dropped before the event loop takes the queue: the
    punt still names the route, alive (retired until then; tests/fastloop_asan.sh runs
    this under AddressSanitizer)."""
    bare.send(0)
    bare.wait_queued(1)
    route = bare.route
    assert bare.loop.remove_route(route)
    del route, bare.route
    gc.collect()
    punts = bare.loop.take_punts()
    assert punts is not None and len(punts) == 1
    kind, named, plain = punts[0]
    assert kind == 1  # PUNT_PLAIN
    assert named.in_fd == bare.receiving.fileno() and isinstance(named.owner, Owner)
    assert plain == bare.packets[0]


def test_a_paused_route_resumes_once_every_packet_it_handed_over_is_handled(bare: Bare) -> None:
    """Two packets of a new source wait for Python: handling the first must not let the
    loop forward the route's later packets past the second."""
    bare.send(0, 1)
    bare.wait_queued(2)
    punts = bare.loop.take_punts()
    assert punts is not None and [p[2] for p in punts] == bare.packets[:2]
    route = bare.route
    assert route.paused
    # (forwarding again, paused) after each: one is still to handle after the first.
    assert [(route.plain_handled(True), bool(route.paused)) for _ in range(2)] == [
        (False, True),
        (True, False),
    ]
    assert route.plain_pending == 0


def test_a_closed_sockets_queued_datagrams_never_reach_its_successor(bare: Bare) -> None:
    """Datagrams of a socket without a route wait for Python with its descriptor; the
    socket closes (``forget_fd``) before they are taken: they are dropped, not handed to
    whichever socket gets the number next."""
    loose = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loose.bind(("127.0.0.1", 0))
    loose.setblocking(False)
    fd = loose.fileno()
    bare.epoll.register(fd, select.EPOLLIN)
    bare.feeder.sendto(b"\x00\x01stun-ish", loose.getsockname())
    deadline = time.monotonic() + 5
    while bare.loop.stats()["datagrams"] < 1:
        assert time.monotonic() < deadline, "the forwarder never read it"
        select.select([bare.loop.notify_fd], [], [], 0.05)
    bare.epoll.unregister(fd)
    bare.loop.forget_fd(fd)
    loose.close()
    assert bare.loop.take_punts() is None


def _stat_field(task: str, number: int) -> str:
    """Field ``number`` (1-based, as proc(5) counts) of a thread's /proc stat line."""
    with open(f"/proc/self/task/{task}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return fields[number - 3]  # fields after the name start at the third


def _fifo_threads() -> int:
    """This process's threads the kernel runs SCHED_FIFO (policy 1, /proc's stat field 41)."""
    return sum(_stat_field(task, 41) == "1" for task in os.listdir("/proc/self/task"))


@pytest.mark.parametrize("raised", [True, False])
def test_the_forwarder_runs_real_time_where_permitted_and_as_the_process_when_asked(
    raised: bool,
) -> None:
    """``media.forwarding_priority``: raised, the thread runs SCHED_FIFO from its start
    where the process may (these tests run as root); "default", as the process does."""
    if not fastloop.built():
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    assert os.geteuid() == 0, "the test command runs as root (tests/run.sh)"
    compiled = fastloop.endpoint_loop()
    epoll = select.epoll()
    try:
        before = _fifo_threads()
        compiled.start_forwarding(epoll.fileno(), 0.001, 8, raised=raised)
        assert compiled.stats()["priority"] == (2 if raised else 0)
        assert _fifo_threads() - before == (1 if raised else 0)
        compiled.stop_forwarding()
        assert _fifo_threads() == before
    finally:
        compiled.close()
        epoll.close()


def _forwarder_tasks() -> list[str]:
    """This process's threads named as the forwarder names itself."""
    named = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as comm:
            if comm.read().strip() == "relay-forward":
                named.append(task)
    return named


def _nice(task: str) -> int:
    return int(_stat_field(task, 19))


def test_a_window_set_to_zero_takes_the_running_thread_out_of_real_time() -> None:
    """Without a batching window the thread never sleeps between polls, so it is never
    real-time (as at its start): set to 0 while it runs real-time, it drops to nice -10
    when it next wakes, before it reads anything more. The thread carries its name for
    the operator's tools (top -H, perf --sort comm)."""
    if not fastloop.built():
        pytest.fail(f"{fastloop.describe()['reason']}: build it (pip install -e .)")
    assert os.geteuid() == 0, "the test command runs as root (tests/run.sh)"
    compiled = fastloop.endpoint_loop()
    epoll = select.epoll()
    waker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    waker.bind(("127.0.0.1", 0))
    waker.setblocking(False)
    epoll.register(waker.fileno(), select.EPOLLIN)
    try:
        before = _fifo_threads()
        assert _forwarder_tasks() == []
        compiled.start_forwarding(epoll.fileno(), 0.001, 8, raised=True)
        (task,) = _forwarder_tasks()
        assert compiled.stats()["priority"] == 2 and _fifo_threads() == before + 1
        compiled.set_batch(0.001)  # a window: stays real-time
        compiled.set_batch(0.0)
        # The next datagram wakes it: it leaves real-time, then reads (and queues) it.
        waker.sendto(b"wake", waker.getsockname())
        deadline = time.monotonic() + 5
        while compiled.stats()["datagrams"] < 1:
            assert time.monotonic() < deadline, "the forwarder never woke"
            select.select([compiled.notify_fd], [], [], 0.05)
        assert compiled.stats()["priority"] == 1 and _fifo_threads() == before
        assert _nice(task) == -10
        compiled.stop_forwarding()
        assert _forwarder_tasks() == []
    finally:
        compiled.close()
        epoll.close()
        waker.close()


def test_the_set_reports_the_threads_busy_polling_while_datagrams_come_fast(rig: Rig) -> None:
    """``/api/stats`` → ``media_receive.batching``: while the thread reads, it is the
    thread's state (polling every window), not the event loop's timer, which never runs."""
    rig.sockets.batch_s = 0.01  # handed to the running thread
    count = 2000
    protected = [[tx.protect(p) for p in rtp_packets(count + 1)] for tx in rig.senders]
    _hand_over(rig, protected)
    assert rig.sockets.snapshot()["batching"] is False
    # One datagram about every 0.5 ms (the interpreter spins between them, pacing the
    # feed), until the thread reports busy: two of its wake-ups come within the 10 ms
    # window however late a loaded machine wakes it.
    seen_busy = False
    for r in range(1, count + 1):
        rig.feeder.sendto(protected[r % ROUTES][r], rig.targets[r % ROUTES])
        if rig.sockets.snapshot()["batching"]:
            seen_busy = True
            break
        paced = time.monotonic() + 0.0005
        while time.monotonic() < paced:
            pass
    assert seen_busy
    assert rig.sockets.snapshot()["forwarding"]["thread"]["running"]
    # The feed stops: the next poll finds nothing and the thread waits again.
    loop = rig.sockets._loop
    loop.run_until_complete(
        wait_until(lambda: not rig.sockets.snapshot()["batching"], 5, "waiting again")
    )


def test_a_set_failing_under_the_thread_is_read_on_the_event_loop_from_then_on(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault injection: the thread's descriptor of the sockets' set stops being an epoll set
    under it (it cannot in the relay, whose set lives as long as its thread). The thread
    stops, wakes the event loop, and the event loop reads the set from then on: the
    datagram that woke the thread and every later one are forwarded, and the log says why."""
    rounds = 5
    protected = [[tx.protect(p) for p in rtp_packets(rounds + 1)] for tx in rig.senders]
    _hand_over(rig, protected)
    sockets, compiled = rig.sockets, rig.sockets.compiled
    # Behind the set's back: the thread restarted on a second descriptor of the same set,
    # which then becomes /dev/null (not closed: the number must not go to another set
    # while the thread may still poll it). The set stays registered in the thread's own
    # epoll (its file is still open), so the next datagram wakes the thread, whose poll
    # then fails (EINVAL).
    compiled.stop_forwarding()
    doomed = os.dup(sockets._epoll.fileno())
    compiled.start_forwarding(doomed, 0.0, 8)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, doomed)
    os.close(null)
    loop = sockets._loop
    try:
        with caplog.at_level("ERROR", logger="relay.media.udp"):
            for r in range(1, rounds + 1):
                for i, target in enumerate(rig.targets):
                    rig.feeder.sendto(protected[i][r], target)
                if r == 1:
                    loop.run_until_complete(
                        wait_until(lambda: not sockets.threaded, 5, "back on the event loop")
                    )
            loop.run_until_complete(
                wait_until(lambda: all(s.forwarded == rounds + 1 for s in rig.stats), 5, "all")
            )
    finally:
        compiled.stop_forwarding()  # joined: the number is free to close
        os.close(doomed)
    assert compiled.forward_error != 0
    assert sockets.snapshot()["forwarding"]["thread"] is None
    assert sockets._watching
    assert rig.drain() == rounds * ROUTES
    assert any("forwarder thread stopped" in r.getMessage() for r in caplog.records)
