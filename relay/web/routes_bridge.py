"""POST /api/webrtc-exchange and GET/DELETE /api/sessions/{id}."""

from __future__ import annotations

from aiohttp import web


def register(app: web.Application) -> None:
    """Routes are added as the media bridge lands."""
