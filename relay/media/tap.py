"""The seam between forwarding and anything that observes the forwarded audio.

Every forwarding path (the aiortc passthrough, the decode fallback, a fast path) hands
each received RTP packet of one direction to that direction's ``PacketTap``, if one is
attached, before or after forwarding it. A tap is called on the event loop, once per
packet, so it must be O(1) and never block or await: a recorder, for instance, puts the
packet on a bounded queue drained by a writer thread and counts what it had to drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TappedPacket:
    """One received RTP packet as the tap sees it (the payload still encoded)."""

    # The negotiated codec's name in lower case: "opus", "pcmu", "pcma", "g722".
    codec: str
    clock_rate: int
    payload: bytes
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool
    # time.monotonic() when the packet reached the relay, in seconds.
    arrival: float


class PacketTap(Protocol):
    """Observes one direction's packets; see the module docstring for the contract."""

    def on_packet(self, packet: TappedPacket) -> None: ...
