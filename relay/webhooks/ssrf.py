"""Where webhooks may go: no request into the operator's own network (SSRF).

An endpoint's URL is https, or plain http to loopback only when
``webhooks.allow_insecure_loopback`` is set. Every address the host resolves to must be
public (``ipaddress``'s ``is_global``: not private, loopback, link-local, shared, reserved
or unspecified; never multicast; an IPv6 form of an IPv4 address, mapped, NAT64 or 6to4,
judged as that IPv4 address) unless it lies in ``webhooks.allowed_networks``, or is
loopback with ``allow_insecure_loopback``.

The check runs at registration and again at every delivery, on the addresses the delivery
actually connects to: ``GuardedResolver`` is the resolver of the delivery's connector, so
aiohttp connects only to the addresses it returned after checking them. A name that
resolved to a public address when it was registered and to a private one now (DNS
rebinding) is refused at delivery; there is no second lookup between the check and the
connection for an attacker's DNS to answer differently. An IP literal never reaches a
resolver (aiohttp connects to it as is), so ``check_target`` checks it before the request.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from relay.config import Network, WebhooksConfig

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_CHARS = 2048


class UrlRefused(ValueError):
    """The URL may not be a webhook endpoint; the message says why (never the URL's
    credentials: URLs carrying any are refused)."""


class AddressRefused(OSError):
    """A delivery's host resolved to an address it may not reach. An ``OSError`` so that
    aiohttp's connector passes it on (as the cause of its ``ClientConnectorDNSError``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AddressPolicy:
    allow_insecure_loopback: bool = False
    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, config: WebhooksConfig) -> AddressPolicy:
        return cls(config.allow_insecure_loopback, config.allowed_networks)

    def refusal(self, address: IpAddress, scheme: str) -> str | None:
        """Why a request of ``scheme`` may not go to ``address`` (None: it may)."""
        original = address
        translated = False
        if isinstance(address, ipaddress.IPv6Address):
            # ::ffff:10.0.0.1 reaches 10.0.0.1, and so may 64:ff9b::a00:1 through a NAT64
            # gateway or 2002:a00:1:: through a 6to4 relay: judge the address it reaches.
            embedded = _embedded_ipv4(address)
            translated = embedded is not None and address.ipv4_mapped is None
            address = embedded or address
        if address.is_multicast or address.is_unspecified:
            return f"{address} is not a unicast address"
        # Loopback is this host's: a NAT64 or 6to4 form of 127.0.0.1 goes to a gateway.
        loopback = address.is_loopback and not translated
        if scheme == "http" and not (loopback and self.allow_insecure_loopback):
            return "plain http is allowed only to loopback, with webhooks.allow_insecure_loopback"
        if loopback and self.allow_insecure_loopback:
            return None
        # A network the operator opened, named in either form (an IPv6 NAT64 prefix too).
        if any(address in net or original in net for net in self.allowed_networks):
            return None
        if original in _NAT64_LOCAL:
            return f"{original} is a local-use NAT64 address (its IPv4 form is not checkable)"
        if loopback:
            return f"{address} is loopback (webhooks.allow_insecure_loopback is off)"
        # is_global alone lets reserved IPv6 ranges through on some Pythons (3.11:
        # ::127.0.0.1, an IPv4-compatible address, and fec0::/10, site-local).
        site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
        if not address.is_global or address.is_reserved or site_local:
            kind = "link-local" if address.is_link_local else "private or reserved"
            return f"{address} is {kind} (not in webhooks.allowed_networks)"
        return None


# RFC 6052's well-known NAT64 prefix: the IPv4 address is the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: the IPv4 address's place depends on the operator's
# prefix length, so it cannot be judged; never global (IANA).
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through a translation (IPv4-mapped, the
    well-known NAT64 prefix, 6to4), or None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    # The host as an address when the URL names one (no resolution then).
    literal: IpAddress | None


def parse_url(url: str) -> Target:
    """The URL's parts, or ``UrlRefused`` for anything but a plain http(s) URL."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"longer than {MAX_URL_CHARS} characters")
    # urlsplit silently drops tabs and line breaks, and PostgreSQL refuses NUL: a URL
    # holding any of them (or a space) is refused as written, not stored or half-parsed.
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UrlRefused("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("must be an https URL")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry credentials (user:password@)")
    if parts.fragment:
        raise UrlRefused("must not have a fragment")
    host = parts.hostname
    if not host:
        raise UrlRefused("has no host")
    literal: IpAddress | None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        if not _hostname(host):
            raise UrlRefused("the host is neither a name nor an IP address") from None
    return Target(scheme, host, port or (443 if scheme == "https" else 80), literal)


def _hostname(host: str) -> bool:
    # Numeric look-alikes ("127.1", "2130706433", "0x7f000001") are addresses to the C
    # resolver: refused rather than guessed at. A name's last label (a top-level domain, or
    # a single-label name) starts with a letter.
    labels = host.rstrip(".").split(".")
    if not labels or not all(0 < len(label) <= 63 for label in labels):
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    if not all(set(label) <= allowed for label in labels):
        return False
    return labels[-1][0].isalpha()


def check_literal(target: Target, policy: AddressPolicy) -> None:
    """Refuse a URL whose host is an address it may not reach (names are checked when
    resolved, by ``GuardedResolver``); a plain-http name must be loopback to be
    resolved at all."""
    if target.literal is not None:
        reason = policy.refusal(target.literal, target.scheme)
        if reason is not None:
            raise UrlRefused(reason)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and returns the addresses only when every one of them may
    be reached (one refused address refuses the host: a name that mixes a public and a
    private address is how a rebinding attack gets its second chance)."""

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy, scheme: str) -> None:
        self._inner = inner
        self._policy = policy
        self._scheme = scheme

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results:
            raise AddressRefused(f"{host} resolves to no address")
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            reason = self._policy.refusal(address, self._scheme)
            if reason is not None:
                raise AddressRefused(f"{host} resolves to {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


async def check_url(url: str, policy: AddressPolicy, resolver: AbstractResolver) -> Target:
    """Registration's check: the URL's form, then each address its host resolves to now."""
    target = parse_url(url)
    check_literal(target, policy)
    if target.literal is None:
        guarded = GuardedResolver(resolver, policy, target.scheme)
        try:
            await guarded.resolve(target.host, target.port, socket.AF_UNSPEC)
        except AddressRefused as exc:
            raise UrlRefused(exc.reason) from None
        except OSError as exc:
            raise UrlRefused(f"{target.host} does not resolve ({exc.strerror or exc})") from None
    return target
