"""The UDP port range for the relay's media sockets (``ice.udp_port_min``/``udp_port_max``).

aioice binds every socket to port 0 (any port) and has no option for a range. While a
relay peer gathers its candidates (``peers.set_local_description``), a context variable
holds the configured ``PortRange`` (or none); aioice's ``asyncio.get_running_loop()`` is
routed (``aiortc_private.route_aioice_running_loop``) to a small wrapper around the real
loop whose ``create_datagram_endpoint`` binds the socket itself, inside the range when one
is configured, and hands aioice the relay's own media transport for it
(``relay.media.udp``, whose sockets are read together). That covers the host candidates
of both legs and the UDP socket of a TURN client; nothing else in the process is affected
(other peers, such as tests' clients or the built-in simulator, gather without the
context variable and get the loop's own transports on any port).

Ports are found by trying to bind, from a cursor that moves round the range, so ports held
by anything else on the machine are skipped and a port is free again as soon as its
socket closes (UDP has no TIME_WAIT). When no port in the range can be bound, the bind
raises ``NoMediaPorts``; it is deliberately not an ``OSError``, which aioice would log and
swallow, leaving a peer without candidates that would hang until the connect timeout.

Not covered: a TURN client over TCP/TLS (``?transport=tcp``, ``turns:``) uses a TCP
socket, not a UDP media socket, and binds any port; aioice's process-wide mDNS socket
(used only to resolve a browser's ``.local`` candidates) is port 5353.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, cast

from relay.media import aiortc_private, udp


class NoMediaPorts(Exception):
    """Every port of ``ice.udp_port_min..udp_port_max`` is in use."""


class PortRange:
    """An inclusive UDP port range, shared by every relay peer of the process."""

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"not a port range: {low}..{high}")
        self.low = low
        self.high = high
        self._next = low

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def _ports(self) -> Iterator[int]:
        """Every port once, starting at the cursor (spreads reuse over the range)."""
        start = self._next
        for i in range(self.size):
            yield self.low + (start - self.low + i) % self.size

    def _advance(self, port: int) -> None:
        self._next = port + 1 if port < self.high else self.low

    def bind(self, host: str) -> socket.socket:
        """A UDP socket bound to a free port of the range on ``host``."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for port in self._ports():
            # Bound here rather than by the loop: uvloop's create_datagram_endpoint binds
            # with SO_REUSEADDR, which on Linux lets a second socket take a port of the
            # range that is in use (no EADDRINUSE), so two sessions would share it.
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self._advance(port)
            return sock
        raise NoMediaPorts(f"all {self.size} UDP ports {self.low}-{self.high} are in use")

    def has_free_ports(self, host: str, count: int) -> bool:
        """Whether ``count`` ports of the range can be bound on ``host`` right now (no
        await: non-blocking binds, held until the count is reached, then closed)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with contextlib.ExitStack() as held:
            free = 0
            for port in self._ports():
                if free >= count:
                    break
                probe = held.enter_context(socket.socket(family, socket.SOCK_DGRAM))
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        continue
                    raise
                free += 1
            return free >= count


def _bind(ports: PortRange | None, host: str) -> socket.socket:
    """A non-blocking UDP socket on ``host``, inside ``ports`` if given, else any port."""
    if ports is not None:
        sock = ports.bind(host)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, 0))
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


def _wildcard_for(host: str) -> str:
    """The any-address of the family of ``host`` (a TURN server; names count as IPv4)."""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return "::"
    return "0.0.0.0"


class _Gather:
    """One peer's gathering (``binding_in``): its range and every socket bound in it.

    aioice keeps the host sockets of a component in a local list until all of them are
    bound (``Connection.get_component_candidates``), so when the range runs out on a
    later address, the sockets already bound are in no place its ``close`` reaches; and
    ``asyncio.gather`` lets the other transports' gathering go on after the first error.
    So the scope holds every transport it created: when the gather fails they are closed,
    and anything bound afterwards for it is closed at once and refused.
    """

    def __init__(self, ports: PortRange | None) -> None:
        self.ports = ports
        self.transports: list[asyncio.BaseTransport] = []
        self.failed = False

    def created(self, transport: asyncio.BaseTransport) -> None:
        if self.failed:
            transport.close()
            raise NoMediaPorts("the gathering this socket was bound for has failed")
        self.transports.append(transport)

    def fail(self) -> None:
        self.failed = True
        for transport in self.transports:
            transport.close()  # idempotent for the ones aioice also closes
        self.transports.clear()


_ranges: dict[tuple[int, int], PortRange] = {}
_active: ContextVar[_Gather | None] = ContextVar("relay_media_port_range", default=None)


def port_range(low: int, high: int) -> PortRange | None:
    """The process's ``PortRange`` for ``low..high`` (one per range); None for 0/0 (any)."""
    if low == 0 and high == 0:
        return None
    key = (low, high)
    found = _ranges.get(key)
    if found is None:
        found = _ranges[key] = PortRange(low, high)
    return found


class _RelayPeerLoop:
    """The running loop as aioice sees it while a relay peer gathers: only
    ``create_datagram_endpoint`` differs. The socket is bound inside the range (when one
    is configured, else to any port) and handed to the relay's own media transport
    (``relay.media.udp``), whose reading can be batched across sessions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gather: _Gather) -> None:
        self._loop = loop
        self._gather = gather

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if kwargs or (local_addr is not None and local_addr[1] != 0):
            # Not how aioice asks (a given socket or port, socket options): the loop's own.
            result = await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
            )
            self._gather.created(result[0])
            return result
        if local_addr is not None:
            host = local_addr[0]
        elif remote_addr is not None:
            host = _wildcard_for(remote_addr[0])
        else:
            host = "0.0.0.0"
        sock = _bind(self._gather.ports, host)
        try:
            if remote_addr is not None:
                # A TURN client's socket: connected, as the loop's own would be.
                await self._loop.sock_connect(sock, remote_addr)
            transport, protocol = udp.open_media_endpoint(
                self._loop, protocol_factory, sock, peer=remote_addr
            )
        except BaseException:
            sock.close()
            raise
        self._gather.created(transport)
        return transport, protocol


def _loop_for_aioice() -> asyncio.AbstractEventLoop:
    loop = asyncio.get_running_loop()
    gather = _active.get()
    if gather is None:
        return loop
    return cast(asyncio.AbstractEventLoop, _RelayPeerLoop(loop, gather))


@contextlib.contextmanager
def binding_in(ports: PortRange | None) -> Iterator[None]:
    """Within this block (and the tasks it starts), aioice binds inside ``ports``.

    If the block fails (no free port, a timeout, a cancellation), every socket bound
    within it is closed, and any bound later by gathering it started is refused."""
    if not aiortc_private.route_aioice_running_loop(_loop_for_aioice):
        # Callers check relay.media.capabilities first; binding anywhere would be silent.
        raise RuntimeError("aioice's sockets cannot be routed: no port range on this aioice")
    gather = _Gather(ports)
    token = _active.set(gather)
    try:
        yield
    except BaseException:
        gather.fail()
        raise
    finally:
        _active.reset(token)
