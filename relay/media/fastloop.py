"""The compiled forwarding loop (``relay.media._fastloop``), when it was built.

The fast path's work per forwarded packet is small (SRTP unprotect, a header rewrite,
SRTP protect, a send), yet done in Python it costs several times what the kernel and
libsrtp do. ``relay/media/_fastloop.c`` does the same per-datagram work in C for every
media socket of an event loop: ``MediaSockets`` (``relay.media.udp``) hands it the epoll
set, it reads every ready socket with ``recvmmsg``, forwards the RTP of the sockets a
``FastOpusForwarder`` attached a route to (``relay.media.fastpath``) with ``sendmmsg``,
and gives everything else back (``dispatch`` below): STUN, DTLS and RTP of other sockets
to the sockets' protocols as before; a packet from a new SSRC, and the forwarded packets'
taps and counters, to the forwarder. The far end's SRTCP on a route's socket is read there
too: its sender and receiver reports are kept on the route and synced with its counters,
other compounds (feedback, BYE) handed over decrypted (``relay.media.rtcp_in``).

It is optional: ``pip install -e .`` builds it when a C compiler and Python's headers are
present (``setup.py``). Without it, or with ``media.compiled_fast_path = false``, the
Python fast path forwards the same packets the same way (the media tests run on both).
``describe()`` says which path forwards (``/api/stats``, ``relay doctor``, ``/metrics``).

libsrtp: the loop calls the libsrtp pylibsrtp loaded (libsrtp 2.x with OpenSSL, linked
into pylibsrtp's extension), on the very contexts aiortc's sessions use, by their
addresses (``aiortc_private.srtp_function_addresses``). A second libsrtp (Debian's
libsrtp2) would need its own contexts, so aiortc's replay windows and rollover counters
would no longer be shared, and the keys would have to be taken from aiortc's DTLS
handshake; docs/benchmarks.md has the two measured side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from relay.media import aiortc_private
from relay.media.capabilities import MediaCapabilities

if TYPE_CHECKING:  # the compiled types, by their public names here
    from relay.media._fastloop import Loop as Loop
    from relay.media._fastloop import Route as Route
    from relay.media._fastloop import Source as Source

log = logging.getLogger("relay.media")

_compiled: ModuleType | None
try:
    from relay.media import _fastloop
except ImportError as exc:  # not built: the Python fast path forwards
    _compiled = None
    _MISSING = f"relay.media._fastloop is not built ({exc})"
else:
    _compiled = _fastloop
    _MISSING = ""

Path = Literal["compiled", "python"]

# How often, at most, a route's counters are copied into the Python objects that publish
# them (DirectionStats, aiortc's receiver statistics and sender report state) while its
# packets flow; at once after anything rare (a first packet, a drop), and whenever they are
# read (``FastOpusForwarder.refresh``: the bridge's monitor does every second, stats on
# request). Sender reports go out about once a second from aiortc's RTCP tasks. A pump
# syncs a few due routes at a time (``SYNCS_PER_PUMP`` in the C file), so routes that fall
# due together do not all hold up one pump; a route whose packets stopped is synced by the
# flush timer, which looks every ``FLUSH_INTERVAL_S`` for routes overdue by that much (a
# flowing one is a pump's): within 2 s.
SYNC_INTERVAL_S = 1.0
FLUSH_INTERVAL_S = SYNC_INTERVAL_S / 2
# Rounds of "poll the set, read every ready socket" per pump (as ``udp._MAX_ROUNDS``).
MAX_ROUNDS = 8

_enabled = True
# ``media.forwarding_thread``: the compiled loop reads and forwards on a thread of its own
# (``Loop.start_forwarding``) instead of on the event loop's.
_threaded = True
# ``media.forwarding_priority == "raised"``: the forwarder thread asks for real-time.
_raised = True
# Why the loop cannot run in this process although built: the private names it needs are
# missing (the start-up check, ``relay.media.capabilities``), or libsrtp's functions could
# not be found. None: nothing stops it.
_unavailable: str | None = None
# Whether the module was given libsrtp's functions (once, before the first loop: looked up
# then, not at import, so that an installation without the names still imports).
_srtp_given = False


def configure(
    enabled: bool,
    capabilities: MediaCapabilities | None = None,
    *,
    threaded: bool = True,
    raised: bool = True,
) -> None:
    """``media.compiled_fast_path``: forward with the compiled loop when it is built and
    (when ``capabilities`` are given) the names it needs are there; ``threaded``
    (``media.forwarding_thread``): on a thread of its own, ``raised``
    (``media.forwarding_priority``) at a raised priority where permitted. Applies to media
    socket sets made afterwards (one per event loop)."""
    global _enabled, _unavailable, _threaded, _raised
    _enabled = enabled
    _threaded = threaded
    _raised = raised
    _unavailable = None
    if capabilities is not None:
        state = capabilities.state("compiled_loop")
        if not state.available:
            _unavailable = (
                f"media capability compiled_loop unavailable (missing: {', '.join(state.missing)})"
            )


def enabled() -> bool:
    """``media.compiled_fast_path`` as configured (whether or not the module is built)."""
    return _enabled


def raised_priority() -> bool:
    """``media.forwarding_priority == "raised"`` as configured."""
    return _raised


def thread_enabled() -> bool:
    """``media.forwarding_thread`` as configured (whether or not the loop is active)."""
    return _threaded


def built() -> bool:
    return _compiled is not None


def active() -> bool:
    """Whether new media socket sets forward with the compiled loop."""
    return _compiled is not None and _enabled and _unavailable is None


def path() -> Path:
    return "compiled" if active() else "python"


def threaded() -> bool:
    """Whether new media socket sets forward on a thread of their own (the compiled loop's
    forwarder) rather than on the event loop's."""
    return active() and _threaded


def srtp_lock() -> aiortc_private.LockPair | None:
    """The media lock as (take, let go), for Python's own use of libsrtp contexts a route
    may share (``aiortc_private.SrtpCodec``, ``guard_srtp``); None when no compiled loop
    forwards (nothing else uses them then)."""
    if _compiled is None or not active():
        return None
    return (_compiled.acquire, _compiled.release)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the media lock: the forwarders wait while Python reads or writes a route's
    state or uses a libsrtp context a route shares (``_fastloop.c``, "the media lock").
    Recursive; a no-op when the module is not built (nothing else forwards then)."""
    if _compiled is None:
        yield
        return
    _compiled.acquire()
    try:
        yield
    finally:
        _compiled.release()


def describe() -> dict[str, Any]:
    """Which path forwards, and why (``/api/stats`` ``media_receive.forwarding``)."""
    if active():
        reason = None
    elif _compiled is None:
        reason = _MISSING
    elif not _enabled:
        reason = "media.compiled_fast_path = false"
    else:
        reason = _unavailable
    return {
        "path": path(),
        "compiled_built": _compiled is not None,
        "compiled_enabled": _enabled,
        "srtp": aiortc_private.srtp_library_version(),
        "reason": reason,
    }


def doctor_check() -> tuple[Literal["OK", "WARN"], str, str]:
    """``relay doctor``'s line: (outcome, detail, what to do)."""
    srtp = aiortc_private.srtp_library_version()
    if active():
        where = "on a thread of its own" if _threaded else "on the event loop's thread"
        return "OK", f"compiled loop (relay.media._fastloop, {srtp} from pylibsrtp), {where}", ""
    if _compiled is not None and not _enabled:
        return "OK", "Python fast path (media.compiled_fast_path = false)", ""
    if _compiled is not None:
        return (
            "WARN",
            f"Python fast path: {_unavailable}",
            "install the pinned aiortc, aioice and pylibsrtp (docs/media.md)",
        )
    return (
        "WARN",
        f"Python fast path: {_MISSING}",
        "reinstall with a C compiler and Python's headers (pip install -e .) to forward "
        "at a fraction of the CPU",
    )


def new_loop() -> _fastloop.Loop | None:
    """A compiled loop for one media socket set, or None (the Python path reads)."""
    if not active() or not _give_srtp():
        return None
    return _fastloop.Loop(sync_interval=SYNC_INTERVAL_S)


def endpoint_loop() -> _fastloop.Loop:
    """A compiled loop that keeps the kernel's receive time of every datagram, for the
    loop's endpoints (``Source``, ``new_sink``: the benchmark's generator plays its peers'
    media with them), whatever ``media.compiled_fast_path`` says. RuntimeError when the
    module is not built or libsrtp's functions are not found."""
    if _compiled is None:
        raise RuntimeError(_MISSING)
    if not _give_srtp():
        raise RuntimeError(str(_unavailable))
    return _fastloop.Loop(timestamps=True)


def enable_receive_times(sock: socket.socket) -> None:
    """Have the kernel stamp every datagram ``sock`` receives (``SO_TIMESTAMPNS``): a loop
    from ``endpoint_loop`` records those times in its sinks."""
    if _compiled is None:
        raise RuntimeError(_MISSING)
    sock.setsockopt(socket.SOL_SOCKET, _fastloop.SO_TIMESTAMPNS, 1)


def new_source(
    *,
    fd: int,
    out_addr: tuple[str, int],
    tx_session: Any,
    ssrc: int,
    payload_type: int,
    extensions: bytes,
    payloads: tuple[bytes, ...],
    start: float,
    seq0: int,
    ts0: int,
) -> _fastloop.Source:
    """An endpoint that sends ``payloads`` in turn, one every 20 ms from ``start``
    (``time.monotonic``), as RTP protected with ``tx_session`` (a pylibsrtp session) from
    socket ``fd`` to ``out_addr``, for a loop from ``endpoint_loop`` (``add_source``)."""
    if _compiled is None:
        raise RuntimeError(_MISSING)
    host, port = out_addr
    return _fastloop.Source(
        fd,
        socket.AF_INET6 if ":" in host else socket.AF_INET,
        host,
        port,
        tx_session,
        aiortc_private.srtp_context_address(tx_session),
        ssrc,
        payload_type,
        extensions,
        payloads,
        start,
        seq0=seq0,
        ts0=ts0,
    )


def new_sink(*, fd: int, rx_session: Any, keep_payloads: bool) -> _fastloop.Route:
    """A route that unprotects and records every RTP datagram socket ``fd`` receives
    (arrival time, timestamp, SSRC, sequence number, size; the payloads too when
    ``keep_payloads``), for a loop from ``endpoint_loop`` (``add_route``)."""
    if _compiled is None:
        raise RuntimeError(_MISSING)
    return _fastloop.new_sink(
        fd, rx_session, aiortc_private.srtp_context_address(rx_session), keep_payloads
    )


def _give_srtp() -> bool:
    """Hand the module libsrtp's functions, once (False: pylibsrtp lacks them)."""
    global _srtp_given, _unavailable
    if not _srtp_given:
        try:
            addresses = aiortc_private.srtp_function_addresses()
        except AttributeError as exc:  # pylibsrtp without the names (not checked at start)
            _unavailable = f"libsrtp's functions not found in pylibsrtp ({exc})"
            log.warning("compiled fast path unavailable: %s", _unavailable)
            return False
        _fastloop.set_srtp(*addresses)
        _srtp_given = True
    return True


def new_route(
    *,
    in_fd: int,
    out_fd: int,
    out_addr: tuple[Any, ...],
    rx_session: Any,
    tx_session: Any,
    owner: RouteOwner,
) -> _fastloop.Route:
    """A route for one forwarding direction (``ValueError``: an address it cannot send to,
    such as a scoped IPv6 one; the Python path goes on)."""
    host, port = str(out_addr[0]), int(out_addr[1])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _fastloop.Route(
        in_fd,
        out_fd,
        family,
        host,
        port,
        rx_session,
        aiortc_private.srtp_context_address(rx_session),
        tx_session,
        aiortc_private.srtp_context_address(tx_session),
        owner,
    )


class RouteOwner(Protocol):
    """What a route hands back to the forwarder that attached it."""

    def compiled_plain(self, route: Any, plain: bytes) -> None:
        """A decrypted packet for the Python path (a new SSRC, or the route paused)."""

    def compiled_tap(
        self, payload: bytes, seq: int, ts: int, ssrc: int, marker: bool, arrival: float
    ) -> None:
        """A packet the loop forwarded, for the recorder's tap."""

    def compiled_sync(self, route: Any) -> None:
        """Copy the route's counters into the Python objects that publish them."""

    def compiled_rtcp(self, route: Any, plain: bytes) -> None:
        """A decrypted SRTCP compound of the route's socket for aiortc's handlers."""


class DatagramEnd(Protocol):
    """The part of a media socket's transport ``dispatch`` talks to."""

    def deliver(self, data: bytes, addr: Any) -> None: ...

    def report_error(self, exc: OSError) -> None: ...

    def send_handed_over(self, data: bytes, addr: Any) -> None: ...


def dispatch(
    punts: list[tuple[Any, ...]],
    transports: Mapping[int, DatagramEnd],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Hand everything a pump did not forward itself to where it goes, in arrival order.

    One receiver's bug must not stop the others (as ``MediaSockets.read_ready``)."""
    for item in punts:
        kind = item[0]
        transport: DatagramEnd | None = None
        try:
            if kind == 0:  # PUNT_RAW: the socket's protocol, as if read in Python
                transport = transports.get(item[1])
                if transport is not None:
                    transport.deliver(item[2], item[3])
            elif kind == 3:  # PUNT_TAP
                item[1].owner.compiled_tap(*item[2:])
            elif kind == 5:  # PUNT_SYNC
                item[1].owner.compiled_sync(item[1])
            elif kind == 1:  # PUNT_PLAIN
                item[1].owner.compiled_plain(item[1], item[2])
            elif kind == 6:  # PUNT_RTCP_PLAIN
                item[1].owner.compiled_rtcp(item[1], item[2])
            elif kind == 2:  # PUNT_SEND: the socket did not take it; its transport queues
                transport = transports.get(item[1])
                if transport is not None:
                    transport.send_handed_over(item[2], item[3])
            elif kind == 4:  # PUNT_ERROR
                transport = transports.get(item[1])
                if transport is not None:
                    transport.report_error(OSError(item[2], os.strerror(item[2])))
        except Exception as exc:
            context: dict[str, Any] = {"message": "media socket protocol raised", "exception": exc}
            if transport is not None:
                context["transport"] = transport
            loop.call_exception_handler(context)


def sync_due(compiled_loop: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Copy the counters of every route overdue by ``FLUSH_INTERVAL_S`` (the flush timer:
    routes whose packets stopped; the pumps sync the others, a few at a time)."""
    for route in compiled_loop.take_due(SYNC_INTERVAL_S + FLUSH_INTERVAL_S):
        try:
            route.owner.compiled_sync(route)
        except Exception as exc:
            loop.call_exception_handler(
                {"message": "syncing a compiled route raised", "exception": exc}
            )
