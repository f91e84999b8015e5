"""ICE configuration for every aiortc peer the process creates (relay legs and simulator).

Two aiortc/aioice defaults are wrong for a server and for loopback tests:

* ``RTCConfiguration(iceServers=None)`` makes aiortc fall back to Google's public STUN
  server (``RTCIceGatherer.getDefaultIceServers``). We always pass an explicit list,
  empty when nothing is configured.
* ``aioice.ice.get_host_addresses`` gathers every interface address but deliberately
  skips 127.0.0.1 and ::1. aioice has no per-connection option for this, so the
  module-level function is replaced (``aiortc_private.route_aioice_host_addresses``;
  aioice looks it up at gather time). The replacement returns the configured
  ``ice.host_addresses`` when set, else defers to the original. aioice 0.13 has no UDP
  port-range option: relay/media/port_range.py.

TURN REST (``ice.turn_urls`` + ``ice.turn_secret``, what coturn's ``use-auth-secret``
checks): the credentials are derived per session and expire after ``ice.turn_ttl_s``,
so a leaked one is worth little and the secret itself never leaves the relay.

aiortc hands aioice one STUN and one TURN server only (the first of each it meets, see
``aiortc.rtcicetransport.connection_kwargs``): for the relay's own peers the list is
reduced here deliberately, preferring TURN over UDP, then TCP, then TLS, instead of
depending on the order of the configuration. Browsers get every server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiortc import RTCConfiguration, RTCIceServer

from relay.config import IceConfig
from relay.media import aiortc_private

Leg = Literal["browser", "upstream"]

_host_addresses: tuple[str, ...] = ()


def _configured_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _host_addresses:
        return aiortc_private.machine_host_addresses(use_ipv4, use_ipv6)
    return [a for a in _host_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install_host_addresses(addresses: Sequence[str]) -> None:
    """Gather only ``addresses`` as host candidates (empty: every machine address).

    Process-wide by necessity (see module docstring); idempotent.
    """
    global _host_addresses
    _host_addresses = tuple(addresses)
    aiortc_private.route_aioice_host_addresses(_configured_host_addresses)


@dataclass(frozen=True)
class TurnCredentials:
    username: str
    credential: str = ""

    def __repr__(self) -> str:  # the credential stays out of logs and tracebacks
        return f"TurnCredentials(username={self.username!r})"


def turn_rest_credentials(
    secret: str, session_id: str, ttl_s: int, *, now: float | None = None
) -> TurnCredentials:
    """Username ``"<expiry-unix-time>:<session id>"``, credential
    ``base64(HMAC-SHA1(secret, username))``: the TURN REST scheme coturn checks with
    ``use-auth-secret`` (it refuses the username once the expiry is past)."""
    expiry = int(time.time() if now is None else now) + ttl_s
    username = f"{expiry}:{session_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username=username, credential=base64.b64encode(digest).decode())


def _configured_servers(
    ice: IceConfig, session_id: str, *, turn: bool, now: float | None = None
) -> list[RTCIceServer]:
    servers = [
        RTCIceServer(
            urls=list(s.urls),
            username=s.username or None,
            credential=s.credential or None,
        )
        for s in ice.servers
    ]
    if turn and ice.turn_urls:
        creds = turn_rest_credentials(ice.turn_secret, session_id, ice.turn_ttl_s, now=now)
        servers.append(
            RTCIceServer(
                urls=list(ice.turn_urls), username=creds.username, credential=creds.credential
            )
        )
    return servers


_TRANSPORT = re.compile(r"[?&]transport=(\w+)", re.IGNORECASE)


def _turn_preference(url: str) -> int:
    """Lower is better: TURN over UDP, then TCP, then TLS; 9: unusable by aiortc (which
    takes turn: over UDP or TCP, turns: over TCP only)."""
    match = _TRANSPORT.search(url)
    if url.startswith("turns:"):
        return 2 if match is None or match.group(1).lower() == "tcp" else 9
    transport = match.group(1).lower() if match else "udp"
    return {"udp": 0, "tcp": 1}.get(transport, 9)


def for_aiortc(servers: Sequence[RTCIceServer]) -> list[RTCIceServer]:
    """At most one STUN and one TURN URL (what aiortc uses), chosen on purpose.

    STUN: the first configured. TURN: the best transport by ``_turn_preference``, the first
    configured among equals; URLs aioice cannot use (a transport other than UDP/TCP) drop.
    """
    stun: RTCIceServer | None = None
    best: tuple[int, int, RTCIceServer] | None = None
    order = 0
    for server in servers:
        urls = server.urls if isinstance(server.urls, list) else [server.urls]
        for url in urls:
            order += 1
            if url.startswith("stun:") and stun is None:
                stun = RTCIceServer(urls=[url])
            elif url.startswith(("turn:", "turns:")):
                rank = _turn_preference(url)
                if rank < 9 and (best is None or (rank, order) < best[:2]):
                    one = RTCIceServer(
                        urls=[url], username=server.username, credential=server.credential
                    )
                    best = (rank, order, one)
    chosen = [s for s in (stun,) if s is not None]
    if best is not None:
        chosen.append(best[2])
    return chosen


def leg_servers(ice: IceConfig, leg: Leg, session_id: str = "relay") -> list[RTCIceServer]:
    """The servers a relay leg's peer uses: ``ice.servers`` (on both legs), plus
    ``turn_urls`` on the legs named by ``ice.relay_turn`` (with credentials for
    ``session_id``), reduced to what aiortc uses (``for_aiortc``)."""
    turn = ice.relay_turn == "both" or ice.relay_turn == leg
    return for_aiortc(_configured_servers(ice, session_id, turn=turn))


def rtc_configuration(
    ice: IceConfig, *, leg: Leg = "browser", session_id: str = "relay"
) -> RTCConfiguration:
    """An explicit RTCConfiguration: the configured servers, never an implicit STUN server."""
    install_host_addresses(ice.host_addresses)
    return RTCConfiguration(iceServers=leg_servers(ice, leg, session_id))


def uses_udp_turn(ice: IceConfig, leg: Leg) -> bool:
    """Whether a relay leg's peer runs a TURN client over UDP: one more UDP socket per ICE
    transport, in the port range (a TURN client over TCP/TLS has a TCP socket instead)."""
    for server in leg_servers(ice, leg):
        urls = server.urls if isinstance(server.urls, list) else [server.urls]
        if any(url.startswith("turn:") and _turn_preference(url) == 0 for url in urls):
            return True
    return False


def gathered_address_count(ice: IceConfig) -> int:
    """Host addresses each ICE transport of a relay peer binds a socket on: the configured
    ``ice.host_addresses``, or (empty) what aioice finds on the machine (at least one)."""
    if ice.host_addresses:
        return len(ice.host_addresses)
    return max(1, len(aiortc_private.machine_host_addresses()))


def browser_ice_servers(
    ice: IceConfig, session_id: str, *, now: float | None = None
) -> list[dict[str, object]]:
    """The ICE servers as the browser's RTCPeerConnection expects them: every static server
    and, with ``ice.turn_urls``, TURN with this session's expiring credentials."""
    out: list[dict[str, object]] = []
    for s in _configured_servers(ice, session_id, turn=True, now=now):
        entry: dict[str, object] = {"urls": list(s.urls)}
        if s.username:
            entry["username"] = s.username
        if s.credential:
            entry["credential"] = s.credential
        out.append(entry)
    return out


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host\b.*)$", re.MULTILINE)
_CONNECTION = re.compile(r"^c=IN IP[46] (\S+)(\r?)$", re.MULTILINE)


def announce_public_address(sdp: str, public_address: str) -> str:
    """``sdp`` with ``public_address`` in place of every host candidate's address (NAT 1:1).

    Only host candidates change: with a 1:1 NAT the public address maps every port to the
    same port of the machine, so the gathered port stays right. The ``c=`` lines (the
    default candidate's address) follow when they named a host address.
    """
    if not public_address:
        return sdp
    hosts = {m.group(2) for m in _CANDIDATE.finditer(sdp)}
    if not hosts:
        return sdp
    family = "IP6" if ":" in public_address else "IP4"
    sdp = _CANDIDATE.sub(lambda m: m.group(1) + public_address + m.group(3), sdp)
    return _CONNECTION.sub(
        lambda m: (
            f"c=IN {family} {public_address}{m.group(2)}" if m.group(1) in hosts else m.group(0)
        ),
        sdp,
    )
