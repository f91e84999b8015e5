"""A network cut on loopback, for a test running in its own network namespace (as
tests/run.sh and the documented ``unshare -n`` runs do, as root): every UDP datagram to
and from chosen ports is dropped with iptables, as when a candidate's network vanishes
without a word (no DTLS close, no SCTP abort: the far end learns of it only when ICE
consent fails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator

from aiortc import RTCPeerConnection

# Looked up once, at import (a lookup stats files: not on the event loop of a test).
_IPTABLES = shutil.which("iptables")


def require_netcut() -> None:
    """Fail at once, saying why, where iptables cannot be used (not root, or not installed):
    the test command runs as root in a private namespace and installs iptables
    (tests/run.sh), so every run there cuts for real; nothing is skipped."""
    assert os.geteuid() == 0 and _IPTABLES is not None, (
        "cutting the network needs root and iptables (bash tests/run.sh as root installs"
        " iptables and runs the tests in a private network namespace)"
    )


def udp_ports_of(pc: RTCPeerConnection) -> list[int]:
    """The local UDP ports of an aiortc peer's ICE connection."""
    sctp = pc.sctp
    assert sctp is not None
    connection = sctp.transport.transport.iceGatherer._connection
    return sorted({candidate.port for candidate in connection.local_candidates})


def _rules(ports: list[int], action: str) -> None:
    for port in ports:
        for chain, match in (("INPUT", "--dport"), ("OUTPUT", "--sport")):
            rule = [chain, "-p", "udp", match, str(port), "-j", "DROP"]
            assert _IPTABLES is not None  # require_netcut() first
            subprocess.run([_IPTABLES, action, *rule], check=True, capture_output=True)


@contextlib.asynccontextmanager
async def cut(ports: list[int]) -> AsyncIterator[None]:
    """Drop every UDP datagram to and from ``ports`` until the block ends (iptables runs
    in a thread: the event loop never waits for a process)."""
    await asyncio.to_thread(_rules, ports, "-A")
    try:
        yield
    finally:
        await asyncio.to_thread(_rules, ports, "-D")
