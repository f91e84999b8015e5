"""The load generator's media in compiled code, so that it can carry hundreds of sessions.

Each session still starts as before (``bench/shipped.py``): an aiortc "browser" peer and an
aiortc "upstream" peer, admission, the exchange, ICE, DTLS, the data channel, and the first
reply audio heard through aiortc. Then both endpoints hand their audio over to the relay's
own compiled loop (``relay.media.fastloop``) in this process: a ``Source`` sends the same
pre-encoded Opus, every 20 ms, SRTP-protected with the endpoint's own session (under a new
SSRC: the relay continues its outgoing stream across it, as for any far end that changes
source), and a sink route records every packet the endpoint receives, with the kernel's
receive time, and its payload on probe sessions. The aiortc peers stay up for everything
else (STUN consent, RTCP, the data channel). Per packet the generator then pays a few
microseconds instead of aiortc's hundred-odd, so the relay, not the generator, is what a
point measures up to several hundred sessions on one core.

Only the relay's points use it: the control (``direct``, the two aiortc peers talking to
each other without a relay) keeps aiortc's own media path, as it always has, because it is
what the relay is compared with.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from bench.run import BROWSER_PAYLOADS, UPSTREAM_PAYLOADS, Arrivals, BurstSender, Pair, ms, pct
from relay.media import aiortc_private, fastloop, udp
from relay.media.fastpath import extension_block
from relay.media.sdp import MID_EXTENSION, rtp_leg

# How often the sources' ticker sends what is due (kernel receive times make the sinks'
# read timing irrelevant to the latencies measured).
TICK_S = 0.001
# A source's packets are due every 20 ms (the compiled Source's default period).
FRAME_S = 0.02
RECORD = struct.Struct("=dIIHH")

_enabled = False


class HandOverSender(BurstSender):
    """aiortc's paced sender of ``bench.run``, until the compiled source takes over."""

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__(payloads)
        self.handed_over = asyncio.Event()

    async def recv(self) -> av.Packet[Any]:
        if self.handed_over.is_set():
            await self.handed_over_forever()
        return await super().recv()

    async def handed_over_forever(self) -> None:
        # aiortc's sender task waits here until the peer closes (and cancels it).
        await asyncio.get_running_loop().create_future()
        raise MediaStreamError


def new_pair(index: int, probe: bool) -> Pair:
    return Pair(
        index,
        probe=probe,
        browser_tx=HandOverSender(BROWSER_PAYLOADS),
        upstream_tx=HandOverSender(UPSTREAM_PAYLOADS),
    )


# ---------------------------------------------------------------------- sockets


class _MediaSocketLoop:
    """The running loop as aioice sees it while the generator's peers gather: host sockets
    become relay media sockets (read through the compiled loop), with kernel receive times."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if kwargs or remote_addr is not None or local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
            )
        family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((local_addr[0], 0))
            fastloop.enable_receive_times(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            return udp.open_media_endpoint(self._loop, protocol_factory, sock)
        except BaseException:
            sock.close()
            raise


def _loop_for_aioice() -> asyncio.AbstractEventLoop:
    loop = asyncio.get_running_loop()
    if not _enabled:
        return loop
    return _MediaSocketLoop(loop)  # type: ignore[return-value]


def enable(enabled: bool) -> None:
    """Peers gathering from now on use media sockets (True: the relay's points) or the
    loop's own transports (False: the direct control). Needs the compiled loop."""
    global _enabled
    if enabled and not fastloop.built():
        raise RuntimeError(f"--generator compiled: {fastloop.describe()['reason']}")
    aiortc_private.route_aioice_running_loop(_loop_for_aioice)
    if enabled:
        loop = asyncio.get_running_loop()
        sockets = udp.media_sockets(loop)
        if sockets.compiled is None or not getattr(sockets, "bench_timestamps", False):
            # This process's set: read through a compiled loop that keeps the kernel's
            # receive time of every datagram, batched every millisecond.
            if len(sockets):
                raise RuntimeError("media sockets already open without receive times")
            sockets.compiled = fastloop.endpoint_loop()
            sockets.bench_timestamps = True  # type: ignore[attr-defined]
            # Polls on the event loop's timers: fewer and larger, so the generator spends
            # less of its core (it saturated at 500 interviews polling at the relay's pace).
            sockets.steady_polls = False
        udp.configure(TICK_S)
    _enabled = enabled


# ---------------------------------------------------------------------- endpoints


@dataclass
class Endpoint:
    """One peer's compiled media: what it sends and what it receives."""

    source: fastloop.Source
    sink: fastloop.Route
    arrivals: Arrivals
    sender: BurstSender
    # The wall clock when the source's schedule began (packet n is due 20 n ms later).
    start_wall: float


def _selected_socket(pc: RTCPeerConnection) -> tuple[Any, tuple[str, int], Any]:
    transceiver = next(t for t in pc.getTransceivers() if t.kind == "audio")
    dtls = transceiver.receiver.transport
    pair = aiortc_private.nominated_pairs(dtls)[1]
    transport, remote = aiortc_private.pair_endpoint(pair)
    if not isinstance(transport, udp.MediaDatagramTransport):
        raise RuntimeError("the peer did not gather media sockets (compiled_endpoints.enable)")
    return transport, remote, dtls


class CompiledMedia:
    """Every session's endpoints of one point, on this process's compiled loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        compiled = udp.media_sockets(self._loop).compiled
        if compiled is None:
            raise RuntimeError("enable(True) first")
        self._compiled: fastloop.Loop = compiled
        # The sources on a loop of their own, sent by its ticker thread: on this process's
        # event loop, busy with two aiortc peers per session and the sinks, they left in
        # bursts at 300 sessions and more (docs/benchmarks.md, "How late the generator
        # sends"). The sinks stay on the media sockets' loop.
        self._sources = fastloop.endpoint_loop()
        self.endpoints: dict[tuple[int, str], Endpoint] = {}
        self._window_from = 0.0

    def take_over(self, pair: Pair) -> None:
        """Both endpoints of ``pair`` leave aiortc's media path for the compiled loop."""
        assert pair.browser is not None and pair.upstream is not None
        start, start_wall = time.monotonic(), time.time()
        for side, pc, payloads, sender, arrivals in (
            ("browser", pair.browser, BROWSER_PAYLOADS, pair.browser_tx, pair.at_browser),
            ("upstream", pair.upstream, UPSTREAM_PAYLOADS, pair.upstream_tx, pair.at_upstream),
        ):
            assert isinstance(sender, HandOverSender)
            sender.handed_over.set()
            self.endpoints[(pair.index, side)] = self._attach(
                pc, payloads, sender, arrivals, pair.probe, start, start_wall
            )
        if not self._sources.ticker_running:
            # Raised: the process's event loop shares the core with it, and at a few hundred
            # sessions it wants all of it (docs/benchmarks.md, "How late the generator sends").
            self._sources.start_ticker(TICK_S, raised=True)

    def _attach(
        self,
        pc: RTCPeerConnection,
        payloads: list[bytes],
        sender: BurstSender,
        arrivals: Arrivals,
        probe: bool,
        start: float,
        start_wall: float,
    ) -> Endpoint:
        transport, remote, dtls = _selected_socket(pc)
        rx, tx = aiortc_private.srtp_sessions(dtls)
        # The payload type and mid this peer sends with: the answer's (both ends use it).
        answer = (
            pc.remoteDescription if pc.localDescription.type == "offer" else pc.localDescription
        )
        leg = rtp_leg(answer.sdp)
        assert leg.payload_type is not None
        mid_id = leg.extensions.get(MID_EXTENSION)
        ext = extension_block([(mid_id, (leg.mid or "0").encode())] if mid_id else [])
        source = fastloop.new_source(
            fd=transport.fileno,
            out_addr=remote,
            tx_session=tx,
            ssrc=random.getrandbits(32),
            payload_type=leg.payload_type,
            extensions=ext,
            payloads=tuple(payloads),
            start=start,
            seq0=random.getrandbits(16),
            ts0=random.getrandbits(32),
        )
        sink = fastloop.new_sink(fd=transport.fileno, rx_session=rx, keep_payloads=probe)
        self._compiled.add_route(sink)
        self._sources.add_source(source)
        return Endpoint(source, sink, arrivals, sender, start_wall)

    def hops(self, pairs: list[Pair]) -> list[tuple[int, int]]:
        """(SSRC into the relay, SSRC out of it) for both directions of each pair, for the
        wire probe (bench/wire.py): the sources' SSRCs and what the sinks receive."""
        hops = []
        for pair in pairs:
            browser = self.endpoints[(pair.index, "browser")]
            upstream = self.endpoints[(pair.index, "upstream")]
            if not browser.sink.packets_in or not upstream.sink.packets_in:
                raise RuntimeError(f"session {pair.index} has not received audio both ways")
            hops += [
                (browser.source.ssrc, upstream.sink.ssrc),
                (upstream.source.ssrc, browser.sink.ssrc),
            ]
        return hops

    def reset(self) -> None:
        """The window starts: forget what arrived so far."""
        self._window_from = time.time()
        for endpoint in self.endpoints.values():
            endpoint.sink.take_records()
            endpoint.arrivals.reset()

    def collect(self) -> None:
        """The window ended: what each endpoint received and sent, as ``bench.run``'s
        analysis reads it (``Arrivals`` and each sender's send times). The sources stop
        (their send times are read with the ticker stopped)."""
        self._sources.stop_ticker()
        for endpoint in self.endpoints.values():
            records, payloads = endpoint.sink.take_records()
            arrivals = endpoint.arrivals
            at = 0
            for arrival, ts, ssrc, seq, size in RECORD.iter_unpack(records):
                arrivals.t.append(arrival)
                arrivals.seq.append(seq)
                arrivals.ts.append(ts)
                arrivals.ssrc = ssrc
                if arrivals.keep_payloads:
                    arrivals.payloads.append(payloads[at : at + size])
                    at += size
            source = endpoint.source
            times = struct.unpack(f"={source.next}d", source.sent_times())
            endpoint.sender.sent = {n: t for n, t in enumerate(times) if not math.isnan(t)}

    def lateness_summary(self) -> dict[str, float | None]:
        """How late the window's packets left after their due time (ms, from the send
        times ``collect`` read): p50, p99, max. Each source sends what is due when the
        ticker runs; a late ticker sends every source's packets since in one burst, which
        the relay then reads as one."""
        late = [
            t - (endpoint.start_wall + n * FRAME_S)
            for endpoint in self.endpoints.values()
            for n, t in endpoint.sender.sent.items()
            if t >= self._window_from
        ]
        return {
            "generator_send_late_p50_ms": ms(pct(late, 50)),
            "generator_send_late_p99_ms": ms(pct(late, 99)),
            "generator_send_late_max_ms": ms(max(late, default=None)),
        }

    def counts(self) -> dict[str, int]:
        sent = sum(e.source.sent_packets for e in self.endpoints.values())
        refused = sum(e.source.send_errors for e in self.endpoints.values())
        invalid = sum(e.sink.dropped_invalid for e in self.endpoints.values())
        return {"sent": sent, "send_refused": refused, "received_invalid": invalid}

    def release(self, pair: Pair) -> None:
        """``pair``'s endpoints leave the compiled loop (before its peers close)."""
        for side in ("browser", "upstream"):
            endpoint = self.endpoints.pop((pair.index, side), None)
            if endpoint is not None:
                self._sources.remove_source(endpoint.source)
                self._compiled.remove_route(endpoint.sink)

    def stop_sending(self) -> None:
        """Every endpoint goes quiet (the peers and their sinks stay)."""
        for endpoint in self.endpoints.values():
            self._sources.remove_source(endpoint.source)

    async def close(self) -> None:
        """Stop every source (closing the peers' sockets would too)."""
        self._sources.close()  # its ticker first
        for endpoint in self.endpoints.values():
            self._compiled.remove_route(endpoint.sink)
        self.endpoints.clear()
