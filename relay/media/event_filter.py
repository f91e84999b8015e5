"""What of the upstream's server events the candidate's page may see.

The upstream describes the interviewer in its events: ``session.created`` /
``session.updated`` carry the instructions, tools, prompt and tracing settings, and tool
calls carry their names and arguments (which may be the model's notes about the candidate).
None of that is the page's business, so events to the browser pass through this filter:

* **default-deny by type**: only types on ``events.browser_server_events`` go through;
  anything else (tool-call argument streams, MCP events, rate limits, types the relay does
  not know yet) is dropped and counted;
* **session objects are rebuilt**, not trimmed: only the dotted paths on
  ``events.browser_session_fields`` (voice, audio formats, turn detection, …) are copied
  (the last one rebuilt is kept: the relay answers a page's ``session.update`` with it);
* **items** (in ``conversation.item.*``, ``response.output_item.*`` and ``response.output``)
  go through only when they are user or assistant messages; an event about any other item
  (a function call, its output, a system message) is dropped, and ``response`` objects keep
  only their message items and a fixed set of fields.

Pure logic: no I/O, no aiortc.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

SESSION_EVENTS = frozenset({"session.created", "session.updated"})
# Fields of a response object (response.created / response.done) a page may see.
RESPONSE_FIELDS = frozenset(
    {
        "object",
        "id",
        "status",
        "status_details",
        "output",
        "conversation_id",
        "output_modalities",
        "modalities",
        "audio",
        "voice",
        "output_audio_format",
        "usage",
    }
)
MESSAGE_ROLES = frozenset({"user", "assistant"})


def _copy_path(source: Mapping[str, Any], target: dict[str, Any], path: list[str]) -> None:
    head, rest = path[0], path[1:]
    if head not in source:
        return
    value = source[head]
    if not rest:
        target[head] = value
        return
    if isinstance(value, Mapping):
        child = target.setdefault(head, {})
        if isinstance(child, dict):
            _copy_path(value, child, rest)


def redact_session(session: Any, fields: Iterable[str]) -> dict[str, Any]:
    """A new session object holding only the allowed dotted paths of ``session``."""
    result: dict[str, Any] = {}
    if isinstance(session, Mapping):
        for path in fields:
            _copy_path(session, result, path.split("."))
    return result


def _is_message(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and item.get("type") == "message"
        and item.get("role") in MESSAGE_ROLES
    )


class ServerEventFilter:
    def __init__(self, event_types: Iterable[str], session_fields: Iterable[str]) -> None:
        self._types = frozenset(event_types)
        self._session_fields = tuple(session_fields)
        # The effective session as the page may see it (redacted), from the upstream's
        # latest session.created / session.updated; None until the first one.
        self.session: dict[str, Any] | None = None

    def apply(self, message: str | bytes) -> str | None:
        """The text to send the browser for this upstream message, or None to drop it."""
        if not isinstance(message, str):
            return None
        try:
            event: Any = json.loads(message)
        except (ValueError, RecursionError):
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if not isinstance(kind, str) or kind not in self._types:
            return None
        if kind in SESSION_EVENTS:
            event["session"] = redact_session(event.get("session"), self._session_fields)
            self.session = event["session"]
        if "item" in event and not _is_message(event["item"]):
            return None
        response = event.get("response")
        if isinstance(response, Mapping):
            kept = {k: v for k, v in response.items() if k in RESPONSE_FIELDS}
            if isinstance(kept.get("output"), list):
                kept["output"] = [item for item in kept["output"] if _is_message(item)]
            event["response"] = kept
        # ASCII-only: an unpaired \uD800-\uDFFF escape from upstream decodes to a lone
        # surrogate, which stays a (valid JSON) escape here; written raw, it could not be
        # encoded as UTF-8 and aiortc's send would fail inside the browser's transport.
        return json.dumps(event, ensure_ascii=True)
