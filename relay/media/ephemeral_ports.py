"""Does the media port range overlap the kernel's ephemeral ports?

The kernel hands every outgoing connection and every socket bound to port 0 a port from
``net.ipv4.ip_local_port_range`` (32768-60999 on Linux by default), on behalf of any process
on the host or in the network namespace: database and HTTP clients, DNS lookups, aioice's
own sockets outside the relay's range. A media range inside it therefore loses ports to them
at random, and an interview's bind can fail while the range is nominally free. The relay
skips ports it cannot bind, so this is a warning at start-up, not an error: the fix is a
range outside the ephemeral one, or reserving the range
(``net.ipv4.ip_local_reserved_ports``), which keeps the kernel from handing its ports out.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

PROC_IPV4 = Path("/proc/sys/net/ipv4")


def _ports(text: str) -> set[int]:
    """``ip_local_reserved_ports``' format: ``20000-20599,30000`` (empty: none)."""
    ports: set[int] = set()
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        low, _, high = item.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def ephemeral_overlap(low: int, high: int, proc: Path = PROC_IPV4) -> str | None:
    """Why ``low..high`` collides with the kernel's ephemeral ports, or None (no range,
    no overlap, the overlap reserved, or nothing to read: not Linux)."""
    if low == 0 and high == 0:
        return None
    try:
        first, last = (int(x) for x in (proc / "ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    shared = set(range(max(low, first), min(high, last) + 1))
    if not shared:
        return None
    # An unreadable reservation list counts as none reserved.
    with contextlib.suppress(OSError, ValueError):
        shared -= _ports((proc / "ip_local_reserved_ports").read_text())
    if not shared:
        return None
    return (
        f"ice.udp_port_min..udp_port_max ({low}-{high}) overlaps the kernel's ephemeral "
        f"ports {first}-{last} (net.ipv4.ip_local_port_range; {len(shared)} of its ports): "
        "outgoing connections of any process here can take them and an interview's media "
        f"bind can fail; choose a range below {first} (docs/deploy.md) or reserve it "
        f"(sysctl net.ipv4.ip_local_reserved_ports={low}-{high})"
    )
