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
* **hidden items stay unnamed**: the ids of the items dropped above (the relay's own system
  messages: the wrap-up, a take-over's note; tool calls) are remembered, so that no event
  names one to the page: a ``previous_item_id`` naming a hidden item is rewritten to the
  nearest earlier item the page did see (or null), an event whose ``item_id`` is hidden is
  dropped, and a page's ``conversation.item.retrieve`` / ``.delete`` / ``.truncate`` of a
  hidden id is answered by the relay (relay.media.events) as OpenAI answers an unknown id,
  never forwarded: a page can neither read nor delete the relay's system message. Should
  the upstream's ``conversation.item.retrieved`` of a hidden item still arrive (an id no
  longer remembered, see HIDDEN_ITEMS_KEPT), it becomes that same ``error``, so that every
  retrieve the page sends is answered (OpenAI's clients may wait for the answer).

Pure logic: no I/O, no aiortc.
"""

from __future__ import annotations

import json
from collections import OrderedDict
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
# How many hidden items' ids (with their own previous_item_id) a session remembers, the most
# recent first kept. Only a run of hidden items right before a new item is ever walked (a
# new item follows the latest ones), and an interview's hidden items are few (a system
# message per wrap-up and take-over, two items per tool call): 256 is far beyond a run that
# happens, and bounds a long interview's memory to 256 pairs of ids whatever the upstream
# sends. An id forgotten this way could be named again, in the unlikely case an item is
# put right after it.
HIDDEN_ITEMS_KEPT = 256
# The client events that name an item, each with the code OpenAI's error carries when the
# item does not exist (docs/upstream-fidelity.md; the simulator answers the same).
ITEM_NOT_FOUND_CODES: Mapping[str, str] = {
    "conversation.item.retrieve": "item_not_found",
    "conversation.item.delete": "item_delete_invalid_item_id",
    "conversation.item.truncate": "item_truncate_invalid_item_id",
}


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


def item_not_found(
    kind: str, item_id: str, *, event_id: str, client_event_id: str | None
) -> dict[str, Any]:
    """OpenAI's ``error`` for a ``kind`` client event naming an item that does not exist."""
    return {
        "type": "error",
        "event_id": event_id,
        "error": {
            "type": "invalid_request_error",
            "code": ITEM_NOT_FOUND_CODES[kind],
            "message": f"Item with item_id not found: {item_id}",
            "param": "item_id",
            "event_id": client_event_id,
        },
    }


class ServerEventFilter:
    def __init__(self, event_types: Iterable[str], session_fields: Iterable[str]) -> None:
        self._types = frozenset(event_types)
        self._session_fields = tuple(session_fields)
        # The effective session as the page may see it (redacted), from the upstream's
        # latest session.created / session.updated; None until the first one.
        self.session: dict[str, Any] | None = None
        # Hidden item id -> the previous_item_id the upstream gave it (None if not known),
        # oldest first, at most HIDDEN_ITEMS_KEPT.
        self._hidden: OrderedDict[str, str | None] = OrderedDict()

    def is_hidden(self, item_id: str) -> bool:
        """Whether ``item_id`` names an item the page was not shown."""
        return item_id in self._hidden

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
        # Before the type check: a hidden item is remembered whichever of its events the
        # page may see (and while nothing goes to the page: the caller applies every event).
        self._remember_hidden(event)
        kind = event.get("type")
        if not isinstance(kind, str) or kind not in self._types:
            return None
        if kind in SESSION_EVENTS:
            event["session"] = redact_session(event.get("session"), self._session_fields)
            self.session = event["session"]
        if "item" in event and not _is_message(event["item"]):
            return self._retrieved_as_not_found(event)
        item_id = event.get("item_id")
        if isinstance(item_id, str) and item_id in self._hidden:
            return None  # e.g. conversation.item.deleted / .truncated of a hidden item
        previous = event.get("previous_item_id")
        if isinstance(previous, str):
            event["previous_item_id"] = self._seen_before(previous)
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

    def _remember_hidden(self, event: Mapping[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, Mapping) or _is_message(item):
            return
        item_id = item.get("id")
        if not isinstance(item_id, str):
            return
        previous = event.get("previous_item_id")
        previous = previous if isinstance(previous, str) else None
        if item_id in self._hidden:
            # An item's first event may not say where it is (response.output_item.added
            # does not; conversation.item.added does): a later one that does wins.
            if previous is not None:
                self._hidden[item_id] = previous
            return
        self._hidden[item_id] = previous
        if len(self._hidden) > HIDDEN_ITEMS_KEPT:
            self._hidden.popitem(last=False)

    def _seen_before(self, previous: str) -> str | None:
        """The nearest item at or before ``previous`` that the page saw (None: none)."""
        # Bounded: an upstream whose previous_item_ids loop cannot hold the relay here.
        for _ in range(len(self._hidden) + 1):
            if previous not in self._hidden:
                return previous
            earlier = self._hidden[previous]
            if earlier is None:
                return None
            previous = earlier
        return None

    def _retrieved_as_not_found(self, event: Mapping[str, Any]) -> str | None:
        """None (drop the event about a hidden item), or, for the upstream's answer to the
        page's retrieve of one, the answer OpenAI gives for an unknown item: the relay
        sends no retrieve of its own, so the page asked and waits for one. Which of its
        events it answers is not known here, so the error's ``event_id`` is null."""
        item = event.get("item")
        if event.get("type") != "conversation.item.retrieved" or not isinstance(item, Mapping):
            return None
        item_id = item.get("id")
        if not isinstance(item_id, str):
            return None
        raw_id = event.get("event_id")
        error = item_not_found(
            "conversation.item.retrieve",
            item_id,
            event_id=raw_id if isinstance(raw_id, str) else "event_relay_retrieved",
            client_event_id=None,
        )
        return json.dumps(error, ensure_ascii=True)
