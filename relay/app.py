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
  4. the cluster's shared parts: limits through Redis, pending sessions any member can
     claim (relay.cluster, relay.sessions.shared_state);
  5. admission, the session registry and the session service;
  6. this member's heartbeat and commands (relay.cluster.runtime);
  7. recordings, and the webhooks' dispatcher (relay.webhooks);
  8. the media bridges;
  9. housekeeping (expiring unused sessions), memory release, the event-loop monitor.
Each part is built complete, from the parts it uses, once; ``Services`` hands them to
the handlers. Shut-down is the reverse; live bridges are hung up and their sessions
finished before the database goes away.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from relay import __version__
from relay.admission import client_secrets
from relay.admission.api_keys import ApiKeyRows
from relay.admission.cache import UserCache
from relay.admission.invalidation import CacheInvalidationListener
from relay.admission.invites import InviteRows
from relay.admission.service import Admission
from relay.admission.users import UserAdmin, UserRows
from relay.cluster import members
from relay.cluster.bus import notify
from relay.cluster.limits import SharedLimits
from relay.cluster.resume import ResumeService
from relay.cluster.runtime import ClusterRuntime
from relay.cluster.sealing import Sealer
from relay.cluster.setup import advertise_address, state_keys
from relay.config import ConfigError, Settings
from relay.db import DatabaseUnavailable, Store
from relay.db.bootstrap import BootstrapFailed, StartupStatus, bootstrap_database
from relay.erasure.service import Erasure
from relay.interviews.service import InterviewService
from relay.media.ephemeral_ports import ephemeral_overlap
from relay.media.event_schema import unknown_types
from relay.media.manager import BridgeManager
from relay.memory import GcPauseMeter, MemoryKeeper, freeze_startup_objects
from relay.observability.loop_monitor import LoopMonitor
from relay.observability.metrics import MetricsRegistry
from relay.recording.service import RecordingService
from relay.services import SERVICES, Services
from relay.sessions.continuity import ContinuityKeeper, ContinuityRows
from relay.sessions.drain import DrainState
from relay.sessions.registry import SessionRegistry
from relay.sessions.rows import SessionList, SessionRows, abandoned_after_s
from relay.sessions.service import SessionService
from relay.sessions.shared_state import SharedSessions
from relay.tasks import TaskGroup, cancel_and_wait, idle
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
    cors,
    idempotency,
    low_level,
    openapi,
    routes_bridge,
    routes_cluster,
    routes_health,
    routes_interviews,
    routes_keys,
    routes_openai,
    routes_operator,
    routes_recordings,
    routes_resume,
    routes_session,
    routes_sessions,
    routes_users,
    routes_webhooks,
    security_headers,
)
from relay.web.api import Api
from relay.web.middleware import make_middleware
from relay.webhooks.outbox import DUE_OP
from relay.webhooks.service import Webhooks

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
# Items of ended sessions' conversations deleted per housekeeping round (see _housekeeping).
TRANSCRIPT_PURGE_BATCH = 5000
# Expired Idempotency-Keys (and client secrets of ended sessions) are purged every this many
# rounds.
IDEMPOTENCY_PURGE_ROUNDS = 60

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
        middlewares=[
            make_middleware(metrics, database_retry_after_s=settings.database.retry_after_s)
        ],
        # Our own readers enforce server.max_body_bytes with a JSON 413; this is a backstop.
        client_max_size=settings.server.max_body_bytes,
        handler_args=low_level.handler_args(metrics, settings.server),
    )
    low_level.install(app)
    security_headers.install(app)
    caller.install(app, settings.limits)
    app.cleanup_ctx.append(_lifecycle(settings, metrics, instance_id, simulate))
    # Every /api/ route is an operation of the registry (relay.web.api), which also
    # generates the OpenAPI document from them.
    api = Api()
    routes_session.register(api, app, settings.limits, metrics)
    routes_bridge.register(api)
    routes_operator.register(api, app)
    routes_recordings.register(api)
    routes_cluster.register(api)
    routes_interviews.register(api)
    routes_users.register(api)
    routes_sessions.register(api)
    routes_keys.register(api)
    routes_webhooks.register(api)
    routes_resume.register(api)
    # OpenAI's own clients against the relay: /v1/realtime (docs/openai-compatible.md).
    routes_openai.register(api)
    openapi.register(api)
    api.install(app)
    # Pages on server.cors_origins may call the candidate and OpenAI-compatible operations.
    cors.install(app, api, settings.server.cors_origins)
    routes_health.register(app)
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


@dataclass(frozen=True)
class _Upstream:
    """Step 3's result: the upstream client, what it has seen, and the simulator if any."""

    client: MonitoredUpstream
    health: UpstreamHealth
    simulator: SimulatorProcess | None


async def _start(
    settings: Settings,
    metrics: MetricsRegistry,
    instance_id: str | None,
    stack: contextlib.AsyncExitStack,
    *,
    simulate: bool,
) -> Services:
    """Build every part in dependency order; each closes through ``stack`` (in reverse)."""
    instance = instance_id or f"{socket.gethostname()}:{settings.server.port}"
    # The start-up's own tasks (bootstrap, housekeeping, loop monitor): each is stopped at
    # its place in the shut-down order below; closing the group last is the backstop.
    tasks = TaskGroup("app", log=log, metrics=metrics)
    stack.push_async_callback(tasks.close)

    # 1. database, and the tables' statements
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
    users = UserRows(store)
    session_rows = SessionRows(store, min_remaining_s=settings.limits.min_remaining_seconds)
    startup = await _bootstrap_database(
        settings, store, session_rows, instance, stack, tasks, metrics
    )

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
    upstream = await _start_upstream(settings, metrics, stack, simulate=simulate)

    # 4. the cluster's shared parts: limits through Redis (closed last of the cluster's
    # parts: finishing sessions at shut-down releases leases) and pending sessions any
    # member can claim
    limits = SharedLimits(settings, metrics)
    stack.push_async_callback(limits.close)
    # Seals the secrets kept in the database: pending sessions', webhook endpoints',
    # idempotent answers.
    keys = await state_keys(settings)
    if keys.previous:
        # The operator's reminder that a rotation is under way (docs/operations.md,
        # "Rotating the state key"): the previous keys go once nothing opens with them.
        log.info(
            "state key: %d previous key(s) configured (cluster.previous_state_keys); values "
            "opened with them are counted in relay_state_key_previous_opens_total",
            len(keys.previous),
        )
    sealer = Sealer(keys, metrics)
    shared_sessions = SharedSessions(
        settings,
        store=store,
        sealer=sealer,
        upstream=upstream.client,
        instance_id=instance,
        metrics=metrics,
    )
    stack.push_async_callback(shared_sessions.close)

    # 5. admission and sessions
    drain = DrainState(metrics)
    admission = Admission(settings, users, cache, metrics, invites=InviteRows(store))
    interviews = InterviewService(settings.interviews, store, notify)
    registry = SessionRegistry(settings.limits, metrics)
    sessions = SessionService(
        settings,
        admission=admission,
        rows=session_rows,
        registry=registry,
        upstream=upstream.client,
        metrics=metrics,
        instance_id=instance,
        drain=drain,
        shared=shared_sessions,
        limits=limits,
    )

    # Webhooks: the endpoints, and the dispatcher (started and closed with the recordings,
    # below), built here because the cluster's command channel wakes it: the outbox's
    # notifications arrive there, rather than the dispatcher polling the outbox.
    webhooks = Webhooks(settings.webhooks, store, keys, metrics, instance)
    wake_on = {DUE_OP: webhooks.dispatcher.wake} if settings.webhooks.deliver else {}

    # 6. this member's heartbeat and commands (relay.cluster)
    cluster = ClusterRuntime(
        settings,
        instance_id=instance,
        address=advertise_address(settings),
        store=store,
        registry=registry,
        sessions=sessions,
        admission=admission,
        limits=limits,
        drain=drain,
        metrics=metrics,
        subscribers=wake_on,
    )
    cluster.start()
    stack.push_async_callback(cluster.close)
    stack.push_async_callback(sessions.close)
    # Runs after the bridges have closed (the stack unwinds in reverse): whatever is still
    # registered (e.g. sessions minted but never exchanged) is closed in the database.
    stack.push_async_callback(sessions.finish_all, "relay_shutdown")

    # 7. recordings, closed after the bridges (the stack unwinds in reverse), so their
    # recordings finalise
    recordings = RecordingService(
        settings,
        store,
        instance,
        metrics,
        is_live_member=lambda member: members.is_live(
            store, member, settings.cluster.heartbeat_interval_s
        ),
    )
    recordings.start()
    stack.push_async_callback(recordings.close)
    erasure = Erasure(
        store,
        recordings,
        notify,
        instance_id=instance,
        is_live_member=lambda member: members.is_live(
            store, member, settings.cluster.heartbeat_interval_s
        ),
        forget=admission.forget,
    )
    # Webhooks: the endpoints, and the dispatcher that delivers the outbox's events (it
    # waits for the schema; what it has not delivered at shut-down stays in the database).
    webhooks.start()
    stack.push_async_callback(webhooks.close)

    # 8. media bridges, and resuming them (closed after the bridges: their last progress
    # and transcript writes land)
    continuity = ContinuityKeeper(store, metrics)
    stack.push_async_callback(continuity.close)
    memory = MemoryKeeper(
        settings.server.memory_release_delay_s,
        pause_share=settings.server.memory_release_pause_share,
        metrics=metrics,
    )
    bridges = BridgeManager(
        settings,
        sessions=sessions,
        registry=registry,
        session_rows=session_rows,
        upstream=upstream.client,
        recordings=recordings,
        memory=memory,
        metrics=metrics,
        continuity=continuity,
    )
    resume = ResumeService(
        settings,
        instance_id=instance,
        address=advertise_address(settings),
        registry=registry,
        sessions=sessions,
        bridges=bridges,
        continuity=continuity,
        upstream=upstream.client,
    )
    stack.push_async_callback(resume.close)
    overlap = await asyncio.to_thread(
        ephemeral_overlap, settings.ice.udp_port_min, settings.ice.udp_port_max
    )
    if overlap is not None:
        log.warning("%s", overlap)
    stack.push_async_callback(bridges.close_all)

    # 9. housekeeping, memory, and the event-loop/CPU monitor the dashboard charts
    housekeeping = tasks.spawn(
        _housekeeping(sessions, interviews, erasure, store), name="housekeeping"
    )
    stack.push_async_callback(cancel_and_wait, housekeeping)
    gc_pauses = GcPauseMeter(metrics)
    gc_pauses.install()
    stack.callback(gc_pauses.remove)
    # Closed before the bridges: ends they report at shut-down start no collection.
    stack.push_async_callback(memory.close)
    loop_monitor = LoopMonitor(metrics, gc_pauses)
    monitor = tasks.spawn(loop_monitor.run(), name="loop-monitor")
    stack.push_async_callback(cancel_and_wait, monitor)

    token = settings.server.operator_token or secrets.token_urlsafe(24)
    return Services(
        settings=settings,
        metrics=metrics,
        instance_id=instance,
        store=store,
        users=users,
        session_rows=session_rows,
        cache=cache,
        admission=admission,
        registry=registry,
        upstream=upstream.client,
        upstream_health=upstream.health,
        sessions=sessions,
        drain=drain,
        cluster=cluster,
        recordings=recordings,
        webhooks=webhooks,
        bridges=bridges,
        resume=resume,
        memory=memory,
        loop_monitor=loop_monitor,
        startup=startup,
        recordings_summary=recordings.summary,
        api_keys=ApiKeyRows(store),
        interviews=interviews,
        erasure=erasure,
        user_admin=UserAdmin(store),
        session_list=SessionList(store),
        sealer=sealer,
        operator_token_hash=hashlib.sha256(token.encode()).hexdigest(),
        generated_operator_token=None if settings.server.operator_token else token,
        simulator=upstream.simulator,
        simulated=simulate,
        cache_invalidation=invalidation,
    )


async def _bootstrap_database(
    settings: Settings,
    store: Store,
    session_rows: SessionRows,
    instance: str,
    stack: contextlib.AsyncExitStack,
    tasks: TaskGroup,
    metrics: MetricsRegistry,
) -> StartupStatus:
    """Migrate, warm and hand over (or close) the rows a crash left live, in the
    background (relay.db.bootstrap); the returned status tells /readyz how it goes."""
    startup = StartupStatus()
    # /readyz and /healthz say it to a probe; this says it to Prometheus, which cannot
    # alert on a one-off failure counter that a restart resets (docs/operations.md,
    # "Alerts": RelayStartupFailed). 0 from the start, so the series always exists.
    failed_gauge = metrics.gauge(
        "relay_startup_failed",
        "1 once start-up gave up (an error no retry fixes, or out of attempts): restart needed",
    )
    failed_gauge.set(0)
    started_at = datetime.now(UTC)
    # Started again after a crash under the same instance id (a worker by its supervisor,
    # an instance by systemd or docker): the interviews the crashed process held are
    # resumable as a dead member's are (relay.sessions.rows); with no grace, none is.
    hand_over = settings.session.reconnect_grace_s > 0

    async def recover_sessions() -> None:
        recovered = await session_rows.recover_abandoned_sessions(
            instance,
            started_before=started_at,
            stale_after_s=abandoned_after_s(settings.session),
            hand_over=hand_over,
        )
        if recovered.closed:
            log.warning("closed %d sessions left live by a previous run", recovered.closed)
        if recovered.handed_over:
            log.warning(
                "%d interviews left live by a previous run of this instance can be resumed"
                " (taken over) for %.0fs",
                recovered.handed_over,
                settings.session.reconnect_grace_s,
            )

    def bootstrap_failed(exc: BaseException) -> None:
        # Not retryable (a migration error, missing permissions) or out of attempts: logged
        # by the task group, and /readyz stays red with the reason until an operator fixes it and
        # restarts.
        if isinstance(exc, BootstrapFailed):
            startup.failure = exc.reason
        else:
            startup.failure = f"database_bootstrap: {type(exc).__name__}"
        failed_gauge.set(1)

    bootstrap = tasks.spawn(
        bootstrap_database(store, settings.database, startup, recover=recover_sessions),
        name="database-bootstrap",
        on_failure=bootstrap_failed,
    )
    stack.push_async_callback(cancel_and_wait, bootstrap)
    # Give the database a moment so a healthy start is fully ready when serving begins.
    await asyncio.wait({bootstrap}, timeout=settings.database.connect_timeout_s)
    return startup


async def _start_upstream(
    settings: Settings,
    metrics: MetricsRegistry,
    stack: contextlib.AsyncExitStack,
    *,
    simulate: bool,
) -> _Upstream:
    """The upstream client: OpenAI's, or a simulator's (this relay's own child process, or a
    shared ``relay simulate``), watched by ``UpstreamHealth``."""
    api_key, base_url, simulator = await _upstream_endpoint(settings, stack, simulate=simulate)
    health = UpstreamHealth(settings.upstream, metrics)
    client = MonitoredUpstream(
        build_upstream_client(settings, metrics, base_url=base_url, api_key=api_key), health
    )
    stack.push_async_callback(client.close)
    _log_model_currency(client.model, settings.upstream.transcription_model)
    return _Upstream(client=client, health=health, simulator=simulator)


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


async def _housekeeping(
    sessions: SessionService, interviews: InterviewService, erasure: Erasure, store: Store
) -> None:
    rounds = 0
    # The conversations no rejoin can need that the triggers did not delete (sessions ended
    # before migration 013; an interview's close racing its last session's end, migration
    # 015): deleted a batch a round until none is left, then looked for again every
    # IDEMPOTENCY_PURGE_ROUNDS rounds.
    transcripts_left = True
    continuity = ContinuityRows(store)
    while True:
        await idle(HOUSEKEEPING_INTERVAL_S)
        rounds += 1
        try:
            await sessions.expire_pending()
            await sessions.retry_unwritten()
            if store.schema_ready and transcripts_left:
                purged = await continuity.purge_ended(TRANSCRIPT_PURGE_BATCH)
                transcripts_left = purged == TRANSCRIPT_PURGE_BATCH
            if store.schema_ready:
                # Interviews past their expiry or their rejoin window (each closed once
                # across the cluster), and Idempotency-Keys past their 24 hours.
                await interviews.close_due()
                # Interviews and users marked for erasure: whatever their first try could
                # not finish (a session still live, an object store down, files on this
                # member's disk).
                await erasure.erase_due()
                if rounds % IDEMPOTENCY_PURGE_ROUNDS == 0:
                    transcripts_left = True
                    await idempotency.purge(store)
                    await client_secrets.purge(store)
        except DatabaseUnavailable as exc:
            # An outage the store's retries already logged (DATABASE_RETRY), and /readyz
            # shows: one line, not a traceback per round (nor an error event per outage).
            log.warning("housekeeping: %s; the next round retries", exc)
        except Exception:  # housekeeping must never die; the next round retries
            log.exception("housekeeping failed")


def _log_model_currency(model: str, transcription_model: str) -> None:
    """Say at start when a configured model has an announced shutdown (relay.upstream.
    model_currency); the relay still starts: the table may be older than the service."""
    for currency in check_models(model, transcription_model):
        level = logging.ERROR if currency.level == "error" else logging.WARNING
        log.log(level, "model currency (%s): %s", currency.level, currency.message)
