"""GET /healthz (the process is alive) and GET /readyz (it can take new interviews)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.errors import ApiError
from relay.observability.request_context import current_request_id
from relay.services import SERVICES
from relay.upstream.model_currency import check_models, worst_level

# For a failing check without its own configured Retry-After (start-up).
DEFAULT_RETRY_AFTER_S = 5


async def healthz(request: web.Request) -> web.Response:
    failure = request.app[SERVICES].startup.failure
    if failure is not None:
        # Start-up gave up (out of attempts, or an error no retry fixes): this process will
        # never be ready, and a restart is the next attempt. Failing liveness is what makes
        # an orchestrator restart it (Kubernetes' livenessProbe; Docker marks it unhealthy);
        # while the bootstrap still retries, or the database is down later, it stays 200.
        raise ApiError(
            503,
            "startup_failed",
            f"Start-up failed and will not be retried: {failure}. Restart the relay.",
        )
    return web.json_response({"status": "ok", "request_id": current_request_id()})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, dict[str, Any]] = {}
    try:
        await services.store.ping(timeout_s=1.0)
        checks["database"] = {"ok": True}
    except Exception as exc:  # any failure means "not reachable"; say which kind
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    startup = services.startup
    if not services.store.schema_ready and checks["database"]["ok"]:
        # Only a database that answers is waiting for migrations; one that does not is
        # named by the ping's error above (a timeout, a refused connection).
        checks["database"] = {"ok": False, "error": "migrations_pending"}
    if startup.database_last_error is not None:
        # The bootstrap is retrying (or gave up): which step failed, how, how many tries.
        checks["database"]["bootstrap"] = {
            "attempts": startup.database_attempts,
            "max_attempts": startup.database_max_attempts,
            "last_error": startup.database_last_error,
        }
    if startup.failure is not None:
        # Will not fix itself: start-up gave up on a step (details in the log).
        checks["startup"] = {"ok": False, "error": startup.failure}
    # Which model, dialect or simulator is in use is operator information (/api/stats);
    # what the relay has seen of the upstream is not (relay/upstream/health.py). A
    # deprecated model is flagged here by level and date only. Readiness is kept even after
    # the announced shutdown date: the table may be older than the service (shutdowns get
    # postponed) and a date alone must not take down a deployment that still works; the
    # upstream's own refusal shows in the sessions and in `relay doctor`.
    upstream_check: dict[str, Any] = dict(services.upstream_health.report())
    currencies = check_models(
        services.upstream.model, services.settings.upstream.transcription_model
    )
    level = worst_level(currencies)
    if level is not None:
        upstream_check["warning"] = {
            "code": "model_deprecated" if level != "error" else "model_shut_down",
            "level": level,
            "shutdown": min(c.shutdown for c in currencies).isoformat(),
        }
    checks["upstream"] = upstream_check
    # Redis is optional: when down the local cache serves, so readiness is kept and the
    # state reported.
    # Likewise the listener evicting users changed in PostgreSQL: while down, cached users
    # are kept only for cache.hit_ttl_without_listener_s.
    listener = services.cache_invalidation
    checks["cache"] = {
        "ok": True,
        "redis": services.cache.redis_state,
        "invalidation": listener.state if listener is not None else "disabled",
    }
    checks["draining"] = {"ok": not services.drain.draining}
    failing = [name for name, check in checks.items() if not check["ok"]]
    body: dict[str, Any] = {
        "status": "ready" if not failing else "unavailable",
        "checks": checks,
        "request_id": current_request_id(),
    }
    if not failing:
        return web.json_response(body)
    body["error"] = {
        "code": "not_ready",
        "message": "Not ready: " + ", ".join(failing),
        # A start-up failure needs an operator, not a retry.
        "retryable": services.startup.failure is None,
    }
    settings = services.settings
    retry_after = {
        "database": settings.database.retry_after_s,
        "upstream": services.upstream_health.retry_after_s,
        "draining": settings.server.drain_retry_after_s,
    }
    seconds = max(retry_after.get(name, DEFAULT_RETRY_AFTER_S) for name in failing)
    return web.json_response(body, status=503, headers={"Retry-After": str(seconds)})


def register(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
