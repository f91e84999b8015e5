"""The one error type every layer raises and the HTTP layer renders as JSON.

``{"error": {"code", "message", "retryable", ...}, "request_id": "req_…"}`` with the
right status and headers (Retry-After on 429/503). Routes and services raise
``ApiError``; the error middleware renders it and never leaks a traceback.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_s: int | None = None,
        details: dict[str, Any] | None = None,
        close_connection: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        # Extra fields merged into the "error" object (e.g. upstream_status).
        self.details = details or {}
        # The connection cannot carry another request (e.g. part of a body is still to
        # come): the response says "Connection: close" and the connection is closed.
        self.close_connection = close_connection
        # Headers the answer needs besides Retry-After (a 416's Content-Range).
        self.extra_headers = extra_headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        error.update(self.details)
        return {"error": error, "request_id": request_id}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return dict(self.extra_headers)
        return {**self.extra_headers, "Retry-After": str(self.retry_after_s)}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)
