"""Errors in OpenAI's shape on the OpenAI-compatible routes (``/v1/…``).

OpenAI's SDKs read ``{"error": {"message", "type", "code", "param"}}`` and raise their usual
exceptions by status (``AuthenticationError`` for 401, ``ConflictError`` for 409, …); they
take the request id from the ``X-Request-ID`` header (every answer of the relay carries
it), and retry 408, 409, 429 and 5xx unless ``x-should-retry`` says otherwise. So on these
routes the relay's error (relay.errors.ApiError) keeps its status, code and message and
``Retry-After``, says whether to retry in ``x-should-retry`` (a 409 for a call already
made is not worth retrying; a 503 while draining is), names the offending field in
``param`` when it knows it, and also carries ``request_id`` in the body, as the relay's
own errors do.
"""

from __future__ import annotations

from typing import Any

from relay.errors import ApiError

OPENAI_PREFIX = "/v1/"


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status (as the service names them)."""
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _param(exc: ApiError) -> str | None:
    param = exc.details.get("param")
    if isinstance(param, str):
        return param
    errors = exc.details.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        field = errors[0].get("field")
        return field if isinstance(field, str) else None
    return None


def openai_error_body(exc: ApiError, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": exc.message,
            "type": error_type(exc.status),
            "code": exc.code,
            "param": _param(exc),
        },
        "request_id": request_id,
    }


def openai_error_headers(exc: ApiError) -> dict[str, str]:
    headers = exc.headers()
    headers["x-should-retry"] = "true" if exc.retryable else "false"
    return headers
