"""The relay's own UDP transport for its media sockets, and receive batching.

Every datagram a leg receives used to wake the process: the event loop waits in
``epoll_wait`` on each socket, and at tens of sessions (about 3,000 datagrams a second at
30) the relay sleeps between nearly every two of them. On these machines waking a
sleeping process costs several times what forwarding the packet does (docs/benchmarks.md,
"Where a forwarded packet's CPU goes"), so the relay's CPU was mostly wake-ups.

``MediaSockets`` puts every relay media socket of the process in one epoll set of its own
and reads them together, the way a network card moderates its interrupts (Linux NAPI):

* quiet: the loop watches the set; the first datagram wakes it and is handled at once;
* busy: once two wake-ups come closer together than ``batch_s``, the loop stops watching
  the set and polls it every ``batch_s`` instead, handling whatever arrived meanwhile
  (every session's datagrams in one wake-up); a poll that finds nothing returns to
  watching, so a quiet relay never polls.

With the compiled loop the polls run on a timer of its own (a ``timerfd`` in the same
epoll set the event loop watches): each poll is due ``batch_s`` after the previous one
*started*, to the microsecond, so a busy relay polls at a steady pace whatever the pump and
the callbacks beside it took. The event loop's timers count whole milliseconds from a
clock read before the callbacks ran, and a window on them starts only after all of that
(busy polls came 2-4 ms apart at 500 interviews with a 1 ms window; docs/benchmarks.md,
"Polls at a fixed pace"); the Python fast path still polls on them, and so do the
benchmark's endpoints (``steady_polls = False``).

A datagram therefore waits at most about ``batch_s`` (on the event loop's timers, plus
their granularity, a millisecond, and the pump before) before it is handled, and only
while the relay is busy. ``batch_s = 0`` watches every socket always (one wake-up per
datagram, as before).

uvloop's UDP transport cannot stop reading a socket (it has no ``pause_reading``), so the
relay's media sockets use ``MediaDatagramTransport``, a small ``asyncio.DatagramTransport``
over a non-blocking socket, which both event loops can drive. aioice creates the sockets;
``relay.media.port_range`` hands it these transports while a relay peer gathers.

When the compiled loop is built and enabled (``relay.media.fastloop``), a set reads its
sockets through it: the same rounds, with ``recvmmsg``, forwarding the fast path's RTP in C
and handing everything else to the same protocols.

With ``media.forwarding_thread`` (the default) the compiled loop does all of the above on
a thread of its own, without the interpreter (``Loop.start_forwarding``): the same
watching, the same polls every ``batch_s`` while busy, the same rounds. The event loop
then never reads the sockets; it wakes only when the forwarder has queued something for
Python (STUN, DTLS, a new SSRC, the taps, the routes' syncs) and hands it on as above. The
forwarding no longer waits for whatever else the event loop runs (docs/media.md, "The
forwarder thread").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import select
import socket
import time
import weakref
from typing import Any

from relay.media import aiortc_private, fastloop

log = logging.getLogger("relay.media")

# The largest UDP payload: a datagram is never truncated.
_MAX_DATAGRAM = 65535
# Datagrams waiting for the socket to accept them (it rarely refuses: a full send
# buffer); beyond this a datagram is dropped and counted, as the network would.
SEND_QUEUE_MAX = 256
# Rounds of "poll the set, read one datagram from each ready socket" per wake-up: bounds
# how long one wake-up can hold the loop (about 2,000 datagrams at most).
_MAX_ROUNDS = 8
_MAX_EVENTS = 256


class MediaDatagramTransport(asyncio.DatagramTransport):
    """An ``asyncio.DatagramTransport`` over a non-blocking UDP socket, read by
    ``MediaSockets`` (which decides when) rather than by the event loop directly."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
        sockets: MediaSockets,
        peer: Any = None,
    ) -> None:
        super().__init__(extra={"socket": sock, "sockname": sock.getsockname(), "peername": peer})
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._sockets = sockets
        self._peer = peer
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._closing = False
        self.dropped_sends = 0

    @property
    def fileno(self) -> int:
        return self._fd

    # ------------------------------------------------------------------ receiving
    def read_one(self, buffer: bytearray, view: memoryview) -> None:
        """Read one datagram into ``buffer`` (``view`` over it), if there is one, and hand a
        copy to the protocol."""
        try:
            n, addr = self._sock.recvfrom_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # An ICMP error reported on the socket; the socket itself is fine.
            self._protocol.error_received(exc)
            return
        self._protocol.datagram_received(bytes(view[:n]), addr)

    def deliver(self, data: bytes, addr: Any) -> None:
        """A datagram the compiled loop read from this socket and did not forward itself."""
        self._protocol.datagram_received(data, addr)

    def report_error(self, exc: OSError) -> None:
        self._protocol.error_received(exc)

    # ------------------------------------------------------------------ sending
    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send now if the socket takes it, else queue it (bounded) until it does.

        ``addr`` None: the connected peer (a TURN client's socket)."""
        if self._closing:
            return
        if not self._queue:
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
                # The compiled loop must not send past the queue: through it until drained.
                self._sockets.hold(self._fd, True)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        if len(self._queue) >= SEND_QUEUE_MAX:
            self.dropped_sends += 1
            return
        self._queue.append((bytes(data), addr))

    def send_handed_over(self, data: bytes, addr: Any) -> None:
        """A datagram the compiled loop could not send now (the socket refused it): as
        ``sendto``. The loop sends this socket's later datagrams through here from then on
        (``hold``), so that none overtakes it; once nothing waits here, it sends them itself
        again."""
        self.sendto(data, addr)
        if not self._queue:
            self._sockets.hold(self._fd, False)

    def _send(self, data: Any, addr: Any) -> None:
        if addr is None:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def _write_ready(self) -> None:
        queue = self._queue
        while queue:
            data, addr = queue[0]
            try:
                self._send(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            queue.popleft()
        self._loop.remove_writer(self._fd)
        self._sockets.hold(self._fd, False)
        if self._closing:
            self._finish_close()

    def get_write_buffer_size(self) -> int:
        return sum(len(data) for data, _ in self._queue)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, SEND_QUEUE_MAX * 1500)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # a bounded queue of datagrams instead (SEND_QUEUE_MAX)

    def can_write_eof(self) -> bool:
        return False

    # ------------------------------------------------------------------ closing
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._sockets.remove(self)
        if not self._queue:
            self._finish_close()

    def abort(self) -> None:
        if not self._closing:
            self._closing = True
            self._sockets.remove(self)
        if self._queue:
            self._queue.clear()
            self._loop.remove_writer(self._fd)
        self._finish_close()

    def _finish_close(self) -> None:
        if self._sock.fileno() == -1:
            return
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<MediaDatagramTransport fd={self._fd} {state}>"


class MediaSockets:
    """Every media socket of one event loop, read together (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        batch_s: float,
        *,
        compiled: bool | None = None,
        threaded: bool | None = None,
    ) -> None:
        if not 0 <= batch_s <= 0.01:
            raise ValueError(f"batch_s must be 0..0.01, not {batch_s}")
        # Weakly: the registry below maps each loop to its set, and a set holding its
        # loop strongly would keep every loop (and its epoll descriptor) alive forever.
        self._loop_ref = weakref.ref(loop)
        self._batch_s = batch_s
        self._epoll = select.epoll()
        # What the event loop watches: an epoll set holding ``_epoll`` alone, for good.
        # Watching and polling switch by changing ``_epoll``'s mask in it (EPOLL_CTL_MOD, a
        # few hundred ns) instead of adding and removing a reader: adding an epoll set to
        # another runs the kernel's loop and wake-up path checks over every socket inside
        # (libuv even adds it twice, once to check the descriptor), about 100 µs at 600
        # sockets, and a busy relay switches hundreds of times a second
        # (docs/benchmarks.md, "Watching without adding and removing a reader").
        self._gate = select.epoll()
        self._gate.register(self._epoll.fileno(), 0)
        self._gate_watched = False
        self._transports: dict[int, MediaDatagramTransport] = {}
        # One receive buffer for the whole set: reads happen one at a time on the loop,
        # and each datagram is copied out before its protocol sees it.
        self._buffer = bytearray(_MAX_DATAGRAM)
        self._view = memoryview(self._buffer)
        self._watching = False
        self._tick: asyncio.TimerHandle | None = None
        self._last_wake = 0.0
        self._timed = False
        # Whether busy polls keep their pace on the compiled loop's timer (module
        # docstring). The benchmark's endpoints poll on the event loop's: fewer, larger
        # polls cost their process less, and they only need to keep up.
        self.steady_polls = True
        # The compiled loop reading this set (``compiled`` None: as configured), if any.
        use_compiled = fastloop.active() if compiled is None else compiled
        self._compiled: Any = None
        # Whether the compiled loop's forwarder thread runs now (from the first socket to
        # the last), and whether it reads the sockets at all (``threaded`` None: as
        # configured when ``compiled`` is too, else not).
        self._forwarding = False
        self.compiled = fastloop.new_loop() if use_compiled else None
        if threaded is None:
            threaded = compiled is None and fastloop.threaded()
        self.threaded = self.compiled is not None and threaded
        self._sync: asyncio.TimerHandle | None = None
        # Counters for /api/stats and the benchmarks.
        self.wakeups = 0
        self.polls = 0
        self.datagrams = 0

    @property
    def compiled(self) -> Any:
        """The compiled loop reading this set, or None (the Python path)."""
        return self._compiled

    @compiled.setter
    def compiled(self, compiled: Any) -> None:
        # Busy polls run on the compiled loop's timer: it sits in the gate beside
        # ``_epoll``, ready only while armed (``_timed``), and then ``_epoll`` is not
        # watched, so the gate waking means a poll is due. A loop put in later (the
        # benchmark's endpoints read with one of their own) brings its own timer.
        if self._timed or self._forwarding:
            raise RuntimeError("the compiled loop cannot change while it reads the sockets")
        # A loop put in from outside is read on the event loop (the benchmark's endpoints).
        self.threaded = False
        if self._compiled is not None:
            self._gate.unregister(self._compiled.tick_fd)
        self._compiled = compiled
        if compiled is not None:
            self._gate.register(compiled.tick_fd, select.EPOLLIN)

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref()
        if loop is None:
            raise RuntimeError("the event loop of these media sockets is gone")
        return loop

    def __len__(self) -> int:
        return len(self._transports)

    @property
    def batch_s(self) -> float:
        return self._batch_s

    @batch_s.setter
    def batch_s(self, batch_s: float) -> None:
        self._batch_s = batch_s
        if self._forwarding:
            self._compiled.set_batch(batch_s)

    @property
    def batching(self) -> bool:
        """Whether the loop is polling on a timer right now (busy) rather than watching."""
        return self._tick is not None or self._timed

    def snapshot(self) -> dict[str, Any]:
        """For /api/stats: the window, the state, and the counts since start (the
        forwarder's, when it reads the sockets)."""
        wakeups, polls, datagrams = self.wakeups, self.polls, self.datagrams
        batching = self.batching
        thread: dict[str, Any] = {"running": self._forwarding}
        if self.threaded:
            totals = self.compiled.stats()
            wakeups, polls, datagrams = totals["wakeups"], totals["polls"], totals["datagrams"]
            # The thread's own state: the event loop's timer never runs while it reads.
            batching = bool(totals["busy"])
            thread |= {
                # What the running thread got (None: none runs, no socket is open).
                "priority": (
                    _PRIORITIES.get(totals["priority"], "default") if self._forwarding else None
                ),
                "punts_dropped": totals["punts_dropped"],
            }
        woken = wakeups + polls
        return {
            "batch_ms": round(self.batch_s * 1000, 3),
            "sockets": len(self._transports),
            "batching": batching,
            "wakeups": wakeups,
            "polls": polls,
            "datagrams": datagrams,
            "datagrams_per_wakeup": round(datagrams / woken, 2) if woken else None,
            # Which path reads and forwards (relay.media.fastloop).
            "forwarding": fastloop.describe()
            | {
                "path": "compiled" if self.compiled is not None else "python",
                "compiled_routes": self.compiled.route_count if self.compiled is not None else 0,
                # The far ends' SRTCP on the compiled routes' sockets: compounds read in the
                # loop, handed to aiortc's handlers (feedback, BYE), refused (SRTCP checks,
                # malformed).
                "rtcp": self._rtcp_counts(),
                # The forwarder thread (None: the event loop reads the sockets).
                "thread": thread if self.threaded else None,
            },
            # SRTP/SRTCP datagrams too large for pylibsrtp, kept from aiortc's DTLS task
            # (aiortc_private.refuse_oversized_srtp); process-wide.
            "refused_oversized": aiortc_private.oversized_srtp_refused(),
        }

    def _rtcp_counts(self) -> dict[str, int]:
        totals = self.compiled.stats() if self.compiled is not None else {}
        return {
            "read": totals.get("rtcp_read", 0),
            "to_aiortc": totals.get("rtcp_to_python", 0),
            "dropped": totals.get("rtcp_dropped", 0),
        }

    def add(self, transport: MediaDatagramTransport) -> None:
        fd = transport.fileno
        self._epoll.register(fd, select.EPOLLIN)
        self._transports[fd] = transport
        if self.threaded:
            if not self._forwarding:
                self._start_forwarding()
        elif not self._watching and not self.batching:
            self._watch()

    def remove(self, transport: MediaDatagramTransport) -> None:
        fd = transport.fileno
        if self._transports.pop(fd, None) is None:
            return
        self._epoll.unregister(fd)
        if self.compiled is not None:
            self.compiled.forget_fd(fd)
        if not self._transports:
            self._stop()

    def hold(self, fd: int, queued: bool) -> None:
        """A transport started (or stopped) queueing what its socket refused."""
        if self.compiled is not None:
            self.compiled.hold(fd, queued)

    def close(self) -> None:
        for transport in list(self._transports.values()):
            transport.abort()
        self._stop()
        if self.threaded:
            self._take_punts()  # the forwarder's last ones (its routes' references go)
        if self.compiled is not None:
            self.compiled.close()
        self._gate.close()
        self._epoll.close()

    def _watch(self) -> None:
        if not self._gate_watched:
            self._loop.add_reader(self._gate.fileno(), self._on_readable)
            self._gate_watched = True
        self._gate.modify(self._epoll.fileno(), select.EPOLLIN)
        self._watching = True

    def _unwatch(self) -> None:
        """Stop waking for the sockets (the loop still watches the gate, now never ready)."""
        self._gate.modify(self._epoll.fileno(), 0)
        self._watching = False

    def _start_forwarding(self) -> None:
        compiled = self._compiled
        compiled.start_forwarding(
            self._epoll.fileno(), self.batch_s, _MAX_ROUNDS, raised=fastloop.raised_priority()
        )
        self._forwarding = True
        self._loop.add_reader(compiled.notify_fd, self._take_punts)

    def _stop_forwarding(self) -> None:
        self._compiled.stop_forwarding()
        self._forwarding = False
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._compiled.notify_fd)
            # What it queued last (for sockets now closed, mostly) is handed on after the
            # callback that closed the last socket, not in the middle of it.
            loop.call_soon(self._take_punts)

    def _take_punts(self) -> None:
        """Hand on what the forwarder queued for Python (``notify_fd`` is ready)."""
        compiled = self._compiled
        punts = compiled.take_punts()
        loop = self._loop_ref()
        if punts is not None and loop is not None:
            fastloop.dispatch(punts, self._transports, loop)
        if self._forwarding and compiled.forward_error:
            # Its sockets' set failed under it (it cannot, unless closed): the event loop
            # reads the set from now on, as with media.forwarding_thread = false.
            log.error(
                "the media forwarder thread stopped (%s); the event loop reads the sockets",
                os.strerror(compiled.forward_error),
            )
            self._stop_forwarding()
            self.threaded = False
            if self._transports:
                self._watch()
        self._arm_flush()

    def _stop(self) -> None:
        if self._forwarding:
            self._stop_forwarding()
        if self._watching:
            self._unwatch()
        if self._gate_watched:
            loop = self._loop_ref()
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._gate.fileno())
            self._gate_watched = False
        self._cancel_polls()
        if self._sync is not None:
            self._sync.cancel()
            self._sync = None

    def _on_readable(self) -> None:
        if self._timed:
            # Busy: the gate holds only the poll timer's readiness (module docstring).
            self.compiled.clear_tick()
            self._on_tick()
            return
        self.wakeups += 1
        started = time.monotonic()
        self.read_ready()
        batch_s = self.batch_s
        if not batch_s:
            return
        now = time.monotonic()
        busy = now - self._last_wake < batch_s
        self._last_wake = now
        # (Not watching any more: the read closed the last socket and the set stopped.)
        if busy and self._watching:
            # Datagrams come faster than one per batch_s: poll on a timer until they stop.
            self._unwatch()
            self._poll_after(started)

    def _on_tick(self) -> None:
        # ``batching`` stays true while the poll reads: a transport added meanwhile must
        # not start watching the set in the middle of a busy spell.
        self.polls += 1
        started = time.monotonic()
        try:
            read = self.read_ready()
        except BaseException:
            # Nothing would wake a set left polling: watch, so the next datagram does.
            if self.batching:
                self._end_polling()
            raise
        if not self.batching:
            # The poll closed the last socket and the set stopped (``_stop``), perhaps to
            # start watching again for a socket added since: no poll is due. (A timer armed
            # now would sit in a gate nobody watches, or beside the watching.)
            return
        if read:
            self._poll_after(started)
        else:
            self._end_polling()

    def _poll_after(self, started: float) -> None:
        """The next poll: ``batch_s`` after this one started, on the compiled loop's timer;
        on the event loop's, ``batch_s`` from now (its granularity is a millisecond)."""
        if self._compiled is not None and self.steady_polls:
            self._tick = None
            self._compiled.arm_tick(started + self.batch_s)
            self._timed = True
        else:
            self._timed = False
            self._tick = self._loop.call_later(self.batch_s, self._on_tick)

    def _end_polling(self) -> None:
        """Quiet again (or a poll failed): watch the set."""
        self._cancel_polls()
        self._last_wake = time.monotonic()
        self._watch()

    def _cancel_polls(self) -> None:
        """No poll is due any more, on either timer (a handle that already fired cancels
        as a no-op; a timer a failed poll left armed is disarmed)."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._timed:
            self._compiled.disarm_tick()
            self._timed = False

    def read_ready(self) -> int:
        """Read one datagram from each ready socket, again until none is ready; the count.

        The set's own wake-ups and polls call it; so does a benchmark that times the
        receive path alone (bench/compiled_cost.py)."""
        if self.compiled is not None:
            return self._read_ready_compiled()
        poll = self._epoll.poll
        transports = self._transports
        buffer, view = self._buffer, self._view
        count = 0
        for _ in range(_MAX_ROUNDS):
            ready = poll(0, _MAX_EVENTS)
            if not ready:
                break
            for fd, _events in ready:
                transport = transports.get(fd)
                if transport is None:
                    continue  # closed by a protocol earlier in this round
                try:
                    transport.read_one(buffer, view)
                except Exception as exc:  # one protocol's bug must not stop the others
                    self._loop.call_exception_handler(
                        {
                            "message": "media socket protocol raised",
                            "exception": exc,
                            "transport": transport,
                        }
                    )
            count += len(ready)
        self.datagrams += count
        return count

    def _read_ready_compiled(self) -> int:
        """The same rounds in C (``recvmmsg``; every ready socket read out, up to a batch),
        the fast path's RTP forwarded there; the rest handed on here."""
        loop = self._loop
        count, punts = self.compiled.pump(self._epoll.fileno(), _MAX_ROUNDS)
        if punts is not None:
            fastloop.dispatch(punts, self._transports, loop)
        self._arm_flush()
        self.datagrams += count
        result: int = count
        return result

    def _on_sync(self) -> None:
        self._sync = None
        if self.compiled is not None:
            fastloop.sync_due(self.compiled, self._loop)
            self._arm_flush()  # the rest is the pumps' or the next look's

    def _arm_flush(self) -> None:
        """Counters not yet synced reach Python even if packets stop (fastloop.sync_due)."""
        if self.compiled is not None and self.compiled.dirty and self._sync is None:
            loop = self._loop_ref()
            if loop is not None and not loop.is_closed():
                self._sync = loop.call_later(fastloop.FLUSH_INTERVAL_S, self._on_sync)


# What ``Loop.stats()["priority"]`` means: the forwarder thread's scheduling.
_PRIORITIES = {0: "default", 1: "nice -10", 2: "SCHED_FIFO"}


def compiled_loop_of(receiving: Any, sending: Any) -> Any:
    """The compiled loop that reads ``receiving``'s socket and may send on ``sending``'s:
    both open media transports of one set that has one (else None: a TURN leg's transport,
    or the Python path)."""
    if not (
        isinstance(receiving, MediaDatagramTransport)
        and isinstance(sending, MediaDatagramTransport)
        and not receiving.is_closing()
        and not sending.is_closing()
        and receiving._sockets is sending._sockets
    ):
        return None
    return receiving._sockets.compiled


# One ``MediaSockets`` per event loop (tests run many loops in one process).
_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MediaSockets] = (
    weakref.WeakKeyDictionary()
)
_batch_s = 0.0


def configure(batch_s: float) -> None:
    """The batching window of the process's media sockets (``media.receive_batch_ms``);
    applies to every loop, including ones whose sockets are already open."""
    global _batch_s
    if not 0 <= batch_s <= 0.01:
        raise ValueError(f"batch_s must be 0..0.01, not {batch_s}")
    _batch_s = batch_s
    for sockets in _by_loop.values():
        sockets.batch_s = batch_s


def configured_batch_s() -> float:
    return _batch_s


def media_sockets(loop: asyncio.AbstractEventLoop) -> MediaSockets:
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = MediaSockets(loop, _batch_s)
    return found


def open_media_endpoint(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Any,
    sock: socket.socket,
    peer: Any = None,
) -> tuple[MediaDatagramTransport, asyncio.DatagramProtocol]:
    """Wrap a bound, non-blocking UDP socket as ``loop.create_datagram_endpoint`` would.

    ``connection_made`` runs before this returns: aioice reads ``protocol.transport``
    right after ``create_datagram_endpoint``."""
    protocol: asyncio.DatagramProtocol = protocol_factory()
    sockets = media_sockets(loop)
    transport = MediaDatagramTransport(loop, sock, protocol, sockets, peer)
    protocol.connection_made(transport)
    sockets.add(transport)
    return transport, protocol
