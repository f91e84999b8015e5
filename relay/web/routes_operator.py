"""Operator endpoints: GET /api/stats (JSON) and GET /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from aiohttp import web

from relay.observability.request_context import current_request_id
from relay.services import SERVICES
from relay.web.auth import require_operator


async def stats(request: web.Request) -> web.Response:
    require_operator(request)
    services = request.app[SERVICES]
    sessions: list[dict[str, Any]] = []
    for entry in services.registry.live():
        row: dict[str, Any] = {
            "session_id": entry.session_id,
            "state": entry.state,
            "age_s": round(time.monotonic() - entry.created_monotonic, 1),
        }
        bridge_stats = getattr(entry.bridge, "stats", None)
        if callable(bridge_stats):
            row["media"] = bridge_stats()
        sessions.append(row)
    body = {
        "instance": services.instance_id,
        "draining": services.draining,
        "redis": services.cache.redis_state,
        "upstream": {
            "dialect": services.upstream.dialect,
            "model": services.upstream.model,
            "simulated": services.simulator is not None,
        },
        "sessions": sessions,
        # For leak checks (bench/shipped.py --cycles): live asyncio tasks and threads.
        "process": {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count()},
        "metrics": services.metrics.snapshot(),
        "request_id": current_request_id(),
    }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    require_operator(request)
    text = request.app[SERVICES].metrics.render_prometheus()
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def register(app: web.Application) -> None:
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/metrics", metrics)
