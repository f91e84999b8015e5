"""The client's address behind a reverse proxy the operator trusts.

Behind a proxy (compose.yaml's Caddy, a cloud load balancer) every request's TCP peer is
the proxy, so per-client limits (failed authentications) would key on the proxy and one
guesser would lock every candidate out. ``server.trusted_proxies`` lists the networks the
relay's proxies connect from; when the peer is one of them, the client is the rightmost
``X-Forwarded-For`` hop that is not itself a trusted proxy (each proxy appends the
address it received the request from, so anything to the left of that hop was written by
the client and is not believed). With the list empty, or from any other peer, the header
is ignored: a client cannot name its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

# The networks come parsed from the settings (server.trusted_proxies).
from relay.config import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]" or "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket: compare and report it as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[Network]
) -> str:
    """The client's address: ``peer`` unless ``peer`` is a trusted proxy, then the
    rightmost untrusted ``X-Forwarded-For`` hop (``forwarded_for``: every value of the
    header, in order). A malformed hop ends the walk at the last trusted one."""
    if peer is None:
        return "unknown"
    address = _address(peer)
    if address is None or not proxies or not _trusted(address, proxies):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        hop_address = _address(hop)
        if hop_address is None:
            break
        if not _trusted(hop_address, proxies):
            return str(hop_address)
        address = hop_address
    # Every hop was a trusted proxy (or none was usable): the nearest one we believe.
    return str(address)


def forwarded_over_tls(
    peer: str | None, forwarded_proto: Sequence[str], proxies: Sequence[Network]
) -> bool:
    """A trusted proxy says the client reached it over TLS: ``X-Forwarded-Proto`` (every
    value of the header, in order) starts with ``https``. From any other peer the header is
    ignored. The first value is the scheme the outermost proxy saw; a client that wrote its
    own in front gains nothing (browsers ignore HSTS received over plain HTTP)."""
    if peer is None or not proxies:
        return False
    address = _address(peer)
    if address is None or not _trusted(address, proxies):
        return False
    values = [v.strip().lower() for value in forwarded_proto for v in value.split(",")]
    return bool(values) and values[0] == "https"
