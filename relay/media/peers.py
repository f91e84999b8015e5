"""Creating and closing the relay's aiortc peers."""

from __future__ import annotations

import asyncio
import logging
import weakref

from aiortc import RTCPeerConnection, RTCSessionDescription

from relay.config import IceConfig
from relay.media import aiortc_private
from relay.media.capabilities import MediaCapabilities, probe
from relay.media.ice import Leg, rtc_configuration
from relay.media.port_range import PortRange, binding_in, port_range
from relay.media.rtcp_reports import adopt as adopt_rtcp_reports
from relay.tasks import spawn

log = logging.getLogger("relay.media")

DECODER_JOIN_TIMEOUT_S = 5.0
# aioice closes a TURN client only after deleting its allocation, retrying for ~40 s when
# the TURN server does not answer; a session's end must not wait for that.
PEER_CLOSE_WAIT_S = 5.0

# Every peer this process created and has not garbage-collected (leak checks, stats).
_peers: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
# How each relay peer binds its sockets: in its UDP port range (None: any port) and on the
# relay's own batched transports; absent when aioice cannot be routed (its own binding).
_port_ranges: weakref.WeakKeyDictionary[RTCPeerConnection, PortRange | None] = (
    weakref.WeakKeyDictionary()
)
# Relay peers whose RTCP the event loop's shared reports send (relay.media.rtcp_reports),
# adopted when their local description is set; absent when aiortc's names are missing.
_shared_rtcp: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()


class IceGatherTimeout(Exception):
    """Gathering local ICE candidates took longer than ``session.ice_gather_timeout_s``."""


def new_peer(
    ice: IceConfig,
    *,
    leg: Leg = "browser",
    session_id: str = "relay",
    capabilities: MediaCapabilities | None = None,
) -> RTCPeerConnection:
    """A peer with the configured ICE servers (never aiortc's implicit public STUN) whose
    sockets bind inside ``ice.udp_port_min..udp_port_max`` (``set_local_description``).

    ``capabilities`` (checked now when not given) says which of the aioice adaptations
    this aioice allows; without one, the peer keeps aioice's own behaviour."""
    caps = capabilities if capabilities is not None else probe()
    if caps.available("prompt_ice_completion"):
        # ICE ends as soon as its checks are done, not at the next 20 ms pacing tick.
        aiortc_private.install_prompt_ice_completion()
    if caps.available("lazy_decoder_threads"):
        # No idle decoder thread per receiver on the fast path (two per interview).
        aiortc_private.install_lazy_decoder_threads()
    if caps.available("srtp_replay_window"):
        # libsrtp shifts its replay bitmap per packet: 128 packets, not aiortc's 1,024.
        aiortc_private.install_srtp_replay_window()
    if caps.available("srtp_size_guard"):
        # One oversized datagram at a leg's port would otherwise end that leg.
        aiortc_private.refuse_oversized_srtp()
    pc = RTCPeerConnection(rtc_configuration(ice, leg=leg, session_id=session_id))
    _peers.add(pc)
    if caps.available("port_range") and caps.available("receive_batching"):
        _port_ranges[pc] = port_range(ice.udp_port_min, ice.udp_port_max)
    if caps.available("rtcp_reports"):
        _shared_rtcp.add(pc)
    return pc


def open_peer_count() -> int:
    """Peers created by ``new_peer`` that are not closed yet."""
    return sum(1 for pc in list(_peers) if pc.connectionState != "closed")


async def set_local_description(
    pc: RTCPeerConnection, description: RTCSessionDescription, timeout_s: float
) -> RTCSessionDescription:
    """``setLocalDescription`` (which gathers every candidate) within ``timeout_s``.

    Raises ``NoMediaPorts`` when the peer's port range is full.
    """
    if pc in _shared_rtcp:
        # Every transceiver exists now, and aiortc starts none before this call gathered.
        adopt_rtcp_reports(pc)
    try:
        async with asyncio.timeout(timeout_s):
            # Gathering (every socket the peer will use) happens inside this call.
            if pc in _port_ranges:
                with binding_in(_port_ranges[pc]):
                    await pc.setLocalDescription(description)
            else:  # aioice binds its own sockets (relay.media.capabilities)
                await pc.setLocalDescription(description)
    except TimeoutError:
        raise IceGatherTimeout(f"ICE gathering took longer than {timeout_s:g}s") from None
    local: RTCSessionDescription = pc.localDescription
    return local


async def close_peer(pc: RTCPeerConnection) -> None:
    """Close ``pc`` and make sure its receivers' decoder threads have exited.

    aiortc would join each decoder thread on the event loop; we stop them first and
    join in a worker thread (see ``aiortc_private.detach_decoder_thread``). Waits at most
    ``PEER_CLOSE_WAIT_S`` for aiortc's close itself (see there).
    """
    threads = []
    for transceiver in pc.getTransceivers():
        thread = aiortc_private.detach_decoder_thread(transceiver.receiver)
        if thread is not None:
            threads.append(thread)
    # Owned (relay.tasks.spawn): it may outlive this call, and its failure is logged
    # whenever it ends.
    closing = spawn(pc.close(), name="peer-close", log=log)
    try:
        done, _ = await asyncio.wait([closing], timeout=PEER_CLOSE_WAIT_S)
        if done:
            closing.result()
        else:
            # It goes on in the background (the sockets close when aioice gives up).
            log.warning(
                "peer close still running after %.0fs (TURN unreachable?)", PEER_CLOSE_WAIT_S
            )
    finally:
        for thread in threads:
            await asyncio.to_thread(thread.join, DECODER_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("decoder thread %s did not exit", thread.name)
