"""ICE configuration for every aiortc peer the process creates (relay legs and simulator).

Two aiortc/aioice defaults are wrong for a server and for loopback tests:

* ``RTCConfiguration(iceServers=None)`` makes aiortc fall back to Google's public STUN
  server (``RTCIceGatherer.getDefaultIceServers``). We always pass an explicit list,
  empty when nothing is configured.
* ``aioice.ice.get_host_addresses`` gathers every interface address but deliberately
  skips 127.0.0.1 and ::1. aioice has no per-connection option for this, so the
  module-level function is replaced (aioice looks it up at gather time). The
  replacement returns the configured ``ice.host_addresses`` when set, else defers
  to the original. aioice 0.13 has no UDP port-range option (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from relay.config import IceConfig

_original_get_host_addresses: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
_host_addresses: tuple[str, ...] = ()


def _configured_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _host_addresses:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install_host_addresses(addresses: Sequence[str]) -> None:
    """Gather only ``addresses`` as host candidates (empty: every machine address).

    Process-wide by necessity (see module docstring); idempotent.
    """
    global _host_addresses
    _host_addresses = tuple(addresses)
    aioice.ice.get_host_addresses = _configured_host_addresses


def rtc_configuration(ice: IceConfig) -> RTCConfiguration:
    """An explicit RTCConfiguration: the configured servers, never an implicit STUN server."""
    install_host_addresses(ice.host_addresses)
    servers = [
        RTCIceServer(
            urls=list(s.urls),
            username=s.username or None,
            credential=s.credential or None,
        )
        for s in ice.servers
    ]
    return RTCConfiguration(iceServers=servers)


def browser_ice_servers(ice: IceConfig) -> list[dict[str, object]]:
    """The ICE servers as the browser's RTCPeerConnection expects them (may carry TURN creds)."""
    out: list[dict[str, object]] = []
    for s in ice.servers:
        entry: dict[str, object] = {"urls": list(s.urls)}
        if s.username:
            entry["username"] = s.username
        if s.credential:
            entry["credential"] = s.credential
        out.append(entry)
    return out
