"""The relay's media transport and its receive batching, on real loopback sockets, read by
the compiled loop and by Python (the ``media_path`` fixture)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import pytest

from relay.media import fastloop, udp
from tests.integration.media_helpers import wait_until

# Each path, and the compiled loop on the event loop's thread too (media.forwarding_thread).
pytestmark = [
    pytest.mark.usefixtures("media_path"),
    pytest.mark.media_paths("compiled", "compiled-inline", "python"),
]


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, object]] = []
        self.errors: list[Exception] = []
        self.lost = asyncio.get_running_loop().create_future()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.datagrams.append((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def far_end() -> Iterator[socket.socket]:
    sock = bound_socket()
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
async def sockets() -> AsyncIterator[udp.MediaSockets]:
    """A fresh set for the running loop (the process-wide one is per loop anyway)."""
    found = udp.MediaSockets(asyncio.get_running_loop(), 0.0)
    try:
        yield found
    finally:
        found.close()


def open_on(sockets: udp.MediaSockets) -> tuple[udp.MediaDatagramTransport, Recorder]:
    loop = asyncio.get_running_loop()
    protocol = Recorder()
    transport = udp.MediaDatagramTransport(loop, bound_socket(), protocol, sockets)
    protocol.connection_made(transport)
    sockets.add(transport)
    return transport, protocol


async def deliver(
    sender: socket.socket,
    transport: asyncio.DatagramTransport,
    protocol: Recorder,
    payloads: list[bytes],
) -> None:
    """Send ``payloads`` to the transport's socket; wait until its protocol has them all."""
    here = transport.get_extra_info("sockname")
    for payload in payloads:
        sender.sendto(payload, here)
    await wait_until(
        lambda: len(protocol.datagrams) == len(payloads), 5, f"{len(payloads)} datagrams"
    )


async def send_paced(
    sender: socket.socket, address: Any, count: int, gap_s: float, last: bytes | None = None
) -> None:
    """From another thread: b"0", b"1", ... to ``address``, ``gap_s`` apart (the traffic
    pattern, not synchronisation), then ``last`` if given."""

    def stream() -> None:
        for i in range(count):
            sender.sendto(b"%d" % i, address)
            time.sleep(gap_s)
        if last is not None:
            sender.sendto(last, address)

    await asyncio.to_thread(stream)


async def test_datagrams_arrive_with_their_sender_and_go_out_to_the_address_given(
    far_end: socket.socket, sockets: udp.MediaSockets
) -> None:
    transport, protocol = open_on(sockets)
    here = transport.get_extra_info("sockname")
    await deliver(far_end, transport, protocol, [b"in %d" % i for i in range(5)])
    assert [d for d, _ in protocol.datagrams] == [b"in %d" % i for i in range(5)]
    assert {a for _, a in protocol.datagrams} == {far_end.getsockname()}

    transport.sendto(b"out" * 1000, far_end.getsockname())
    data, addr = await asyncio.to_thread(far_end.recvfrom, 65535)
    assert (data, addr) == (b"out" * 1000, here)


async def test_a_datagram_of_the_largest_size_is_not_truncated(
    far_end: socket.socket, sockets: udp.MediaSockets
) -> None:
    transport, protocol = open_on(sockets)
    far_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    big = bytes(range(256)) * 255  # 65,280 bytes: over a loopback MTU, under the UDP limit
    far_end.sendto(big, transport.get_extra_info("sockname"))
    await wait_until(lambda: bool(protocol.datagrams), 5, "the datagram")
    assert protocol.datagrams[0][0] == big


async def test_close_stops_reading_closes_the_socket_and_reports_the_loss_once(
    far_end: socket.socket, sockets: udp.MediaSockets
) -> None:
    transport, protocol = open_on(sockets)
    sock = transport.get_extra_info("socket")
    assert len(sockets) == 1
    transport.close()
    transport.close()  # idempotent
    assert transport.is_closing() and len(sockets) == 0 and sock.fileno() == -1
    assert await asyncio.wait_for(protocol.lost, 5) is None
    transport.sendto(b"after close", far_end.getsockname())  # ignored, as asyncio's are
    with pytest.raises(TimeoutError):
        far_end.settimeout(0.05)
        far_end.recvfrom(10)


async def test_a_protocol_that_raises_does_not_stop_the_other_sockets(
    far_end: socket.socket, sockets: udp.MediaSockets
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        bad, bad_protocol = open_on(sockets)
        good, good_protocol = open_on(sockets)

        def explode(data: bytes, addr: object) -> None:
            raise RuntimeError("a protocol bug")

        bad_protocol.datagram_received = explode  # type: ignore[method-assign]
        far_end.sendto(b"to the bad one", bad.get_extra_info("sockname"))
        far_end.sendto(b"to the good one", good.get_extra_info("sockname"))
        await wait_until(lambda: bool(good_protocol.datagrams), 5, "the good socket's datagram")
        await wait_until(lambda: bool(errors), 5, "the exception handler")
    finally:
        loop.set_exception_handler(None)
    assert isinstance(errors[0]["exception"], RuntimeError)
    assert errors[0]["transport"] is bad and not bad.is_closing()


async def test_a_full_socket_queues_in_order_then_drops_beyond_the_bound(
    sockets: udp.MediaSockets,
) -> None:
    # A Unix datagram pair: unlike UDP on loopback, its sender blocks (EAGAIN) while
    # the receiver's queue is full, which is what the transport's queue is for.
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    protocol = Recorder()
    transport = udp.MediaDatagramTransport(loop, mine, protocol, sockets)
    protocol.connection_made(transport)
    sockets.add(transport)
    try:
        sent = 0
        while transport.get_write_buffer_size() == 0:
            transport.sendto(b"%08d" % sent)
            sent += 1
            assert sent < 100_000, "the socket never refused a datagram"
        for _ in range(udp.SEND_QUEUE_MAX - 1 + 10):  # one is queued already
            transport.sendto(b"%08d" % sent)
            sent += 1
        assert transport.dropped_sends == 10
        theirs.setblocking(False)
        received: list[bytes] = []

        def drain() -> bool:
            while True:
                try:
                    received.append(theirs.recv(64))
                except BlockingIOError:
                    return len(received) == sent - 10

        await wait_until(drain, 5, "every queued datagram")
        assert received == [b"%08d" % i for i in range(sent - 10)]
        assert transport.get_write_buffer_size() == 0
    finally:
        transport.close()
        theirs.close()


class ArmingRecorded:
    """The compiled loop, with the times its poll timer is armed for recorded."""

    def __init__(self, loop: Any, armed: list[float]) -> None:
        self._loop, self._armed = loop, armed

    def arm_tick(self, at: float) -> None:
        self._armed.append(at)
        self._loop.arm_tick(at)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


@pytest.mark.parametrize("variant", ["own", "put-in-later", "event-loop-timers"])
async def test_a_busy_relay_reads_every_socket_per_wakeup_and_a_quiet_one_per_datagram(
    far_end: socket.socket, variant: str
) -> None:
    loop = asyncio.get_running_loop()
    # A window wider than the sender's 2 ms gap: "busy" is two wake-ups less than a window
    # apart, and with the gap equal to it a loaded machine's wake-ups never were.
    sockets = udp.MediaSockets(loop, 0.005)
    if variant == "put-in-later":
        # As the benchmark's endpoints do: another loop of the same kind put in before any
        # socket opens; its polls must run on its own timer.
        sockets.compiled = fastloop.new_loop() if sockets.compiled is not None else None
    elif variant == "event-loop-timers":
        sockets.steady_polls = False  # as the benchmark's endpoints, too
    armed: list[float] = []
    if sockets.compiled is not None:
        sockets.compiled = ArmingRecorded(sockets.compiled, armed)
    try:
        opened = [open_on(sockets) for _ in range(20)]
        addresses = [t.get_extra_info("sockname") for t, _ in opened]

        # Busy: a datagram to each of 20 sockets every 2 ms, sent from another thread.
        def stream() -> None:
            import time

            for i in range(100):
                for address in addresses:
                    far_end.sendto(b"%d" % i, address)
                time.sleep(0.002)

        await asyncio.to_thread(stream)
        await wait_until(
            lambda: all(len(p.datagrams) == 100 for _, p in opened), 5, "every datagram"
        )
        for _, protocol in opened:  # in order on each socket
            assert [d for d, _ in protocol.datagrams] == [b"%d" % i for i in range(100)]
        handled = sockets.datagrams
        assert handled == 2000
        per_wakeup = handled / (sockets.wakeups + sockets.polls)
        assert per_wakeup >= 10, (sockets.wakeups, sockets.polls)
        assert sockets.polls > sockets.wakeups
        if sockets.compiled is not None:  # the polls' timer: the loop's own, unless told
            assert bool(armed) == (variant != "event-loop-timers"), len(armed)

        # Quiet again: the first poll that finds nothing goes back to watching.
        await wait_until(lambda: not sockets.batching, 5, "watching again")
        wakeups, polls = sockets.wakeups, sockets.polls
        target = addresses[0]
        for i in range(3):
            # Not synchronisation: this is the traffic pattern, datagrams further apart
            # than the batching window.
            await asyncio.sleep(0.02)
            expected = b"quiet %d" % i
            far_end.sendto(expected, target)
            await wait_until(
                lambda: opened[0][1].datagrams[-1][0] == expected,  # noqa: B023
                5,
                "quiet datagram",
            )
        assert sockets.wakeups - wakeups == 3 and sockets.polls == polls
    finally:
        sockets.close()


@pytest.mark.media_paths("compiled-inline", "python")  # the event loop reads the set
async def test_a_busy_polls_next_window_counts_from_when_the_poll_started(
    far_end: socket.socket, media_path: str
) -> None:
    """On the compiled loop's timer a slow poll does not push the next one back: it is due
    a window after the previous one *started*. The event loop's timers can only count it
    from now: on the Python path the next poll comes a window after the slow one ended."""
    window = 0.01
    slow = 0.004  # a poll that takes a good part of the window
    sockets = udp.MediaSockets(asyncio.get_running_loop(), window)
    polls: list[tuple[float, float]] = []  # (started, ended) of each timed poll
    armed: list[float] = []
    try:
        transport, protocol = open_on(sockets)
        received = protocol.datagram_received

        def slow_receive(data: bytes, addr: object) -> None:
            # Work, as a busy poll does (spun: the loop's guard refuses a blocking sleep);
            # only in polls, so that the wake-ups before them find the set busy.
            until = time.monotonic() + (slow if sockets.batching else 0.0)
            while time.monotonic() < until:
                pass
            received(data, addr)

        protocol.datagram_received = slow_receive  # type: ignore[method-assign]
        tick = sockets._on_tick

        def timed_tick() -> None:
            started = time.monotonic()
            tick()
            polls.append((started, time.monotonic()))

        sockets._on_tick = timed_tick  # type: ignore[method-assign]
        if sockets.compiled is not None:
            sockets.compiled = ArmingRecorded(sockets.compiled, armed)
        here = transport.get_extra_info("sockname")

        await send_paced(far_end, here, 40, 0.002)  # busy for the window
        await wait_until(lambda: len(protocol.datagrams) == 40, 5, "every datagram")
        await wait_until(lambda: not sockets.batching, 5, "watching again")
    finally:
        sockets.close()
    busy = [(s, e) for s, e in polls if e - s >= slow]
    assert busy, polls
    if media_path != "python":
        # Each arming after a poll that read something: the poll's start plus the window.
        assert len(armed) >= len(busy)
        for started, ended in busy:
            due = min((at for at in armed if at > started), default=None)
            assert due is not None, (started, armed)
            # A window from the poll's start (read a few µs after ``started``), not from
            # its end, which came at least ``slow`` later.
            assert started + window <= due < started + window + (ended - started) / 2
    else:
        # The event loop's timer counts from when the slow poll ended (less at most its
        # granularity, a millisecond on uvloop): the slow poll pushed the next one back.
        assert not armed
        for (started, ended), (following, _) in zip(polls, polls[1:], strict=False):
            if ended - started >= slow:
                assert following >= ended + window - 0.0011, (ended, following)


@pytest.mark.media_paths("compiled-inline", "python")  # the event loop reads the set
@pytest.mark.parametrize("reopen", ["after", "in-the-poll"])
async def test_a_set_whose_last_socket_closed_in_a_busy_poll_reads_the_next_one(
    far_end: socket.socket, reopen: str
) -> None:
    """The last socket closing while the set polls stops the set; the next socket added,
    later or by the same callback, must be watched again: not left behind a poll timer
    nobody watches, nor watched and polled at once."""
    # The widest window: the sender's 1 ms pauses, even stretched on a loaded machine,
    # keep the set busy until the last datagram.
    sockets = udp.MediaSockets(asyncio.get_running_loop(), 0.01)
    try:
        first, first_protocol = open_on(sockets)
        received = first_protocol.datagram_received
        opened: list[tuple[udp.MediaDatagramTransport, Recorder]] = []
        batching_at_bye: list[bool] = []

        def close_on_bye(data: bytes, addr: object) -> None:
            received(data, addr)
            if data == b"bye":
                batching_at_bye.append(sockets.batching)
                first.close()
                if reopen == "in-the-poll":
                    opened.append(open_on(sockets))

        first_protocol.datagram_received = close_on_bye  # type: ignore[method-assign]
        here = first.get_extra_info("sockname")

        await send_paced(far_end, here, 30, 0.001, b"bye")  # busy, polling, then "bye"
        await first_protocol.lost  # (after the read that closed it returned)
        assert first_protocol.datagrams[-1][0] == b"bye" and batching_at_bye == [True]
        # Watching (for the socket opened in the poll) or stopped; never also polling.
        assert not (sockets._watching and sockets.batching)

        if not opened:
            opened.append(open_on(sockets))
        second, second_protocol = opened[0]
        await deliver(far_end, second, second_protocol, [b"%d" % i for i in range(5)])
        assert [d for d, _ in second_protocol.datagrams] == [b"%d" % i for i in range(5)]
    finally:
        sockets.close()


@pytest.mark.media_paths("compiled-inline", "python")  # the event loop reads the set
async def test_a_poll_that_raised_leaves_the_set_watching(far_end: socket.socket) -> None:
    """A poll that fails is reported, and the set watches again: nothing would wake a set
    left polling, and every datagram after it must still be read."""
    loop = asyncio.get_running_loop()
    sockets = udp.MediaSockets(loop, 0.01)  # the widest window: busy while the stream lasts
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        transport, protocol = open_on(sockets)
        read_ready = sockets.read_ready
        failed: list[bool] = []

        def failing_once() -> int:
            if sockets.batching and not failed:  # the first poll
                failed.append(True)
                raise OSError("the poll failed")
            return read_ready()

        sockets.read_ready = failing_once  # type: ignore[method-assign]
        here = transport.get_extra_info("sockname")

        await send_paced(far_end, here, 30, 0.001)  # busy, polling
        await wait_until(lambda: len(protocol.datagrams) == 30, 5, "every datagram")
        await wait_until(lambda: not sockets.batching, 5, "watching again")
        far_end.sendto(b"after", here)
        await wait_until(lambda: len(protocol.datagrams) == 31, 5, "the one after")
        assert [d for d, _ in protocol.datagrams] == [b"%d" % i for i in range(30)] + [b"after"]
        assert failed and [type(c.get("exception")) for c in reported] == [OSError]
    finally:
        loop.set_exception_handler(previous)
        sockets.close()


async def test_without_batching_every_datagram_is_read_when_it_arrives(
    far_end: socket.socket, sockets: udp.MediaSockets
) -> None:
    transport, protocol = open_on(sockets)
    await deliver(far_end, transport, protocol, [b"%d" % i for i in range(50)])
    assert sockets.polls == 0 and not sockets.batching


async def test_the_window_is_bounded_and_applies_to_open_sets() -> None:
    with pytest.raises(ValueError):
        udp.configure(0.05)
    loop = asyncio.get_running_loop()
    before = udp.configured_batch_s()
    try:
        udp.configure(0.003)
        assert udp.media_sockets(loop).batch_s == 0.003
        udp.configure(0.0)
        assert udp.media_sockets(loop).batch_s == 0.0
    finally:
        udp.configure(before)


@pytest.mark.media_paths("compiled-inline", "python")  # the event loop reads the set
def test_the_standard_event_loop_drives_it_too() -> None:
    """``server.event_loop = "asyncio"``: the same transport and batching on asyncio's loop."""

    async def scenario() -> tuple[int, int]:
        sockets = udp.MediaSockets(asyncio.get_running_loop(), 0.002)
        sender = bound_socket()
        try:
            transport, protocol = open_on(sockets)
            await deliver(sender, transport, protocol, [b"%d" % i for i in range(200)])
            transport.sendto(b"back", sender.getsockname())
            sender.settimeout(5)
            data, _ = await asyncio.to_thread(sender.recvfrom, 100)
            assert data == b"back"
            assert [d for d, _ in protocol.datagrams] == [b"%d" % i for i in range(200)]
            return sockets.datagrams, sockets.wakeups + sockets.polls
        finally:
            sender.close()
            sockets.close()

    loop = asyncio.SelectorEventLoop()
    try:
        datagrams, woken = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert datagrams == 200 and woken < 200


@pytest.mark.media_paths("compiled-inline", "python")  # the event loop reads the set
def test_switching_between_watching_and_polling_keeps_one_reader_on_the_loop() -> None:
    """Watching and polling switch inside the set (its gate's mask), not by adding and
    removing a reader: adding an epoll set to the loop's costs the kernel a walk over every
    socket inside, hundreds of times a second on a busy relay."""

    async def scenario() -> tuple[int, int]:
        # The widest window: two wake-ups 10 ms apart count as busy, so each burst
        # switches to polling even when a loaded machine stretches the sender's sleeps.
        sockets = udp.MediaSockets(asyncio.get_running_loop(), 0.01)
        sender = bound_socket()
        try:
            transport, protocol = open_on(sockets)
            here = transport.get_extra_info("sockname")

            switches = 0
            for _ in range(3):
                # A burst polls on a timer; the first empty poll watches again.
                polls = sockets.polls
                await send_paced(sender, here, 50, 0.001)  # busy for the window
                await wait_until(lambda: len(protocol.datagrams) == 50, 5, "the burst")
                protocol.datagrams.clear()
                await wait_until(lambda: not sockets.batching, 5, "watching again")
                switches += sockets.polls > polls
            return switches, sockets.polls
        finally:
            sender.close()
            sockets.close()

    loop = asyncio.SelectorEventLoop()
    try:
        # Counted, and passed on to the loop's own methods.
        with (
            mock.patch.object(loop, "add_reader", wraps=loop.add_reader) as add,
            mock.patch.object(loop, "remove_reader", wraps=loop.remove_reader) as remove,
        ):
            switches, polls = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert switches >= 1 and polls > 0  # (the old code added a reader per switch)
    # Once when the first socket came, once at close.
    assert (add.call_count, remove.call_count) == (1, 1)


def test_a_finished_loop_and_its_set_are_freed() -> None:
    """The process keeps one set per loop (tests run many loops): a set must not keep
    its loop, or its epoll descriptor, alive once the loop is gone."""
    import gc
    import weakref

    async def scenario() -> weakref.ref[udp.MediaSockets]:
        loop = asyncio.get_running_loop()
        transport, _ = udp.open_media_endpoint(loop, Recorder, bound_socket())
        transport.close()
        return weakref.ref(udp.media_sockets(loop))

    loop = asyncio.SelectorEventLoop()
    try:
        sockets = loop.run_until_complete(scenario())
    finally:
        loop.close()
    loop_ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert loop_ref() is None and sockets() is None
