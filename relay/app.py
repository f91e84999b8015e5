"""Builds the aiohttp application and owns the start-up and shut-down order.

Start-up (each step needs the ones before it):
  1. database: the configured DATABASE_URL, or an embedded PostgreSQL under data_dir;
     the pool is created without connecting, then migrations, warm-up and crash
     recovery run (in the background if the database is not reachable yet);
  2. the user cache (Redis if configured, always the local fallback);
  3. the upstream client (the built-in simulator when no API key is set);
  4. admission, the session registry and service, the media bridges;
  5. housekeeping (expiring unused sessions).
Shut-down is the reverse; live bridges are hung up and their sessions finished before
the database goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import backoff
from aiohttp import web

from relay.admission.cache import UserCache
from relay.admission.service import Admission
from relay.admission.store import RETRYABLE_ERRORS, Store
from relay.cluster.setup import start_cluster
from relay.config import Settings
from relay.media.manager import BridgeManager
from relay.observability.metrics import MetricsRegistry
from relay.services import SERVICES, Services
from relay.sessions.registry import SessionRegistry
from relay.sessions.service import SessionService
from relay.upstream.factory import build_upstream_client
from relay.web import (
    routes_bridge,
    routes_cluster,
    routes_health,
    routes_operator,
    routes_session,
)
from relay.web.middleware import make_middleware

log = logging.getLogger("relay.app")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Read once at import: the page's files are fixed, and listing them here keeps file-system
# calls off the event loop and makes path traversal impossible by construction.
STATIC_FILES = (
    frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())
    if STATIC_DIR.is_dir()
    else frozenset()
)
SIMULATOR_API_KEY = "sk-sim-local"
HOUSEKEEPING_INTERVAL_S = 5.0
# Slack added to the longest possible session before a live row counts as abandoned.
STALE_GRACE_S = 600

OPERATOR_TOKEN = web.AppKey("operator_token_generated", str)


def create_app(settings: Settings, *, instance_id: str | None = None) -> web.Application:
    metrics = MetricsRegistry()
    app = web.Application(
        middlewares=[make_middleware(metrics)],
        # Our own readers enforce server.max_body_bytes with a JSON 413; this is a backstop.
        client_max_size=settings.server.max_body_bytes,
    )
    app.cleanup_ctx.append(_lifecycle(settings, metrics, instance_id))
    routes_session.register(app)
    routes_bridge.register(app)
    routes_health.register(app)
    routes_operator.register(app)
    routes_cluster.register(app)
    if "index.html" in STATIC_FILES:
        app.router.add_get("/", _index)
        app.router.add_get("/static/{name}", _static_file)
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name)


def _lifecycle(
    settings: Settings, metrics: MetricsRegistry, instance_id: str | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            services = await _start(settings, metrics, instance_id, stack)
            app[SERVICES] = services
            yield
            log.info("shutting down")

    return ctx


async def _start(
    settings: Settings,
    metrics: MetricsRegistry,
    instance_id: str | None,
    stack: contextlib.AsyncExitStack,
) -> Services:
    # 1. database
    dsn = settings.database.url
    if not dsn:
        from relay.admission.embedded_pg import start_embedded_postgres

        embedded = await asyncio.to_thread(start_embedded_postgres, settings.data_path)
        stack.push_async_callback(asyncio.to_thread, embedded.stop)
        dsn = embedded.dsn
        log.info("embedded PostgreSQL running under %s", settings.data_path)
    store = Store(dsn, settings.database, metrics)
    await store.open()
    stack.push_async_callback(store.close)
    instance = instance_id or f"{socket.gethostname()}:{settings.server.port}"
    bootstrap = asyncio.create_task(
        _bootstrap_database(store, instance, settings, started_at=datetime.now(UTC))
    )
    stack.push_async_callback(_cancel, bootstrap)
    # Give the database a moment so a healthy start is fully ready when serving begins.
    await asyncio.wait({bootstrap}, timeout=settings.database.connect_timeout_s)

    # 2. cache
    cache = UserCache(settings.cache, metrics)
    stack.push_async_callback(cache.close)

    # 3. upstream
    api_key = settings.upstream.api_key
    base_url = settings.upstream.base_url
    simulator = None
    if not api_key:
        from relay.upstream.simulator.options import SimulatorOptions
        from relay.upstream.simulator.server import start_simulator

        # The simulator's peers share this process's ICE settings (aioice's host-address
        # choice is process-wide), so it must use the relay's, not its defaults.
        simulator = await start_simulator(
            host="127.0.0.1", port=0, options=SimulatorOptions(ice=settings.ice)
        )
        stack.push_async_callback(simulator.close)
        api_key, base_url = SIMULATOR_API_KEY, simulator.base_url
        log.info("no OPENAI_API_KEY: using the built-in simulator at %s", base_url)
    upstream = build_upstream_client(settings, metrics, base_url=base_url, api_key=api_key)
    stack.push_async_callback(upstream.close)

    # 4. admission, sessions, media
    token = settings.server.operator_token or secrets.token_urlsafe(24)
    services_ref: list[Services] = []
    admission = Admission(settings, store, cache, metrics)
    registry = SessionRegistry(settings.limits, metrics)
    sessions = SessionService(
        settings,
        admission=admission,
        store=store,
        registry=registry,
        upstream=upstream,
        metrics=metrics,
        instance_id=instance,
        is_draining=lambda: bool(services_ref and services_ref[0].draining),
    )
    services = Services(
        settings=settings,
        metrics=metrics,
        instance_id=instance,
        store=store,
        cache=cache,
        admission=admission,
        registry=registry,
        upstream=upstream,
        sessions=sessions,
        operator_token_hash=hashlib.sha256(token.encode()).hexdigest(),
        simulator=simulator,
        generated_operator_token=None if settings.server.operator_token else token,
    )
    services_ref.append(services)
    # Shared pending sessions, shared limits, heartbeat and commands (relay.cluster).
    await start_cluster(services, stack)
    # Runs after the bridges have closed (the stack unwinds in reverse): whatever is still
    # registered (e.g. sessions minted but never exchanged) is closed in the database.
    stack.push_async_callback(sessions.finish_all, "relay_shutdown")
    bridges = BridgeManager(services)
    services.bridges = bridges
    stack.push_async_callback(bridges.close_all)

    # 5. housekeeping
    housekeeping = asyncio.create_task(_housekeeping(sessions))
    stack.push_async_callback(_cancel, housekeeping)
    return services


async def _bootstrap_database(
    store: Store, instance: str, settings: Settings, *, started_at: datetime
) -> None:
    """Migrate, warm and recover; retried until the database answers."""
    # No session can be live for longer than this; older live rows belong to dead relays.
    stale_after_s = settings.session.max_duration_s + settings.session.pending_ttl_s + STALE_GRACE_S

    @backoff.on_exception(backoff.expo, RETRYABLE_ERRORS, max_value=10, logger=None)
    async def attempt() -> None:
        await store.migrate()
        warmed = await store.warm()
        recovered = await store.recover_abandoned_sessions(
            instance, started_before=started_at, stale_after_s=stale_after_s
        )
        log.info("database ready: %d warm connections", warmed)
        if recovered:
            log.warning("closed %d sessions left live by a previous run", recovered)

    await attempt()


async def _housekeeping(sessions: SessionService) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        try:
            await sessions.expire_pending()
            await sessions.retry_unwritten()
        except Exception:  # housekeeping must never die; the next round retries
            log.exception("housekeeping failed")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
