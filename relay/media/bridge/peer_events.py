"""Peer and data-channel events: connection milestones, and losses that end the bridge."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiortc import RTCDataChannel, RTCPeerConnection

from relay.media.events import Side

if TYPE_CHECKING:
    from relay.media.bridge.core import Bridge

log = logging.getLogger("relay.media")


def watch_browser(bridge: Bridge, pc: RTCPeerConnection) -> None:
    pc.on("datachannel", lambda channel: on_browser_channel(bridge, channel))
    pc.on("connectionstatechange", lambda: on_peer_state(bridge, "browser", pc))


def watch_upstream(bridge: Bridge, pc: RTCPeerConnection) -> None:
    pc.on("connectionstatechange", lambda: on_peer_state(bridge, "upstream", pc))


def on_browser_channel(bridge: Bridge, channel: RTCDataChannel) -> None:
    if not bridge.events.attach_browser(channel):
        log.info("session %s: ignoring an extra browser data channel", bridge.session_id)


def on_channel_closed(bridge: Bridge, side: Side) -> None:
    if not bridge.is_closing():
        end_on_loss(bridge, side, "channel_closed")


def on_peer_state(bridge: Bridge, leg: str, pc: RTCPeerConnection) -> None:
    state = pc.connectionState
    if state == "connected":
        upstream = bridge.upstream_pc
        if (
            bridge.browser_pc.connectionState == "connected"
            and upstream is not None
            and upstream.connectionState == "connected"
        ):
            bridge.both_connected.set()
    elif state in ("failed", "closed") and not bridge.is_closing():
        end_on_loss(bridge, leg, "disconnected" if state == "closed" else "failed")


def end_on_loss(bridge: Bridge, leg: str, what: str) -> None:
    if bridge.state == "negotiating":
        return  # start() fails and tears down on its own
    if bridge.connected_at is None:
        bridge.begin_close(f"{leg}_connect_failed", state="failed")
    else:
        bridge.begin_close(f"{leg}_{what}")
