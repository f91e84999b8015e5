"""Reading request bodies safely: size-capped, JSON objects only, clear 400/413."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay.errors import ApiError


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The raw body, refusing more than ``max_bytes`` (413) without reading it all."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16384):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(
    request: web.Request, max_bytes: int, *, allow_empty: bool = False
) -> dict[str, Any]:
    """A JSON object body; 400 ``invalid_json`` for anything else (413 when too large)."""
    raw = await read_body(request, max_bytes)
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


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"The request body exceeds {max_bytes} bytes.")
