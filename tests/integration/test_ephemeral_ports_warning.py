"""The relay warns at start-up when its media range overlaps the kernel's ephemeral ports
of the network namespace it runs in (read from /proc, as the relay reads it)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.integration.conftest import MakeRelay

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def kernel_ephemeral_range() -> tuple[int, int]:
    low, high = (int(x) for x in EPHEMERAL.read_text().split())
    return low, high


def overlap_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "ip_local_port_range" in r.getMessage()
    ]


async def test_a_media_range_inside_the_ephemeral_ports_is_warned_about(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = kernel_ephemeral_range()
    low, high = first + 1000, first + 1299
    caplog.set_level(logging.WARNING)
    await make_relay(overrides={"ice": {"udp_port_min": low, "udp_port_max": high}})
    (message,) = overlap_warnings(caplog)
    assert f"({low}-{high})" in message and f"below {first}" in message


async def test_a_media_range_below_the_ephemeral_ports_starts_quietly(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = kernel_ephemeral_range()
    caplog.set_level(logging.WARNING)
    relay = await make_relay(
        overrides={"ice": {"udp_port_min": first - 300, "udp_port_max": first - 1}}
    )
    assert (await relay.client.get("/healthz")).status == 200
    assert overlap_warnings(caplog) == []
