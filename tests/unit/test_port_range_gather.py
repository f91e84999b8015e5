"""A gathering that runs out of ports leaves no socket bound (real aioice/aiortc peers on
two loopback addresses, 127.0.0.1 and 127.0.0.2, with a range that runs out after the
first): aioice keeps a component's host sockets in a local list until all are bound, so
the ones bound before the failure are closed by the port-range scope, not by aioice."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import aioice
import pytest
from aiortc import RTCPeerConnection

from relay.config import IceConfig
from relay.media import peers
from relay.media.ice import install_host_addresses
from relay.media.port_range import NoMediaPorts, PortRange, binding_in
from tests.integration.media_helpers import wait_until

ADDRESSES = ["127.0.0.1", "127.0.0.2"]


def bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


@pytest.fixture
def second_address_taken() -> Iterator[int]:
    """A port free on 127.0.0.1 but held on 127.0.0.2 (so a one-port range runs out there)."""
    for port in range(21000, 22000):
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            holder.bind(("127.0.0.2", port))
        except OSError:
            holder.close()
            continue
        if bindable("127.0.0.1", port):
            try:
                yield port
            finally:
                holder.close()
            return
        holder.close()
    raise AssertionError("no free UDP port")


async def test_aioice_sockets_bound_before_the_range_ran_out_are_closed(
    second_address_taken: int,
) -> None:
    port = second_address_taken
    conn = aioice.Connection(ice_controlling=True)
    try:
        with pytest.raises(NoMediaPorts), binding_in(PortRange(port, port)):
            await conn.get_component_candidates(1, ADDRESSES)
        # 127.0.0.1:port was bound for the first address; it is freed (the transport
        # closes its socket on the next turn of the loop).
        await wait_until(lambda: bindable("127.0.0.1", port), 2, "the first socket closed")
    finally:
        await conn.close()


async def test_a_relay_peer_whose_gathering_fails_keeps_no_socket(
    second_address_taken: int,
) -> None:
    port = second_address_taken
    ice = IceConfig(host_addresses=tuple(ADDRESSES), udp_port_min=port, udp_port_max=port)
    pc: RTCPeerConnection = peers.new_peer(ice, leg="upstream")
    try:
        # The upstream leg gathers two transports side by side (audio, data channel).
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("oai-events")
        with pytest.raises(NoMediaPorts):
            await peers.set_local_description(pc, await pc.createOffer(), 5.0)
        await wait_until(lambda: bindable("127.0.0.1", port), 2, "the first sockets closed")
    finally:
        await peers.close_peer(pc)
        install_host_addresses(IceConfig().host_addresses)  # process-wide: as it was
