"""relay.web.forwarded: who the client is behind a trusted proxy, and only then."""

from __future__ import annotations

import pytest

from relay.config import Network, ServerConfig
from relay.web.forwarded import client_address, forwarded_over_tls


def parse_networks(values: list[str]) -> tuple[Network, ...]:
    """server.trusted_proxies as the settings parse them."""
    return ServerConfig.model_validate({"trusted_proxies": values}).trusted_proxies


PROXIES = parse_networks(["172.30.0.0/24", "fd00::/8"])


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert client_address("172.30.0.5", ["203.0.113.9"], ()) == "172.30.0.5"


def test_a_client_cannot_name_its_own_address() -> None:
    # The peer is not a trusted proxy: whatever it wrote is not believed.
    assert client_address("198.51.100.7", ["203.0.113.9"], PROXIES) == "198.51.100.7"


def test_behind_the_proxy_the_client_is_the_hop_the_proxy_saw() -> None:
    assert client_address("172.30.0.5", ["203.0.113.9"], PROXIES) == "203.0.113.9"


def test_hops_the_client_wrote_itself_are_not_believed() -> None:
    # The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the real address.
    header = ["1.2.3.4, 203.0.113.9"]
    assert client_address("172.30.0.5", header, PROXIES) == "203.0.113.9"


def test_chains_of_trusted_proxies_and_repeated_headers() -> None:
    header = ["203.0.113.9", "172.30.0.7"]  # a second proxy of ours in front
    assert client_address("172.30.0.5", header, PROXIES) == "203.0.113.9"
    assert client_address("fd00::1", ["[2001:db8::5]:4431"], PROXIES) == "2001:db8::5"
    assert client_address("172.30.0.5", ["203.0.113.9:51000"], PROXIES) == "203.0.113.9"


def test_missing_or_malformed_hops_fall_back_to_the_nearest_trusted_address() -> None:
    assert client_address("172.30.0.5", [], PROXIES) == "172.30.0.5"
    assert client_address("172.30.0.5", ["not-an-address"], PROXIES) == "172.30.0.5"
    assert client_address("172.30.0.5", ["203.0.113.9, junk, 172.30.0.7"], PROXIES) == (
        "172.30.0.7"
    )
    assert client_address(None, ["203.0.113.9"], PROXIES) == "unknown"


def test_ipv4_mapped_peers_count_as_ipv4() -> None:
    assert client_address("::ffff:172.30.0.5", ["203.0.113.9"], PROXIES) == "203.0.113.9"


def test_networks_are_checked() -> None:
    assert [str(n) for n in parse_networks(["10.1.2.3", " 10.0.0.0/8"])] == [
        "10.1.2.3/32",
        "10.0.0.0/8",
    ]
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])


def test_tls_is_believed_from_a_trusted_proxy_only() -> None:
    assert forwarded_over_tls("172.30.0.5", ["https"], PROXIES)
    assert forwarded_over_tls("172.30.0.5", ["HTTPS, http"], PROXIES)
    assert forwarded_over_tls("fd00::1", ["https"], PROXIES)
    assert not forwarded_over_tls("172.30.0.5", ["http"], PROXIES)
    assert not forwarded_over_tls("172.30.0.5", [], PROXIES)
    assert not forwarded_over_tls("198.51.100.7", ["https"], PROXIES)
    assert not forwarded_over_tls("172.30.0.5", ["https"], ())
    assert not forwarded_over_tls(None, ["https"], PROXIES)
