"""When the relay may fall back to its built-in simulator (relay.upstream.simulation)."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, Settings
from relay.upstream.simulation import is_loopback, uses_simulator


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "relay.example.com", ""])
def test_other_hosts(host: str) -> None:
    assert not is_loopback(host)


def _settings(host: str, *, key: str = "", simulate: bool = False) -> Settings:
    s = Settings().replace("server", host=host)
    return s.replace("upstream", api_key=key, simulate=simulate)


def test_no_key_on_loopback_simulates() -> None:
    assert uses_simulator(_settings("127.0.0.1"))


def test_no_key_off_loopback_needs_simulation_asked_for() -> None:
    with pytest.raises(ConfigError, match=r"upstream\.api_key.*--simulate"):
        uses_simulator(_settings("0.0.0.0"))
    assert uses_simulator(_settings("0.0.0.0", simulate=True))


def test_no_key_behind_a_proxy_needs_simulation_asked_for_even_on_loopback() -> None:
    """compose.yaml's relays listen on 127.0.0.1 behind Caddy: they serve candidates."""
    behind = _settings("127.0.0.1").replace("server", trusted_proxies=["127.0.0.1"])
    with pytest.raises(ConfigError, match=r"upstream\.api_key.*trusted_proxies.*--simulate"):
        uses_simulator(behind)
    assert uses_simulator(behind.replace("upstream", simulate=True))


def test_a_key_means_openai_unless_simulation_is_asked_for() -> None:
    assert not uses_simulator(_settings("0.0.0.0", key="sk-real"))
    assert uses_simulator(_settings("0.0.0.0", key="sk-real", simulate=True))
