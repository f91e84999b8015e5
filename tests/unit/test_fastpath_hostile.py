"""Hostile datagrams at the relay's media socket, on both forwarding paths.

A far end (or anyone who can reach the relay's UDP port) sends truncated, oversized,
forged, replayed and malformed datagrams to the browser leg's socket while a session is
live. Whatever the path (the compiled loop, relay.media._fastloop, or the Python fast
path), each one is refused and counted the same way, nothing else reaches the upstream,
and forwarding goes on. ``tests/fastloop_asan.sh`` runs this module (and the other media
tests) with the compiled loop built under AddressSanitizer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pylibsrtp import _binding as srtp_binding

from relay.media import aiortc_private, fastloop, udp
from relay.media.sdp import AUDIO_LEVEL_EXTENSION, MID_EXTENSION, RtpLeg, rtp_leg
from tests.integration.media_helpers import encode_opus, speech_like, wait_until
from tests.unit.test_media_fastpath import Session, _audio, _contiguous, open_session

__all__ = ["open_session"]  # the fixture, shared with test_media_fastpath

# Each path, and the compiled loop on the event loop's thread too (media.forwarding_thread).
pytestmark = [
    pytest.mark.usefixtures("media_path"),
    pytest.mark.media_paths("compiled", "compiled-inline", "python"),
]

PAYLOADS = encode_opus(speech_like(0.4, f0=260.0))
SSRC = 0x5151


def protect(session: Any, packet: bytes) -> bytes:
    """SRTP-protect with the far end's own session, whatever the size (pylibsrtp and the
    relay both refuse more than a datagram's worth; an attacker's libsrtp would not)."""
    ffi, lib = srtp_binding.ffi, srtp_binding.lib
    buffer = ffi.new("char[]", len(packet) + 256)
    ffi.memmove(buffer, packet, len(packet))
    length = ffi.new("int *", len(packet))
    assert lib.srtp_protect(session._srtp[0], buffer, length) == 0
    return bytes(ffi.buffer(buffer, length[0]))


def rtp(
    leg: RtpLeg,
    seq: int,
    payload: bytes,
    *,
    ssrc: int = SSRC,
    pt: int | None = None,
    pad: int = 0,
    pad_claim: int | None = None,
) -> bytes:
    """An RTP packet as a browser sends it (mid and audio level), optionally padded;
    ``pad_claim`` overrides the padding count in the last byte (a lie)."""
    mid = (leg.mid or "0").encode()
    elements = bytes(((leg.extensions[MID_EXTENSION] << 4) | (len(mid) - 1),)) + mid
    elements += bytes(((leg.extensions[AUDIO_LEVEL_EXTENSION] << 4), 0x80 | 30))
    elements += b"\x00" * (-len(elements) % 4)
    ext = struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
    assert leg.payload_type is not None
    flags = 0x90 | (0x20 if pad else 0)
    header = struct.pack(
        "!BBHII", flags, pt if pt is not None else leg.payload_type, seq, seq * 960, ssrc
    )
    padding = b""
    if pad:
        padding = b"\x00" * (pad - 1) + bytes((pad if pad_claim is None else pad_claim,))
    return header + ext + payload + padding


@pytest.fixture
def attacker() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setblocking(False)  # sent from the event loop
    try:
        yield sock
    finally:
        sock.close()


def relay_browser_socket(s: Session) -> tuple[str, int]:
    """Where the relay receives the browser leg (its selected pair's local socket)."""
    dtls = _audio(s.bridge.browser_pc).receiver.transport
    transport = aiortc_private.pair_endpoint(aiortc_private.nominated_pairs(dtls)[1])[0]
    address: tuple[str, int] = transport.get_extra_info("sockname")
    return address


def upward(s: Session) -> dict[str, Any]:
    """The browser-to-upstream counters as the relay reports them (up to date)."""
    direction: dict[str, Any] = s.bridge.stats()["browser_to_upstream"]
    return direction


async def quiet_browser(s: Session) -> None:
    up = s.bridge.browser_to_upstream
    assert s.browser.mic is not None
    await wait_until(lambda: up.forwarded > 10, 10, "microphone audio forwarded")
    s.browser.mic.pause()
    await wait_until(
        lambda: up.last_packet_at is not None and time.monotonic() - up.last_packet_at > 0.1,
        5,
        "microphone quiet",
    )


async def test_hostile_datagrams_are_refused_counted_and_forwarding_goes_on(
    open_session: Any, attacker: socket.socket, media_path: str
) -> None:
    s: Session = await open_session()
    up = s.bridge.browser_to_upstream
    await quiet_browser(s)
    target = relay_browser_socket(s)
    leg = rtp_leg(s.browser.pc.localDescription.sdp)
    browser_tx = aiortc_private.srtp_sessions(_audio(s.browser.pc).sender.transport)[1]
    before = upward(s)

    async def send(datagram: bytes) -> None:
        attacker.sendto(datagram, target)
        await asyncio.sleep(0.005)  # pacing, so each lands in its own read

    seq = 2000
    good: list[bytes] = []

    async def send_good() -> None:
        nonlocal seq
        payload = PAYLOADS[len(good)]
        good.append(payload)
        await send(protect(browser_tx, rtp(leg, seq, payload)))
        seq += 1

    await send_good()  # a new SSRC: the relay continues its own stream with it
    refused = 0
    # Truncated: a valid packet cut anywhere after the RTP header fails authentication.
    whole = protect(browser_tx, rtp(leg, seq, PAYLOADS[-1]))
    seq += 1
    for cut in (12, 13, 20, len(whole) // 2, len(whole) - 1):
        await send(whole[:cut])
        refused += 1
    # Forged: the right header, a made-up body and tag (or another SSRC's).
    await send(whole[:12] + os.urandom(len(whole) - 12))
    await send(
        struct.pack("!BBHII", 0x80, leg.payload_type or 111, seq, 0, 0xDEAD) + os.urandom(60)
    )
    refused += 2
    await send_good()
    # Oversized: authentic, but more than the relay forwards (above a datagram's worth
    # before or after its rewrite), and a datagram of nearly 64 KiB.
    await send(protect(browser_tx, rtp(leg, seq, os.urandom(1340))))
    await send(protect(browser_tx, rtp(leg, seq + 1, os.urandom(3000))))
    seq += 2
    await send(bytes((0x80, leg.payload_type or 111)) + os.urandom(65000))
    refused += 3
    # Replayed: an authentic packet three times; SRTP's replay window takes the first only.
    replayed = protect(browser_tx, rtp(leg, seq, PAYLOADS[len(good)]))
    good.append(PAYLOADS[len(good)])
    seq += 1
    for _ in range(3):
        await send(replayed)
    duplicates = 2
    # Late: authentic and never sent, but 200 behind the newest when it arrives, beyond
    # SRTP's 128-packet replay window (protected in its turn, held while the stream
    # jumped ahead).
    late = protect(browser_tx, rtp(leg, seq, PAYLOADS[-2]))
    seq += 200
    await send_good()
    await send(late)
    # Forged with the stream's SSRC and an index that far behind: libsrtp's replay check
    # comes before authentication, so it is refused as late too.
    forged = struct.pack("!BBHII", 0x80, leg.payload_type or 111, seq - 300, 0, SSRC)
    await send(forged + os.urandom(60))
    late_count = 2
    # Malformed inside authentic SRTP: padding longer than the packet.
    await send(protect(browser_tx, rtp(leg, seq, b"\x01\x02", pad=4, pad_claim=200)))
    seq += 1
    refused += 1
    # Not refused: padding only (counted, nothing to forward) and another codec.
    await send(protect(browser_tx, rtp(leg, seq, b"", pad=4)))
    await send(protect(browser_tx, rtp(leg, seq + 1, PAYLOADS[0], pt=0)))
    seq += 2
    # Not RTP at all (RTCP- and STUN-looking garbage): aiortc's and aioice's own parsers
    # refuse those, as before the fast path.
    await send(bytes((0x80, 200)) + os.urandom(40))
    await send(b"\x00\x01\x00\x00" + os.urandom(40))
    await send_good()
    await send_good()

    await wait_until(lambda: _contiguous(s.call.payloads, good), 10, "every good packet upstream")
    crafted = [p for p in s.call.payloads if p in set(good) or len(p) > 1000]
    assert crafted == good  # nothing else of ours reached the upstream, in order
    after = upward(s)
    assert after["dropped"]["invalid"] - before["dropped"]["invalid"] == refused
    # Refused by the replay check: counted apart from what failed authentication.
    assert after["dropped"]["duplicate"] - before["dropped"]["duplicate"] == duplicates
    assert after["dropped"]["late"] - before["dropped"]["late"] == late_count
    assert after["dropped"]["other_codec"] - before["dropped"]["other_codec"] == 1
    # Counted on arrival: the good ones, padding-only, the other codec, and the one
    # refused only when rewritten (too large to protect again).
    assert after["packets_in"] - before["packets_in"] == len(good) + 3
    assert after["forwarded"] - before["forwarded"] == len(good)
    assert after["compiled"] is (media_path != "python")

    # The browser's own audio goes on through the same relay socket.
    forwarded = up.forwarded
    assert s.browser.mic is not None
    s.browser.mic.resume()
    await wait_until(lambda: up.forwarded > forwarded + 10, 10, "the browser's audio again")


async def test_a_datagram_flood_at_one_socket_leaves_the_other_direction_alone(
    open_session: Any, attacker: socket.socket
) -> None:
    """Thousands of forged datagrams at the browser leg: each is read and refused, and the
    upstream's audio still reaches the browser."""
    s: Session = await open_session()
    down = s.bridge.upstream_to_browser
    await wait_until(lambda: down.forwarded > 10, 10, "reply direction flowing")
    target = relay_browser_socket(s)
    invalid0, down0 = upward(s)["dropped"]["invalid"], down.forwarded
    forged = [bytes((0x80, 111)) + os.urandom(100) for _ in range(50)]
    burst = 200  # at most this many waiting: within the socket's receive buffer
    for sent in range(burst, 2001, burst):
        for i in range(burst):
            attacker.sendto(forged[i % len(forged)], target)
        await wait_until(
            lambda: upward(s)["dropped"]["invalid"] - invalid0 >= sent,  # noqa: B023
            10,
            f"{sent} forged datagrams refused",
        )
    await wait_until(lambda: down.forwarded > down0 + 10, 10, "the reply direction goes on")
    assert upward(s)["dropped"]["invalid"] - invalid0 == 2000


def test_the_active_path_is_described() -> None:
    description = fastloop.describe()
    assert description["path"] == ("compiled" if fastloop.active() else "python")
    assert description["srtp"].startswith("libsrtp")
    outcome, detail, _ = fastloop.doctor_check()
    # A warning only when the module was not built (an install without a C compiler).
    assert outcome == ("OK" if fastloop.built() else "WARN")
    assert detail.startswith("compiled loop" if fastloop.active() else "Python fast path")
    loop = fastloop.new_loop()
    assert (loop is not None) is fastloop.active()


def test_the_compiled_types_refuse_bad_arguments(media_path: str) -> None:
    loop = fastloop.new_loop()
    if media_path == "python":
        assert loop is None  # nothing compiled runs on this path
        return
    assert loop is not None
    from relay.media import _fastloop

    session = object()  # stands for the pylibsrtp sessions the route keeps alive
    context = aiortc_private.srtp_function_addresses()[0]

    def route(fd: int, family: int, host: str, port: int, rx_context: int) -> Any:
        return _fastloop.Route(
            fd, 5, family, host, port, session, rx_context, session, context, None
        )

    with pytest.raises(ValueError):
        route(-1, socket.AF_INET, "127.0.0.1", 9, context)  # no such descriptor
    with pytest.raises(ValueError):
        route(4, socket.AF_INET, "not an address", 9, context)
    with pytest.raises(ValueError):
        route(4, socket.AF_INET, "127.0.0.1", 70000, context)
    with pytest.raises(ValueError):
        route(4, socket.AF_INET, "127.0.0.1", 9, 0)  # a null SRTP context
    made = route(4, socket.AF_INET6, "::1", 9, context)
    with pytest.raises(ValueError):
        made.set_rewrite(1, 111, [111], 1, b"\x00" * 68, b"", 0)  # a block too long
    with pytest.raises(ValueError):
        made.set_rewrite(1, 111, [300], 1, b"", b"", 0)  # a payload type out of range
    with pytest.raises(ValueError):
        made.set_rewrite(1, 111, [111], 1, b"", b"\x00" * 8, 8)  # the level outside its block
    with pytest.raises(TypeError):
        loop.add_route("a route")  # type: ignore[arg-type]
    with pytest.raises(OSError):
        loop.pump(-1, 1)  # not an epoll descriptor
    assert loop.remove_route(made) is False


def refused_anywhere(s: Session) -> int:
    """Every count an oversized datagram at the browser leg can land in, whichever path
    reads it: kept from aiortc (every leg), the fast path's invalid packets (RTP it
    handles itself), the compiled loop's refused SRTCP (its routes' sockets)."""
    snapshot = udp.media_sockets(asyncio.get_running_loop()).snapshot()
    refused: int = snapshot["refused_oversized"] + snapshot["forwarding"]["rtcp"]["dropped"]
    return refused + int(upward(s)["dropped"]["invalid"])


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiortc-path"])
async def test_an_oversized_srtp_or_srtcp_datagram_does_not_end_the_leg(
    open_session: Any, attacker: socket.socket, fast_path: bool
) -> None:
    """pylibsrtp refuses a datagram over its 1500-byte buffer with an error aiortc's DTLS
    receive task does not catch: one such datagram, from anyone who can reach the leg's
    port, would end that task and close the leg. Whatever reads it (the compiled loop, the
    fast path in Python, aiortc's own path), it is refused and the leg goes on."""
    s: Session = await open_session(fast_path=fast_path)
    up, down = s.bridge.browser_to_upstream, s.bridge.upstream_to_browser
    await wait_until(lambda: up.forwarded > 10 and down.forwarded > 10, 10, "audio both ways")
    dtls = _audio(s.bridge.browser_pc).receiver.transport
    target = relay_browser_socket(s)
    refused = refused_anywhere(s)
    for second_byte in (201, 200, 111):  # a receiver report, a sender report, RTP
        attacker.sendto(bytes((0x80, second_byte)) + os.urandom(1600), target)
    await wait_until(lambda: refused_anywhere(s) == refused + 3, 10, "all three refused")
    up0, down0 = up.forwarded, down.forwarded
    await wait_until(
        lambda: up.forwarded > up0 + 10 and down.forwarded > down0 + 10,
        10,
        "audio both ways after them",
    )
    assert dtls.state == "connected"
    assert s.bridge.browser_pc.connectionState == "connected"
