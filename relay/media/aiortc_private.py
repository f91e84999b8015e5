"""Every private aiortc name the relay relies on, in one place.

aiortc has no public way to receive *encoded* audio, to keep RTCP receiver reports
when a receiver is bypassed, or to stop a receiver's decoder thread without blocking
the event loop. The functions below do exactly that and nothing more. They depend on
aiortc internals that have changed between minor releases, so aiortc is pinned
exactly (pyproject.toml) and ``tests/unit/test_aiortc_private.py`` fails loudly when an
upgrade renames or removes any of them. Read docs/media.md before changing anything.

Private names used (aiortc 1.16.0):

* ``RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms)``: the per-packet entry
  point, called by ``RTCDtlsTransport._handle_rtp_data`` through an ordinary attribute
  lookup, so an instance attribute shadows the method.
* ``RTCRtpReceiver._RTCRtpReceiver__remote_streams``: ssrc → ``StreamStatistics``; the
  receiver's RTCP task builds its receiver reports from it and ``getStats()`` reads it.
* ``aiortc.rtcrtpreceiver.StreamStatistics``: the per-SSRC loss/jitter bookkeeping.
* ``RTCRtpReceiver._RTCRtpReceiver__decoder_thread`` / ``__decoder_queue``: the decoder
  thread ``receive()`` starts for every receiver, and its (unbounded) input queue.
* ``RTCRtpSender._RTCRtpSender__rtp_history``: the last 128 sent RTP packets per sender,
  kept for NACK retransmission (which aiortc only negotiates for video).
* ``aiortc.rtp.compute_audio_level_dbov``: a module-level function the sender calls per
  decoded frame (public module, but replacing it is a monkeypatch).

aioice (pinned 0.13.0), for the UDP port range (relay/media/port_range.py):

* ``aioice.ice.asyncio`` and ``aioice.turn.asyncio``: the ``asyncio`` module as those two
  modules see it. ``Connection.get_component_candidates`` (host candidates) and
  ``turn.create_turn_endpoint`` (the TURN client's UDP socket) open every UDP socket with
  ``asyncio.get_running_loop().create_datagram_endpoint(...)``, looked up at call time, with
  port 0. aioice has no port-range option, so each module gets its own copy of ``asyncio``
  whose ``get_running_loop`` can hand back a loop wrapper that binds inside the range.

aioice, for the host addresses (relay/media/ice.py, ``ice.host_addresses``):

* ``aioice.ice.get_host_addresses(use_ipv4, use_ipv6)``: the module-level function
  ``Connection.gather_candidates`` looks up at gather time to list the machine's addresses
  (it skips 127.0.0.1 and ::1, and aioice has no per-connection option). Replacing the
  module attribute changes what every connection of the process gathers.
"""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import aioice.ice
import aioice.turn
import aiortc
import aiortc.rtp
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from relay.media.audio_level import compute_audio_level_dbov

# The exact version these internals were read from. The guard test checks it.
PINNED_AIORTC_VERSION = "1.16.0"
PINNED_AIOICE_VERSION = "0.13.0"

RtpHook = Callable[[RtpPacket, int], Awaitable[None]]
OriginalHandler = Callable[..., Awaitable[None]]

_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
_RTP_HISTORY = "_RTCRtpSender__rtp_history"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


def aiortc_version() -> str:
    return str(aiortc.__version__)


def original_rtp_handler(receiver: RTCRtpReceiver) -> OriginalHandler:
    """The receiver's own ``_handle_rtp_packet`` (bound), to delegate to from a hook."""
    handler: OriginalHandler = RTCRtpReceiver._handle_rtp_packet.__get__(receiver)
    return handler


def install_rtp_hook(receiver: RTCRtpReceiver, hook: RtpHook) -> None:
    """Route every RTP packet of ``receiver`` to ``hook(packet, arrival_time_ms)``.

    The packet arrives parsed and SRTP-decrypted, before aiortc's jitter buffer and
    decoder. This is how encoded Opus is forwarded without decoding (and with no
    jitter-buffer delay). The hook decides whether to call ``original_rtp_handler``.
    """
    # setattr: an instance attribute deliberately shadowing the method.
    setattr(receiver, "_handle_rtp_packet", hook)  # noqa: B010


def remove_rtp_hook(receiver: RTCRtpReceiver) -> None:
    """Drop the instance override (the class method applies again)."""
    receiver.__dict__.pop("_handle_rtp_packet", None)


def receiver_statistics(receiver: RTCRtpReceiver, ssrc: int, clock_rate: int) -> Any:
    """The ``StreamStatistics`` aiortc keeps for ``ssrc`` (created if missing).

    A hook that bypasses ``_handle_rtp_packet`` calls ``.add(packet)`` on it per packet
    (about a microsecond) so the receiver keeps sending RTCP receiver reports: the far
    end keeps its round-trip-time and loss statistics, and ``receiver.getStats()``
    keeps reporting inbound packets, loss and jitter.
    """
    streams: dict[int, Any] = getattr(receiver, _REMOTE_STREAMS)
    stats = streams.get(ssrc)
    if stats is None:
        stats = streams[ssrc] = StreamStatistics(clock_rate)
    return stats


class _NoHistory(dict[int, Any]):
    """Stands in for a sender's retransmission history: remembers nothing."""

    def __setitem__(self, key: int, value: Any) -> None:
        return None


def disable_retransmission_history(sender: RTCRtpSender) -> None:
    """Stop ``sender`` keeping its last 128 RTP packets for retransmission.

    aiortc keeps them for NACKs, which it negotiates for video only: for audio they are
    never used. They are, however, long-lived young objects (3 GC-tracked objects per
    packet, 128 per sender): with 100 sessions about 80,000 of them sit in the youngest
    GC generation, and each collection of it stalled the event loop for ~30 ms (measured:
    p99 latency 12-18 ms at 100 sessions; see docs/benchmarks.md). Without the history a
    sent packet is freed at once. A NACK for audio, should one arrive, is ignored.
    """
    setattr(sender, _RTP_HISTORY, _NoHistory())


def detach_decoder_thread(receiver: RTCRtpReceiver) -> threading.Thread | None:
    """Ask the receiver's decoder thread to exit and return it, for joining off the loop.

    ``receive()`` starts one decoder thread per receiver, even when a hook means it
    never decodes anything. aiortc stops it in ``RTCRtpReceiver.stop()`` with a
    blocking ``join()`` on the event loop. Handing it the same ``None`` sentinel here
    and clearing the attribute makes aiortc skip that join (and stop queueing frames
    for it); the caller joins the returned thread in a worker thread instead.
    """
    thread: threading.Thread | None = getattr(receiver, _DECODER_THREAD, None)
    if thread is None:
        return None
    getattr(receiver, _DECODER_QUEUE).put(None)
    setattr(receiver, _DECODER_THREAD, None)
    return thread


def decoder_backlog(receiver: RTCRtpReceiver) -> int:
    """Encoded frames waiting for the receiver's decoder thread.

    aiortc's decoder input is an unbounded ``queue.Queue``; on the decode path the relay
    checks its depth per packet and drops instead of letting it grow (overload).
    """
    backlog: int = getattr(receiver, _DECODER_QUEUE).qsize()
    return backlog


def decoder_thread(receiver: RTCRtpReceiver) -> threading.Thread | None:
    """The receiver's decoder thread, if it has one (tests and stats)."""
    thread: threading.Thread | None = getattr(receiver, _DECODER_THREAD, None)
    return thread


# aiortc's own version, kept for tests and comparisons.
AIORTC_AUDIO_LEVEL: Callable[[Any], int] = aiortc.rtp.compute_audio_level_dbov


def install_fast_audio_level() -> None:
    """Replace aiortc's per-frame audio-level function with a numpy version.

    On the decode/re-encode path the sender calls ``aiortc.rtp.compute_audio_level_dbov``
    on the event loop for every frame; aiortc's version loops over every sample in
    Python (~60-120 µs per frame, about half the CPU of that path). The sender looks it
    up as a module attribute at call time, so replacing the attribute is enough.
    Process-wide and idempotent.
    """
    aiortc.rtp.compute_audio_level_dbov = compute_audio_level_dbov


def fast_audio_level_installed() -> bool:
    return aiortc.rtp.compute_audio_level_dbov is compute_audio_level_dbov


# The aioice modules that open UDP sockets through ``asyncio.get_running_loop()``.
AIOICE_SOCKET_MODULES: tuple[types.ModuleType, ...] = (aioice.ice, aioice.turn)
_SHIM_PREFIX = "relay_asyncio_for_"


def aioice_version() -> str:
    return str(aioice.__version__)


def route_aioice_running_loop(get_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Make ``asyncio.get_running_loop()`` inside aioice's ice and turn modules call ``get_loop``.

    Each module's global ``asyncio`` is replaced by a copy of the real module whose only
    difference is ``get_running_loop`` (no per-call cost for anything else aioice uses).
    ``get_loop`` must return the running loop, or an object that behaves like it: the
    port range returns a wrapper only while a relay peer gathers candidates. Process-wide
    and idempotent.
    """
    for module in AIOICE_SOCKET_MODULES:
        current: types.ModuleType = getattr(module, "asyncio")  # noqa: B009
        if not current.__name__.startswith(_SHIM_PREFIX):
            shim = types.ModuleType(_SHIM_PREFIX + module.__name__)
            shim.__dict__.update(asyncio.__dict__)
            shim.__name__ = _SHIM_PREFIX + module.__name__  # the copy brought "asyncio"
            current = shim
        setattr(current, "get_running_loop", get_loop)  # noqa: B010
        setattr(module, "asyncio", current)  # noqa: B010


def aioice_running_loop_routed() -> bool:
    return all(
        getattr(m, "asyncio").__name__.startswith(_SHIM_PREFIX)  # noqa: B009
        for m in AIOICE_SOCKET_MODULES
    )


# aioice's own address lister, kept before any replacement (see the module docstring).
_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def machine_host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    """What aioice gathers unless told otherwise: every interface address but 127.0.0.1,
    ::1 and scoped (link-local) IPv6 ones (aiortc's connections ask for both families)."""
    return _original_get_host_addresses(use_ipv4, use_ipv6)


def route_aioice_host_addresses(get_addresses: Callable[[bool, bool], list[str]]) -> None:
    """Make aioice gather the addresses ``get_addresses(use_ipv4, use_ipv6)`` returns
    instead of its own list. Process-wide and idempotent."""
    setattr(aioice.ice, "get_host_addresses", get_addresses)  # noqa: B010


def aioice_host_addresses_routed_to(get_addresses: Callable[[bool, bool], list[str]]) -> bool:
    return aioice.ice.get_host_addresses is get_addresses
