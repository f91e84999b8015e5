"""Reading request bodies safely: size-capped, time-capped, JSON objects only, clear
400/408/413.

Limits come from ``server.*``: ``max_body_bytes`` (413, refused from Content-Length
before anything is read) and ``body_timeout_s``, counted from when the relay starts to read:
a client that sends its body with its headers is never near it, one that stalls or
trickles gets 408 ``body_timeout`` and the connection is closed (the rest of its body
would otherwise be read as the next request). Routes read the body only once the
caller is authenticated (relay.web.caller).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.errors import ApiError
from relay.services import SERVICES


async def read_body(request: web.Request, *, at_least: int = 0) -> bytes:
    """The raw body, refusing more than ``server.max_body_bytes`` (or ``at_least``, an
    operation's own floor, if larger) with a 413 without reading it all, and a body that
    takes longer than ``server.body_timeout_s`` to arrive (408)."""
    server = request.app[SERVICES].settings.server
    max_bytes = max(server.max_body_bytes, at_least)
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(server.body_timeout_s):
            async for chunk in request.content.iter_chunked(16384):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"The request body did not arrive within {server.body_timeout_s:g} s.",
            close_connection=True,
        ) from None
    return b"".join(chunks)


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """A JSON object body; 400 ``invalid_json`` for anything else (408/413 from read_body)."""
    return parse_json_object(await read_body(request), allow_empty=allow_empty)


def parse_json_object(raw: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """``raw`` as a JSON object; 400 ``invalid_json`` for anything else."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from exc
    except RecursionError:
        # A few kilobytes of brackets nest deeper than the interpreter's recursion limit:
        # the decoder gives up, the body is refused like any other malformed JSON.
        raise ApiError(400, "invalid_json", "The request body nests too deeply.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return data


Model = TypeVar("Model", bound=BaseModel)


def validate_json_object(model: type[Model], raw: bytes, *, allow_empty: bool = False) -> Model:
    """``raw``, a JSON object (400 ``invalid_json`` otherwise), as ``model``, taking JSON's
    types as they are: ``"yes"`` or ``1`` is not a boolean, ``"30"`` not a number (pydantic
    would convert them by default; a consent flag must be a real ``true``). Raises
    pydantic's ``ValidationError`` for the caller to shape."""
    if not raw.strip():
        parse_json_object(raw, allow_empty=allow_empty)  # 400 unless an empty body is allowed
        raw = b"{}"
    # Strict in JSON mode: JSON's own types only, and date-times as ISO 8601 strings. The
    # body is parsed once; json.loads reads it again only to word a refusal.
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        if not any(_unreadable(error) for error in errors):
            raise
        # Malformed, or not an object: refused as every JSON body is (parse_json_object).
        parse_json_object(raw)
        # json.loads took it: pydantic's parser refuses a little more (nesting deeper than
        # 200 levels, a lone surrogate). That is malformed JSON to the client, not a field.
        reason = next(str(e.get("msg", "")) for e in errors if e["type"] == "json_invalid")
        raise ApiError(
            400,
            "invalid_json",
            f"The request body is not valid JSON: {reason.removeprefix('Invalid JSON: ')}.",
        ) from None


def _unreadable(error: Mapping[str, Any]) -> bool:
    """A pydantic error about the body as a whole: not JSON, or not an object."""
    return error["type"] == "json_invalid" or (error["type"] == "model_type" and not error["loc"])


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"The request body exceeds {max_bytes} bytes.")
