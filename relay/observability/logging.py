"""Logging set-up: human-readable stage lines by default, JSON lines as a switch.

Stage lines follow the operators' grep habits, e.g.
``[req_…] DATABASE_QUERY_START - 150ms``. The request id comes from the request
context, so it is on every line logged while a request is being served.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Literal

from relay.observability.request_context import current, current_request_id


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
