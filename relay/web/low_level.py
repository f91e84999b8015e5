"""Errors aiohttp answers before any route or middleware runs (malformed HTTP).

A request aiohttp cannot parse (garbage on the port, a bad request line, oversized
headers) never reaches the middleware: aiohttp answers it itself with a ``text/plain``
body and logs the parser's exception with a traceback at ERROR, once per request, which
lets anyone on the network fill the error log. Here:

* **logging**: the connection handler's logger (aiohttp's public ``handler_args``
  ``logger`` option) is wrapped: a parse error (``HttpProcessingError``) becomes one INFO
  line without a traceback and a counter; anything else keeps aiohttp's ERROR + traceback;
* **request id**: that line and the response carry the same one. aiohttp logs the error
  before it builds the response, both in the task it runs that one request in (its own
  copy of the context: #3406), so the logger opens a request context with a fresh id and
  the response takes the id from it;
* **body**: the error response is rewritten, just before its headers go out, into the
  relay's JSON error shape with that request id and the security headers. aiohttp has
  no public hook for this: its protocol builds such requests through the application's
  request factory (``Application._make_request``, which takes the request class as
  ``_cls``) and calls ``Request._prepare_hook`` right before writing the headers; a
  request that never got routed has ``_match_info`` None. These three private names are
  used here only, with aiohttp pinned exactly, and tests/unit/test_low_level_http.py
  guards them;
* **slow clients**: a connection gets ``server.header_timeout_s`` to deliver a request
  line and headers. aiohttp 3.14 has no read timeout for them, but its public
  ``keepalive_timeout`` handler option is one: the timer starts when the connection opens
  (and again after each response), is not pushed back by arriving bytes, and closes the
  connection if the handler is still waiting for a complete request when it fires. So
  it bounds a silent connection, a trickled request line or headers, and an idle
  keep-alive connection alike. A body is the handler's to read, within its own deadline
  (relay.web.body); one the handler never reads is drained by aiohttp for at most its
  ``lingering_time`` (10 s) after the response, then the connection is closed.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from relay.config import ServerConfig
from relay.errors import ApiError
from relay.observability import request_context
from relay.observability.metrics import Counter, MetricsRegistry
from relay.web.middleware import new_request_id
from relay.web.security_headers import apply_security_headers

log = logging.getLogger("relay.http.malformed")


class _ProtocolLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-handler logger, with parse errors turned into one INFO line."""

    def __init__(self, counter: Counter) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._counter = counter

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._parse_error(kwargs.get("exc_info")):
            super().exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        # aiohttp logs a first request with a bad method (TLS on the HTTP port) at DEBUG.
        if not self._parse_error(kwargs.get("exc_info")):
            super().debug(msg, *args, **kwargs)

    def _parse_error(self, exc: object) -> bool:
        if not isinstance(exc, HttpProcessingError):
            return False
        self._counter.inc()
        # The id the 400 will carry (_as_json_error), on this line too. No end(): the
        # context is this request's task's own and goes with it (module docstring).
        request_context.begin(new_request_id())
        # The parser's message names what was wrong; never the whole request.
        reason = (exc.message or type(exc).__name__).splitlines()[0][:200]
        log.info("malformed HTTP request (%s %s): %s", exc.code, type(exc).__name__, reason)
        return True


class _LowLevelAwareRequest(web.Request):
    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if self._match_info is None and isinstance(response, web.Response):
            _as_json_error(response)
        await super()._prepare_hook(response)


def _as_json_error(response: web.Response) -> None:
    status = response.status
    code = "bad_request" if status == 400 else f"http_{status}"
    message = "Malformed HTTP request." if status < 500 else "Unexpected error."
    # The id the log line of a parse error has (_ProtocolLogger), else a fresh one.
    request_id = request_context.current_request_id()
    if request_id == "-":
        request_id = new_request_id()
    body = json.dumps(ApiError(status, code, message).body(request_id)).encode()
    response.body = body
    response.content_type = "application/json"
    response.headers["Content-Length"] = str(len(body))
    response.headers["X-Request-ID"] = request_id
    # What the middleware gives every other response: a JSON answer is never cached, and
    # Server-Timing is there (no stage ran: the request never reached a handler).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Server-Timing"] = "total;dur=0.0"
    apply_security_headers(response.headers)


def handler_args(metrics: MetricsRegistry, server: ServerConfig) -> dict[str, Any]:
    """For ``web.Application(handler_args=...)``: the connection handler's logger and the
    header deadline."""
    counter = metrics.counter(
        "relay_http_malformed_requests_total", "Requests aiohttp could not parse (400)"
    )
    return {"logger": _ProtocolLogger(counter), "keepalive_timeout": server.header_timeout_s}


def install(app: web.Application) -> None:
    """Call on a new application, before it is frozen (create_app does)."""
    app._make_request = functools.partial(  # type: ignore[method-assign]
        app._make_request, _cls=_LowLevelAwareRequest
    )
