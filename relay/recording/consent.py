"""The recording notice: its text for the candidate page, and the page's word that it was
shown (``{"recording_notice_shown": true}`` in the session request body).

While recording is on, that word is required (``recording.require_notice``, default true):
a session whose client did not give it is refused with 409 ``recording_notice_required``
before anything is taken for it. The bundled page gives it once the notice is on screen
(static/page.js); an API client shows the notice itself and says so. The notice itself is served by
relay.web.routes_session (``GET /api/recording-notice``)."""

from __future__ import annotations

from typing import Any

from relay.config import RecordingConfig
from relay.errors import ApiError

FIELD = "recording_notice_shown"


def recording_notice_shown(fields: dict[str, Any]) -> bool:
    value = fields.get(FIELD, False)
    if not isinstance(value, bool):
        raise ApiError(400, "invalid_field", f"'{FIELD}' must be true or false.")
    return value


def require_notice_shown(config: RecordingConfig, shown: bool, *, recorded: bool = True) -> None:
    """409 when this session would be recorded without its client having shown the notice.
    ``recorded``: False for an interview created with ``recording: false`` (nothing to
    give notice of)."""
    if config.enabled and recorded and config.require_notice and not shown:
        raise ApiError(
            409,
            "recording_notice_required",
            "This interview is recorded: show the candidate the recording notice "
            f'(GET /api/recording-notice) and send {{"{FIELD}": true}}.',
        )
