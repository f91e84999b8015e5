"""Peer and data-channel events: both legs connected, a leg lost, the browser's channel.

``PeerWatch`` listens to both peers and turns their events into two callbacks to the
bridge: ``on_both_connected()`` and ``on_lost(leg, what)``. Whether a loss ends the bridge,
and how, depends on the bridge's state, so the bridge decides (``Bridge._leg_lost``).
``watch_browser`` again (a resumed leg) replaces the browser's peer, ``watch_upstream`` again
(a healed upstream leg) the upstream's: the events of the one replaced are ignored from
then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import RTCDataChannel, RTCPeerConnection

from relay.media.events import EventRelay, Side

log = logging.getLogger("relay.media")


class PeerWatch:
    """Watches one bridge's two peers (the upstream one from when it exists)."""

    def __init__(
        self,
        *,
        session_id: str,
        events: EventRelay,
        on_both_connected: Callable[[], None],
        on_lost: Callable[[Side, str], None],
    ) -> None:
        self._session_id = session_id
        self._events = events
        self._on_both_connected = on_both_connected
        self._on_lost = on_lost
        self._peers: dict[Side, RTCPeerConnection] = {}

    def watch_browser(self, pc: RTCPeerConnection) -> None:
        self._peers["browser"] = pc
        pc.on("datachannel", self._on_browser_channel)
        pc.on("connectionstatechange", lambda: self._on_peer_state("browser", pc))

    def forget_browser(self, pc: RTCPeerConnection) -> None:
        """``pc`` is a lost leg's: its events (it is being closed) are nobody's concern."""
        if self._peers.get("browser") is pc:
            del self._peers["browser"]

    def forget_upstream(self, pc: RTCPeerConnection) -> None:
        """``pc`` is a lost upstream leg's (a new one replaces it): its events are ignored."""
        if self._peers.get("upstream") is pc:
            del self._peers["upstream"]

    def watch_upstream(self, pc: RTCPeerConnection) -> None:
        self._peers["upstream"] = pc
        pc.on("connectionstatechange", lambda: self._on_peer_state("upstream", pc))

    def _on_browser_channel(self, channel: RTCDataChannel) -> None:
        if not self._events.attach_browser(channel):
            log.info("session %s: ignoring an extra browser data channel", self._session_id)

    def _on_peer_state(self, leg: Side, pc: RTCPeerConnection) -> None:
        if self._peers.get(leg) is not pc:
            return  # a browser leg that was lost and replaced by a resumed one
        state = pc.connectionState
        if state == "connected":
            peers = self._peers
            if len(peers) == 2 and all(p.connectionState == "connected" for p in peers.values()):
                self._on_both_connected()
        elif state in ("failed", "closed"):
            self._on_lost(leg, "disconnected" if state == "closed" else "failed")
