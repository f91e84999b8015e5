"""The recording notice: its text for the candidate page, and the page's word that it was
shown (``{"recording_notice_shown": true}`` in the session request body)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.errors import ApiError
from relay.services import SERVICES

FIELD = "recording_notice_shown"


def recording_notice_shown(fields: dict[str, Any]) -> bool:
    value = fields.get(FIELD, False)
    if not isinstance(value, bool):
        raise ApiError(400, "invalid_field", f"'{FIELD}' must be true or false.")
    return value


async def notice(request: web.Request) -> web.Response:
    """GET /api/recording-notice (public): what the page shows before Start."""
    config = request.app[SERVICES].settings.recording
    return web.json_response(
        {"recording": config.enabled, "notice": config.notice_text if config.enabled else ""}
    )


def register(app: web.Application) -> None:
    app.router.add_get("/api/recording-notice", notice)
