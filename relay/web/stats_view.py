"""The JSON body of GET /api/stats: what the operator dashboard (/stats) draws.

Everything comes from the live objects and the same metrics registry that /metrics renders
(latency percentiles from each histogram's reservoir, counters as totals), so the two views
never disagree about what happened. E-mail addresses are masked here: the dashboard never
receives a full address.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from relay import __version__
from relay.media.udp import media_sockets
from relay.observability.masking import mask_email
from relay.observability.metrics import Counter, Histogram
from relay.services import Services
from relay.upstream.model_currency import check_models, worst_level

DB_PING_TIMEOUT_S = 0.5


def _quantiles(services: Services, name: str, **labels: Any) -> dict[str, Any]:
    metric = services.metrics.get(name)
    if not isinstance(metric, Histogram):
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "count": 0}
    out: dict[str, Any] = metric.quantiles_ms(**labels)
    out["count"] = metric.count(**labels) if set(labels) == set(metric.labelnames) else None
    return out


def _counter_rows(services: Services, name: str) -> list[dict[str, Any]]:
    metric = services.metrics.get(name)
    if not isinstance(metric, Counter):
        return []
    rows: list[dict[str, Any]] = metric.snapshot()
    return rows


def _cache(services: Services) -> dict[str, Any]:
    hits = misses = 0.0
    for row in _counter_rows(services, "relay_cache_lookups_total"):
        if row["result"] == "miss":
            misses += row["value"]
        else:
            hits += row["value"]
    total = hits + misses
    listener = services.cache_invalidation
    return {
        "redis": services.cache.redis_state,
        # Eviction of users changed in PostgreSQL: up, down, connecting, or disabled.
        "invalidation": listener.state if listener is not None else "disabled",
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / total, 4) if total else None,
    }


def _errors_by_code(services: Services) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in _counter_rows(services, "relay_http_errors_total"):
        if row["value"]:  # not a series declared at 0 for the alerts (relay.web.middleware)
            out[row["code"]] = out.get(row["code"], 0.0) + row["value"]
    return out


async def _database(services: Services) -> dict[str, Any]:
    state = "up"
    error = None
    try:
        await services.store.ping(timeout_s=DB_PING_TIMEOUT_S)
    except (Exception, asyncio.TimeoutError) as exc:  # any failure means unreachable
        state, error = "down", type(exc).__name__
    else:
        # Only a database that answers is waiting for migrations (as in /readyz).
        if not services.store.schema_ready:
            state, error = "down", "migrations_pending"
    return {
        "state": state,
        "error": error,
        "query": _quantiles(services, "relay_db_query_duration_seconds"),
    }


def _upstream(services: Services) -> dict[str, Any]:
    upstream = services.upstream
    # What the relay has seen of the upstream (relay/upstream/health.py), in the
    # dashboard's words: up; degraded (failures, still in rotation); down (readiness red);
    # unknown (nothing tried yet).
    health = services.upstream_health.report()
    state = {"ok": "up", "degraded": "degraded", "down": "down"}.get(
        health.get("state", "unknown"), "unknown"
    )
    last = health.get("last")
    body: dict[str, Any] = {
        "dialect": upstream.dialect,
        "model": upstream.model,
        "simulated": services.simulated,
        "state": state,
        "last_outcome": None
        if last is None
        else {"stage": last["stage"], "outcome": last["outcome"], "at": last["at"]},
        "mint": _quantiles(services, "relay_upstream_duration_seconds", stage="mint"),
        "sdp": _quantiles(services, "relay_upstream_duration_seconds", stage="sdp"),
    }
    # Configured models with an announced shutdown (relay/upstream/model_currency.py); the
    # dashboard shows the worst one's message.
    currencies = check_models(upstream.model, services.settings.upstream.transcription_model)
    body["model_currency"] = [c.to_json() for c in currencies]
    if currencies:
        worst = worst_level(currencies)
        body["model_warning"] = next(c.message for c in currencies if c.level == worst)
    return body


def _live_sessions(services: Services, now: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for entry in services.registry.live():
        row: dict[str, Any] = {
            "session_id": entry.session_id,
            "user": mask_email(entry.email),
            "state": entry.state,
            "age_s": round(now - entry.created_monotonic, 1),
        }
        if entry.bridge is not None:
            row["media"] = entry.bridge.stats()
        rows.append(row)
    return rows


def _recently_ended(services: Services) -> list[dict[str, Any]]:
    return [
        {
            "session_id": e.session_id,
            "user": mask_email(e.email),
            "state": e.state,
            "reason": e.reason,
            "duration_s": e.duration_s,
            "ended_at": round(e.ended_at, 3),
        }
        for e in reversed(services.sessions.recently_ended)
    ]


async def build_stats(services: Services, request_id: str) -> dict[str, Any]:
    now = time.monotonic()
    sessions = _live_sessions(services, now)
    by_state: dict[str, int] = {}
    for row in sessions:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    body: dict[str, Any] = {
        "instance": services.instance_id,
        # Which worker of `relay serve --workers N` answered (None: a single process). The
        # rest of this body is that worker's own view; /metrics covers every worker.
        "worker": (
            None
            if services.metrics.worker is None
            else {
                "index": services.metrics.worker,
                "pid": os.getpid(),
                "metrics_cover_all_workers": services.metrics.covers_all_workers,
            }
        ),
        "version": __version__,
        "time": round(time.time(), 3),
        "draining": services.drain.draining,
        "redis": services.cache.redis_state,
        "database": await _database(services),
        "cache": _cache(services),
        "upstream": _upstream(services),
        "upstream_health": services.upstream_health.report(operator=True),
        "admission": _quantiles(services, "relay_admission_duration_seconds"),
        "media_connect": _quantiles(services, "relay_media_connect_duration_seconds"),
        # How the media sockets are read (relay.media.udp): datagrams per wake-up.
        "media_receive": media_sockets(asyncio.get_running_loop()).snapshot(),
        # Which aiortc/aioice adaptations are in use, and for each one fallen back to
        # aiortc's own path, the missing names (relay.media.capabilities).
        "media_capabilities": services.bridges.capabilities.to_json(),
        "errors_by_code": _errors_by_code(services),
        "process": {
            **services.loop_monitor.snapshot(),
            # For leak checks (bench/shipped.py --cycles): live asyncio tasks and threads.
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            # "uvloop" or "asyncio" (server.event_loop; relay.event_loop).
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        },
        "sessions_by_state": by_state,
        "sessions": sessions,
        "recently_ended": _recently_ended(services),
        "metrics": services.metrics.snapshot(),
        "request_id": request_id,
    }
    # Recordings (design §7): the dashboard renders this list (id, session_id, status,
    # duration_s, bytes, created_at).
    body["recordings"] = await services.recordings_summary()
    return body
