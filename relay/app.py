"""Builds the aiohttp application and owns the start-up and shut-down order.

Start-up (each step needs the ones before it):
  1. database: the configured DATABASE_URL, or an embedded PostgreSQL under data_dir;
     the pool is created without connecting, then migrations, warm-up and crash
     recovery run (in the background, retried a bounded number of times:
     relay.db.bootstrap);
  2. the user cache (Redis if configured, always the local fallback) and the listener
     that evicts users changed in PostgreSQL from it (relay.admission.invalidation);
  3. the upstream client (the built-in simulator when asked for, or without an API key
     on a loopback host: relay.upstream.simulation; it runs as a child process of the
     relay, ready before the relay serves: relay.upstream.simulator_process);
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
import platform
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from relay import __version__
from relay.admission.cache import UserCache
from relay.admission.invalidation import CacheInvalidationListener
from relay.admission.service import Admission
from relay.admission.users import UserRows
from relay.cluster.setup import start_cluster
from relay.config import ConfigError, Settings
from relay.db import Store
from relay.db.bootstrap import BootstrapFailed, StartupStatus, bootstrap_database
from relay.media.ephemeral_ports import ephemeral_overlap
from relay.media.event_schema import unknown_types
from relay.media.manager import BridgeManager
from relay.memory import GcPauseMeter, MemoryKeeper, freeze_startup_objects
from relay.observability.loop_monitor import LoopMonitor
from relay.observability.metrics import MetricsRegistry
from relay.recording import consent
from relay.recording.service import RecordingService
from relay.services import SERVICES, Services
from relay.sessions.registry import SessionRegistry
from relay.sessions.rows import SessionRows, abandoned_after_s
from relay.sessions.service import SessionService
from relay.tasks import cancel_and_wait, spawn
from relay.upstream.factory import build_upstream_client
from relay.upstream.health import MonitoredUpstream, UpstreamHealth
from relay.upstream.model_currency import check_models
from relay.upstream.simulation import uses_simulator
from relay.upstream.simulator_process import (
    SIMULATOR_API_KEY,
    SimulatorProcess,
    simulator_spec,
    start_simulator_process,
)
from relay.web import (
    caller,
    low_level,
    routes_bridge,
    routes_cluster,
    routes_health,
    routes_operator,
    routes_recordings,
    routes_session,
    security_headers,
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
HOUSEKEEPING_INTERVAL_S = 5.0

OPERATOR_TOKEN = web.AppKey("operator_token_generated", str)


def create_app(
    settings: Settings, *, instance_id: str | None = None, worker: int | None = None
) -> web.Application:
    """The relay. ``worker``: its index when it is a worker of ``relay serve --workers N``
    (its /metrics then covers every worker: relay.observability.worker_metrics)."""
    unchecked = unknown_types(settings.events.browser_allowed)
    if unchecked:
        # Forwarding is only as safe as the check: a type without a schema is never allowed.
        raise ConfigError(f"events.browser_allowed: no schema for {', '.join(unchecked)}")
    simulate = uses_simulator(settings)
    metrics = MetricsRegistry(worker=worker)
    metrics.build_info(
        version=__version__,
        python=platform.python_version(),
        dialect=settings.upstream.dialect,
    )
    app = web.Application(
        middlewares=[make_middleware(metrics)],
        # Our own readers enforce server.max_body_bytes with a JSON 413; this is a backstop.
        client_max_size=settings.server.max_body_bytes,
        handler_args=low_level.handler_args(metrics, settings.server),
    )
    low_level.install(app)
    security_headers.install(app)
    caller.install(app, settings.limits)
    app.cleanup_ctx.append(_lifecycle(settings, metrics, instance_id, simulate))
    routes_session.register(app, settings.limits, metrics)
    routes_bridge.register(app)
    routes_health.register(app)
    routes_operator.register(app)
    routes_recordings.register(app)
    consent.register(app)
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
    settings: Settings, metrics: MetricsRegistry, instance_id: str | None, simulate: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            services = await _start(settings, metrics, instance_id, stack, simulate=simulate)
            app[SERVICES] = services
            if settings.server.gc_freeze:
                frozen = freeze_startup_objects()
                log.debug("%d start-up objects frozen out of garbage collection", frozen)
            yield
            log.info("shutting down")

    return ctx


async def _start(
    settings: Settings,
    metrics: MetricsRegistry,
    instance_id: str | None,
    stack: contextlib.AsyncExitStack,
    *,
    simulate: bool,
) -> Services:
    # 1. database
    dsn = settings.database.url
    if not dsn:
        from relay.db.embedded_pg import start_embedded_postgres

        embedded = await asyncio.to_thread(start_embedded_postgres, settings.data_path)
        stack.push_async_callback(asyncio.to_thread, embedded.stop)
        dsn = embedded.dsn
        log.info("embedded PostgreSQL running under %s", settings.data_path)
    store = Store(dsn, settings.database, metrics)
    await store.open()
    stack.push_async_callback(store.close)
    instance = instance_id or f"{socket.gethostname()}:{settings.server.port}"
    users = UserRows(store)
    session_rows = SessionRows(store)
    startup = StartupStatus()
    started_at = datetime.now(UTC)

    async def recover_sessions() -> None:
        recovered = await session_rows.recover_abandoned_sessions(
            instance,
            started_before=started_at,
            stale_after_s=abandoned_after_s(settings.session),
        )
        if recovered:
            log.warning("closed %d sessions left live by a previous run", recovered)

    def bootstrap_failed(exc: BaseException) -> None:
        # Not retryable (a migration error, missing permissions) or out of attempts: logged
        # by spawn, and /readyz stays red with the reason until an operator fixes it and
        # restarts.
        if isinstance(exc, BootstrapFailed):
            startup.failure = exc.reason
        else:
            startup.failure = f"database_bootstrap: {type(exc).__name__}"

    bootstrap = spawn(
        bootstrap_database(store, settings.database, startup, recover=recover_sessions),
        name="database-bootstrap",
        log=log,
        on_failure=bootstrap_failed,
    )
    stack.push_async_callback(cancel_and_wait, bootstrap)
    # Give the database a moment so a healthy start is fully ready when serving begins.
    await asyncio.wait({bootstrap}, timeout=settings.database.connect_timeout_s)

    # 2. cache, and its invalidation by the database (closed before the cache)
    cache = UserCache(settings.cache, metrics)
    stack.push_async_callback(cache.close)
    invalidation = None
    if settings.cache.invalidate_from_database:
        invalidation = CacheInvalidationListener(
            dsn,
            cache,
            metrics,
            member=instance,
            check_interval_s=settings.cluster.heartbeat_interval_s,
            connect_timeout_s=settings.database.connect_timeout_s,
            schema_ready=store.wait_schema_ready,
        )
        invalidation.start()
        stack.push_async_callback(invalidation.close)

    # 3. upstream
    api_key, base_url, simulator = await _upstream_endpoint(settings, stack, simulate=simulate)
    upstream_health = UpstreamHealth(settings.upstream, metrics)
    upstream = MonitoredUpstream(
        build_upstream_client(settings, metrics, base_url=base_url, api_key=api_key),
        upstream_health,
    )
    stack.push_async_callback(upstream.close)
    _log_model_currency(upstream.model, settings.upstream.transcription_model)

    # 4. admission, sessions, media
    token = settings.server.operator_token or secrets.token_urlsafe(24)
    services_ref: list[Services] = []
    admission = Admission(settings, users, cache, metrics)
    registry = SessionRegistry(settings.limits, metrics)
    sessions = SessionService(
        settings,
        admission=admission,
        rows=session_rows,
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
        users=users,
        session_rows=session_rows,
        cache=cache,
        admission=admission,
        registry=registry,
        upstream=upstream,
        sessions=sessions,
        operator_token_hash=hashlib.sha256(token.encode()).hexdigest(),
        simulator=simulator,
        simulated=simulate,
        generated_operator_token=None if settings.server.operator_token else token,
        startup=startup,
        upstream_health=upstream_health,
        cache_invalidation=invalidation,
    )
    services_ref.append(services)
    # Shared pending sessions, shared limits, heartbeat and commands (relay.cluster).
    await start_cluster(services, stack)
    # Runs after the bridges have closed (the stack unwinds in reverse): whatever is still
    # registered (e.g. sessions minted but never exchanged) is closed in the database.
    stack.push_async_callback(sessions.finish_all, "relay_shutdown")
    # Closed after the bridges (the stack unwinds in reverse), so their recordings finalise.
    recordings = RecordingService(settings, store, instance, metrics)
    services.recordings = recordings
    services.recordings_summary = recordings.summary
    recordings.start()
    stack.push_async_callback(recordings.close)
    bridges = BridgeManager(services)
    services.bridges = bridges
    overlap = await asyncio.to_thread(
        ephemeral_overlap, settings.ice.udp_port_min, settings.ice.udp_port_max
    )
    if overlap is not None:
        log.warning("%s", overlap)
    stack.push_async_callback(bridges.close_all)

    # 5. housekeeping, and the event-loop/CPU monitor the dashboard charts
    housekeeping = spawn(_housekeeping(sessions), name="housekeeping", log=log)
    stack.push_async_callback(cancel_and_wait, housekeeping)
    gc_pauses = GcPauseMeter(metrics)
    gc_pauses.install()
    stack.callback(gc_pauses.remove)
    services.memory = MemoryKeeper(settings.server.memory_release_delay_s)
    stack.push_async_callback(services.memory.close)
    services.loop_monitor = LoopMonitor(metrics, gc_pauses)
    monitor = spawn(services.loop_monitor.run(), name="loop-monitor", log=log)
    stack.push_async_callback(cancel_and_wait, monitor)
    return services


async def _upstream_endpoint(
    settings: Settings, stack: contextlib.AsyncExitStack, *, simulate: bool
) -> tuple[str, str, SimulatorProcess | None]:
    """The upstream's API key and base URL, and the simulator process this relay started
    as its upstream (None: OpenAI, or a shared simulator); its end is on ``stack``."""
    if not simulate:
        return settings.upstream.api_key, settings.upstream.base_url, None
    simulator = None
    if settings.upstream.simulator_url:
        # A simulator shared by every instance (`relay simulate`): the ek_ keys it mints
        # for one relay are accepted when another relay exchanges the session.
        base_url = settings.upstream.simulator_url
    else:
        # A child process, never this one (relay.upstream.simulator_process says why).
        simulator = await start_simulator_process(simulator_spec(settings))
        stack.push_async_callback(simulator.close)
        base_url = simulator.base_url
    log.warning(
        "SIMULATED upstream (%s): interviews use the %s at %s, not OpenAI",
        "upstream.simulate" if settings.upstream.simulate else "no OPENAI_API_KEY",
        "built-in simulator" if simulator else "shared simulator (upstream.simulator_url)",
        base_url,
    )
    return SIMULATOR_API_KEY, base_url, simulator


async def _housekeeping(sessions: SessionService) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        try:
            await sessions.expire_pending()
            await sessions.retry_unwritten()
        except Exception:  # housekeeping must never die; the next round retries
            log.exception("housekeeping failed")


def _log_model_currency(model: str, transcription_model: str) -> None:
    """Say at start when a configured model has an announced shutdown (relay.upstream.
    model_currency); the relay still starts: the table may be older than the service."""
    for currency in check_models(model, transcription_model):
        level = logging.ERROR if currency.level == "error" else logging.WARNING
        log.log(level, "model currency (%s): %s", currency.level, currency.message)
