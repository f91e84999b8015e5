"""Whose failed authentications an address counts among (relay.web.caller)."""

from __future__ import annotations

import pytest

from relay.web.caller import failed_auth_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2::a", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
        # An IPv4 client seen through a dual-stack socket is that IPv4 address.
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("unix-socket-peer", "unix-socket-peer"),
    ],
)
def test_ipv6_addresses_count_by_their_64(address: str, key: str) -> None:
    assert failed_auth_key(address) == key
