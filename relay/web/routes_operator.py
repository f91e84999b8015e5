"""Operator endpoints: GET /api/stats (JSON), GET /metrics (Prometheus text) and
GET /stats (the dashboard page; its data comes from /api/stats with the operator token)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from relay.observability.request_context import current_request_id
from relay.services import SERVICES
from relay.web.api import Api, Operation, Response
from relay.web.caller import require_operator
from relay.web.routes_cluster import OPERATOR_ERRORS, cluster_stats
from relay.web.schemas import Stats, StatsQuery
from relay.web.stats_view import build_stats

DASHBOARD = Path(__file__).resolve().parent.parent.parent / "static" / "stats.html"


async def stats(request: web.Request) -> web.Response:
    await require_operator(request)
    if request.query.get("scope") == "cluster":
        return await cluster_stats(request)
    body = await build_stats(request.app[SERVICES], current_request_id())
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    await require_operator(request)
    # Rendering runs the process collector, which reads /proc: off the event loop.
    text = await asyncio.to_thread(request.app[SERVICES].metrics.render_prometheus)
    return web.Response(
        body=text,
        headers={
            "Content-Type": CONTENT_TYPE_LATEST,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def dashboard(request: web.Request) -> web.FileResponse:
    # The page holds no data: it asks /api/stats with the token the operator types in. Its
    # Content-Security-Policy and the other security headers are the relay-wide ones
    # (relay.web.security_headers, set on every response as it is prepared).
    return web.FileResponse(DASHBOARD, headers={"Cache-Control": "no-store"})


def register(api: Api, app: web.Application) -> None:
    api.add(
        Operation(
            "GET",
            "/api/stats",
            "getStats",
            "This member's live view, or every member's (scope=cluster)",
            auth="operator",
            tag="operator",
            raw=stats,
            query=StatsQuery,
            responses=(Response(200, "The dashboard's data.", Stats),),
            errors=OPERATOR_ERRORS,
        )
    )
    # Outside the JSON API: Prometheus text and the dashboard page.
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", dashboard)
