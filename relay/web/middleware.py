"""HTTP middleware: request ids, timing, access metrics and JSON errors.

Every response carries ``X-Request-ID`` and ``Server-Timing`` (cache, db, upstream,
total; the exchange also answer and offer). Every error is JSON with the request id;
nothing below ever turns into a bare 500 with a traceback. Under ``/v1/`` (the
OpenAI-compatible routes) errors take OpenAI's shape (relay.web.openai_shape), so that
OpenAI's SDKs raise their usual exceptions.

Request ids are always the relay's own: ``req_<32 hex>``, unique by construction. A
client's ``X-Request-ID`` is never trusted to be unique (two clients, or one replaying,
could send the same value and mix their log lines and session rows); when it is well
formed (``^[A-Za-z0-9._-]{1,64}$``) it is kept as a suffix for correlation,
``req_<32 hex>.<client id>``, and otherwise ignored.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from relay.admission.service import database_error
from relay.cluster.resume import FORWARDED_BY_HEADER
from relay.config import DatabaseConfig
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.observability import error_tracking, request_context
from relay.observability.metrics import HTTP_BUCKETS, MetricsRegistry, bounded
from relay.web.openai_shape import is_openai_path, openai_error_body, openai_error_headers

log = logging.getLogger("relay.http")

# Our own ids: "req_" and 32 hex digits.
_OWN_ID_HEX_BYTES = 16
_OWN_ID_LENGTH = len("req_") + 2 * _OWN_ID_HEX_BYTES
# A client's own id, kept after ours (``<own>.<client's>``).
_CLIENT_ID_MAX = 64
_VALID_REQUEST_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{_CLIENT_ID_MAX}}}")
# A resume forwarded by another member comes with that member's id (its own, a dot, the
# client's): accepted at that length so that a client's long id still links the holder's
# log lines to the member the client reached (relay.cluster.resume, first_id).
_VALID_FORWARDED_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{_OWN_ID_LENGTH + 1 + _CLIENT_ID_MAX}}}")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def new_request_id() -> str:
    return "req_" + secrets.token_hex(_OWN_ID_HEX_BYTES)


def request_id_for(incoming: str | None, *, forwarded: bool = False) -> str:
    """Our id for a request, ending with the one it came with when that is well formed
    (``forwarded``: by another member, ``X-Relay-Forwarded-By``)."""
    own = new_request_id()
    valid = _VALID_FORWARDED_ID if forwarded else _VALID_REQUEST_ID
    # fullmatch: "$" would also accept a trailing newline.
    if incoming and valid.fullmatch(incoming):
        return f"{own}.{incoming}"
    return own


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


def make_middleware(
    metrics: MetricsRegistry, *, database_retry_after_s: int = DatabaseConfig().retry_after_s
) -> Middleware:
    """Request ids, timing, metrics, and every error as JSON. A database that stayed
    unavailable through the store's retries is the same answer on every route (503 with
    Retry-After: ``database.retry_after_s``), so handlers let ``DatabaseUnavailable`` rise."""
    requests_total = metrics.counter(
        "relay_http_requests_total",
        "HTTP requests by route, method and status",
        ["route", "method", "status"],
    )
    latency = metrics.histogram(
        "relay_http_request_duration_seconds",
        "HTTP handler latency by route template and method",
        ["route", "method"],
        buckets=HTTP_BUCKETS,
    )
    errors = metrics.counter(
        "relay_http_errors_total",
        "JSON error responses by status and error code (codes are the relay's own)",
        ["status", "code"],
    )
    errors.declare(status=("503",), code=("no_media_ports",))  # for RelayNoMediaPorts

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_id_for(
            request.headers.get("X-Request-ID"),
            forwarded=FORWARDED_BY_HEADER in request.headers,
        )
        token = request_context.begin(request_id)
        error_tracking.tag_request(request_id)
        ctx = request_context.current()
        assert ctx is not None
        error_code: str | None = None
        close_connection = False
        try:
            try:
                response = await handler(request)
            except ApiError as exc:
                error_code = exc.code
                response = _error_response(exc, request_id, request.path)
                close_connection = exc.close_connection
            except DatabaseUnavailable as exc:
                api = database_error(exc, database_retry_after_s)
                error_code = api.code
                response = _error_response(api, request_id, request.path)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                code = _HTTP_ERROR_CODES.get(exc.status, f"http_{exc.status}")
                api = ApiError(exc.status, code, exc.reason or code)
                error_code = code
                response = _error_response(api, request_id, request.path)
                for name in ("Allow", "Retry-After"):
                    if name in exc.headers:
                        response.headers[name] = exc.headers[name]
            except Exception:
                log.exception(
                    "[%s] unhandled error in %s %s", request_id, request.method, request.path
                )
                api = ApiError(
                    500, "internal_error", "Unexpected error; it has been logged.", retryable=True
                )
                error_code = api.code
                response = _error_response(api, request_id, request.path)
            response.headers["X-Request-ID"] = request_id
            response.headers["Server-Timing"] = ctx.server_timing()
            route = _route_name(request)
            method = bounded(request.method, _METHODS)
            requests_total.inc(route=route, method=method, status=response.status)
            latency.observe(ctx.elapsed_ms() / 1000, route=route, method=method)
            if error_code is not None:
                errors.inc(status=response.status, code=error_code)
            if close_connection:
                await _send_and_close(request, response)
            return response
        finally:
            request_context.end(token)

    return middleware


def _error_response(exc: ApiError, request_id: str, path: str) -> web.Response:
    if is_openai_path(path):
        return web.json_response(
            openai_error_body(exc, request_id), status=exc.status, headers=openai_error_headers(exc)
        )
    return web.json_response(exc.body(request_id), status=exc.status, headers=exc.headers())


async def _send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send the whole response now, then close the connection.

    For an error after which the connection cannot carry another request (a body still
    arriving). Marking the response ``Connection: close`` alone is not enough: aiohttp
    then keeps reading and discarding the rest of the body for up to its lingering time,
    which a client trickling bytes would fill. A response already sent is left as it is
    by aiohttp (its prepare and write_eof do nothing the second time).
    """
    response.force_close()
    with contextlib.suppress(ConnectionError):  # the client is gone already: nothing to send
        await response.prepare(request)
        await response.write_eof()
    transport = request.transport
    if transport is not None:
        transport.close()
