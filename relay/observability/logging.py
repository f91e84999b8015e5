"""Logging set-up: human-readable stage lines by default, JSON lines as a switch.

Stage lines follow the operators' grep habits, e.g.
``[req_…] DATABASE_QUERY_START - 150ms``. The request id (and, once a route
knows it, the session id) come from the request context, so they are on every line logged
while a request is served, and on the lines of the tasks it starts (the media bridge).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Literal

from relay.observability.request_context import current, current_request_id, current_session_id


class RequestContextFilter(logging.Filter):
    """Puts the request id and session id (``-`` when unknown) on every record, and a
    ``context`` suffix for the text format naming whichever of them the message lacks
    (the stage lines already start with ``[req_…]``; they stay as operators grep them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        session_id = current_session_id()
        record.request_id = request_id
        record.session_id = session_id or "-"
        message = record.getMessage()
        parts = []
        if request_id != "-" and request_id not in message:
            parts.append(f"request_id={request_id}")
        if session_id and session_id not in message:
            parts.append(f"session_id={session_id}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "session_id": getattr(record, "session_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def json_entry(logger: str, message: str) -> str:
    """``message`` as one line of the JSON log (an INFO entry of ``logger``): for what is
    printed rather than logged, so that a JSON log's reader parses every line."""
    record = logging.LogRecord(logger, logging.INFO, __file__, 0, message, None, None)
    return JsonFormatter().format(record)


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiortc/aioice are chatty at INFO (every ICE check); keep them at WARNING.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RequestBanner:
    """The START/END lines around one request of a main route; ``status`` set by the route."""

    def __init__(self, log: logging.Logger, title: str) -> None:
        self.log = log
        self.title = title
        self.status = 500


@contextlib.contextmanager
def request_banner(log: logging.Logger, title: str) -> Iterator[RequestBanner]:
    """``=== TITLE REQUEST START [req_…] ===`` … ``RESPONSE 201`` … ``END … Total: Nms``.

    The status is the route's ``banner.status`` on success, else the error's status.
    """
    request_id = current_request_id()
    log.info("=== %s REQUEST START [%s] ===", title, request_id)
    banner = RequestBanner(log, title)
    try:
        yield banner
    except Exception as exc:
        banner.status = getattr(exc, "status", 500)
        raise
    finally:
        ctx = current()
        total = ctx.elapsed_ms() if ctx else 0.0
        stage(log, f"RESPONSE {banner.status}", total)
        log.info("=== %s REQUEST END [%s] - Total: %.0fms ===", title, request_id, total)


def stage(log: logging.Logger, name: str, ms: float | None = None) -> None:
    """Log ``[req_…] NAME - 12ms`` (elapsed since the request began when ms is None)."""
    if ms is None:
        ctx = current()
        ms = ctx.elapsed_ms() if ctx else 0.0
    log.info("[%s] %s - %.0fms", current_request_id(), name, ms)
