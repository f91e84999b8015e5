"""OpenAI-shaped HTTP errors: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

INVALID_OFFER_MESSAGE = "Invalid SDP offer. Please try again with a WHIP-compliant offer."
BETA_DISABLED_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)


def error_type_for(status: int) -> str:
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class SimHttpError(Exception):
    """An error reply; raised anywhere below a handler, rendered by the app's middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or error_type_for(status)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def retry_headers(retry_after_s: float) -> dict[str, str]:
    """The retry hints OpenAI's SDKs honour (``retry-after`` in whole seconds, rounded up)."""
    return {
        "retry-after": str(max(0, math.ceil(retry_after_s))),
        "retry-after-ms": str(max(0, round(retry_after_s * 1000))),
    }


def forced_error(
    status: int, code: str | None, retry_after_s: float, should_retry: bool | None = None
) -> SimHttpError:
    """The reply of a forced-status fault, shaped like OpenAI's for that status."""
    headers = retry_headers(retry_after_s) if status == 429 or status >= 500 else {}
    if should_retry is not None:
        headers["x-should-retry"] = "true" if should_retry else "false"
    if status == 429:
        message = "Rate limit reached for requests. Please try again later."
        code = code or "rate_limit_exceeded"
    elif status >= 500:
        message = (
            "The server had an error while processing your request. Sorry about that! "
            "You can retry your request."
        )
        code = code or "server_error"
    else:
        message = f"Simulated error (HTTP {status})."
    return SimHttpError(status, message, code=code, headers=headers)


def invalid_request(message: str, *, code: str, param: str | None = None) -> SimHttpError:
    return SimHttpError(400, message, code=code, param=param)


def unknown_parameter(param: str) -> SimHttpError:
    return invalid_request(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)


def missing_parameter(param: str) -> SimHttpError:
    return invalid_request(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def invalid_value(param: str, message: str) -> SimHttpError:
    return invalid_request(
        f"Invalid value for '{param}': {message}", code="invalid_value", param=param
    )


def invalid_offer(detail: str) -> SimHttpError:
    return invalid_request(f"{INVALID_OFFER_MESSAGE} ({detail})", code="invalid_offer")


def invalid_api_key(message: str) -> SimHttpError:
    return SimHttpError(401, message, code="invalid_api_key")


def model_not_found(model: str) -> SimHttpError:
    """``GET /v1/models/{model}`` for a model the key cannot use."""
    return SimHttpError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
    )


def unsupported_model(model: str, param: str) -> SimHttpError:
    """A realtime request naming a model the service does not serve (to this key)."""
    return invalid_request(
        f"Invalid value: '{model}'. The model does not exist, is not a Realtime model, or "
        "you do not have access to it.",
        code="invalid_value",
        param=param,
    )


def beta_disabled() -> SimHttpError:
    return invalid_request(BETA_DISABLED_MESSAGE, code="beta_api_shape_disabled")


def call_not_found() -> SimHttpError:
    return SimHttpError(404, "No session found for the provided call_id", code="call_id_not_found")
