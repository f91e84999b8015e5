"""The media bridges of this relay instance: tracking, draining, closing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.services import Services


class BridgeManager:
    """Tracks live bridges; ``drain`` and ``close_all`` end them at shut-down."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def drain(self, deadline_s: float) -> None:
        """Wait up to ``deadline_s`` for live bridges, then hang up the rest."""

    async def close_all(self) -> None:
        """Hang up every live bridge (reason ``relay_shutdown``)."""
