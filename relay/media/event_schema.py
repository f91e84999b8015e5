"""Strict checking of browser (client) events before they go upstream.

The relay forwards only what it has checked, and only in the form it checked it:

1. **Strict JSON.** Duplicate keys are refused (Python's ``json`` keeps the last one, so
   ``{"type":"session.update",…,"type":"response.cancel"}`` would otherwise be checked as
   one type while the upstream's parser might read another), and so are the non-standard
   constants ``NaN``/``Infinity`` and numbers that overflow to infinity.
2. **Known fields per type.** Every allowed type has a schema of the OpenAI Realtime client
   event's fields (GA names); any other field, or a field of the wrong shape, is refused.
   Where a client event could carry configuration (``response.create``'s ``response``,
   a ``system`` message in ``conversation.item.create``) the schema leaves it out: the
   interview's configuration belongs to the server.
3. **Valid Unicode.** A ``\\uD800``-``\\uDFFF`` escape without its pair decodes to a lone
   surrogate, which is not a character: it cannot be encoded as UTF-8 (aiortc's send
   would raise inside the DTLS transport and close the leg), so such an event is refused.
4. **Re-serialised.** The caller sends ``serialise(event)`` of the parsed, checked object,
   never the bytes the browser sent.

``session.update`` is never forwarded, whatever the configuration says: the interview
defines the session. A well-formed one (strict JSON, only ``type``, ``event_id`` and a
``session`` object) is recognised as ``SessionUpdate``: the relay answers it itself with
the effective session (relay.media.events), as OpenAI's clients wait for that answer.

Pure logic: no I/O, no aiortc.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# A field's check: True when the value is acceptable.
Check = Callable[[Any], bool]

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 4096
MAX_CONTENT_PARTS = 16
# session.update is never forwarded whatever the configuration says: the relay owns the
# session (it answers the event itself: SessionUpdate).
SESSION_UPDATE = "session.update"
ALWAYS_REFUSED = frozenset({SESSION_UPDATE})


class StrictJsonError(ValueError):
    """The text is not strict JSON (duplicate key, NaN/Infinity, overflowing number)."""


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    event_id: str | None


@dataclass(frozen=True)
class SessionUpdate:
    """A well-formed ``session.update``: its content is ignored, it is answered by the relay
    with the effective session and never forwarded."""

    event_id: str | None


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False


# ---------------------------------------------------------------------- field checks
def _identifier(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _user_text_part(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"type", "text"}
        and value["type"] == "input_text"
        and isinstance(value["text"], str)
        and len(value["text"]) <= MAX_TEXT_CHARS
    )


def _user_message(value: Any) -> bool:
    """Only a user's text message: never a system message or a tool result."""
    if not isinstance(value, dict) or not set(value) <= {"id", "type", "role", "content"}:
        return False
    if value.get("type") != "message" or value.get("role") != "user":
        return False
    if "id" in value and not _identifier(value["id"]):
        return False
    content = value.get("content")
    return (
        isinstance(content, list)
        and 0 < len(content) <= MAX_CONTENT_PARTS
        and all(_user_text_part(part) for part in content)
    )


_COMMON: dict[str, Field] = {"type": Field(_identifier, True), "event_id": Field(_identifier)}

# Client events the relay knows how to check (OpenAI Realtime GA client events). Only the
# intersection with ``events.browser_allowed`` is ever forwarded.
SCHEMAS: dict[str, dict[str, Field]] = {
    "response.cancel": {"response_id": Field(_identifier)},
    "output_audio_buffer.clear": {},
    "input_audio_buffer.clear": {},
    "input_audio_buffer.commit": {},
    # No "response" object: it could replace the instructions or tools for one response.
    "response.create": {},
    "conversation.item.create": {
        "item": Field(_user_message, True),
        "previous_item_id": Field(_identifier),
    },
    "conversation.item.truncate": {
        "item_id": Field(_identifier, True),
        "content_index": Field(_non_negative_int, True),
        "audio_end_ms": Field(_non_negative_int, True),
    },
    "conversation.item.delete": {"item_id": Field(_identifier, True)},
    "conversation.item.retrieve": {"item_id": Field(_identifier, True)},
}


def unknown_types(allowed: tuple[str, ...] | frozenset[str]) -> list[str]:
    """Configured types the relay has no schema for (start-up refuses them)."""
    return sorted(set(allowed) - set(SCHEMAS))


# ---------------------------------------------------------------------- strict JSON
def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJsonError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJsonError("number out of range")
    return value


def loads_strict(text: str) -> Any:
    """``json.loads`` refusing duplicate keys, NaN/Infinity and overflowing numbers.

    Raises StrictJsonError (duplicates, constants), ValueError (not JSON) or
    RecursionError (nesting deeper than the interpreter allows).
    """
    return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def serialise(event: Mapping[str, Any]) -> str:
    """The form sent upstream: compact, standard, ASCII-only JSON.

    ``ensure_ascii`` is a backstop for ``check_event``'s surrogate check: escaped, a lone
    surrogate can still be sent (as UTF-8 it cannot); ``allow_nan`` off likewise.
    """
    return json.dumps(event, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string (key or value) of the checked event holds a lone surrogate.

    Called on events that passed their schema, so the nesting is shallow and bounded.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


# ---------------------------------------------------------------------- checking
def check_event(text: str, allowed: frozenset[str]) -> dict[str, Any] | Refusal | SessionUpdate:
    """The checked event (to re-serialise and send), a ``session.update`` to answer, or why
    it is refused.

    ``text`` is already within the size cap.
    """
    try:
        event: Any = loads_strict(text)
    except StrictJsonError as exc:
        return Refusal("invalid_event", f"The event is not strict JSON: {exc}.", None)
    except (ValueError, RecursionError):
        # RecursionError: a deeply nested payload ("[[[[…") within the size cap. It
        # must not escape into aiortc's SCTP receive path, which it would kill.
        return Refusal("invalid_event", "The event is not valid JSON.", None)
    if not isinstance(event, dict):
        return Refusal("invalid_event", "The event must be a JSON object.", None)
    raw_id = event.get("event_id")
    event_id = raw_id[:MAX_ID_CHARS] if isinstance(raw_id, str) else None
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        return Refusal("invalid_event", "The 'type' field is missing.", event_id)
    if kind == SESSION_UPDATE:
        return _session_update(event, event_id)
    schema = SCHEMAS.get(kind)
    if kind not in allowed or schema is None:
        return Refusal("event_not_allowed", f"'{kind[:64]}' events are not accepted.", event_id)
    fields = {**_COMMON, **schema}
    for name in event:
        if name not in fields:
            return Refusal(
                "unknown_parameter", f"'{kind[:64]}' has no field '{name[:64]}'.", event_id
            )
    for name, spec in fields.items():
        if name not in event:
            if spec.required:
                return Refusal("missing_parameter", f"'{name}' is required.", event_id)
            continue
        if not spec.check(event[name]):
            return Refusal("invalid_value", f"'{name}' has an invalid value.", event_id)
    if _has_lone_surrogate(event):
        return Refusal(
            "invalid_event",
            "The event contains an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF); "
            "it is not valid Unicode.",
            event_id,
        )
    return event


def _session_update(event: dict[str, Any], event_id: str | None) -> SessionUpdate | Refusal:
    """Only the envelope is checked: the session it asks for is not applied (nor read)."""
    for name in event:
        if name not in ("type", "event_id", "session"):
            return Refusal(
                "unknown_parameter", f"'{SESSION_UPDATE}' has no field '{name[:64]}'.", event_id
            )
    if "session" in event and not isinstance(event["session"], dict):
        return Refusal("invalid_value", "'session' must be an object.", event_id)
    return SessionUpdate(event_id)
