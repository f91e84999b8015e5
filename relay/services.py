"""The long-lived parts of one relay process, built once and in order by relay.app.

Handlers reach them through the single typed app key ``SERVICES``. Nothing here is
filled in after construction: each part received what it uses when relay.app built it,
and this record only hands the finished parts to the web layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.admission.api_keys import ApiKeyRows
from relay.admission.cache import UserCache
from relay.admission.invalidation import CacheInvalidationListener
from relay.admission.service import Admission
from relay.admission.users import UserAdmin, UserRows
from relay.cluster.resume import ResumeService
from relay.cluster.runtime import ClusterRuntime
from relay.cluster.sealing import Sealer
from relay.config import Settings
from relay.db import Store
from relay.db.bootstrap import StartupStatus
from relay.erasure.service import Erasure
from relay.interviews.service import InterviewService
from relay.media.manager import BridgeManager
from relay.memory import MemoryKeeper
from relay.observability.loop_monitor import LoopMonitor
from relay.observability.metrics import MetricsRegistry
from relay.recording.service import RecordingService
from relay.sessions.drain import DrainState
from relay.sessions.registry import SessionRegistry
from relay.sessions.rows import SessionList, SessionRows
from relay.sessions.service import SessionService
from relay.upstream.base import UpstreamClient
from relay.upstream.health import UpstreamHealth
from relay.webhooks.service import Webhooks

if TYPE_CHECKING:
    from relay.upstream.simulator_process import SimulatorProcess


@dataclass
class Services:
    settings: Settings
    metrics: MetricsRegistry
    instance_id: str
    store: Store
    users: UserRows
    session_rows: SessionRows
    cache: UserCache
    admission: Admission
    registry: SessionRegistry
    upstream: UpstreamClient
    # What the relay has seen of the upstream (mint/exchange outcomes), for /readyz.
    upstream_health: UpstreamHealth
    sessions: SessionService
    # Set on SIGTERM or by the cluster's drain command: no new sessions, live ones finish
    # or hit the drain deadline.
    drain: DrainState
    # This member's part in the cluster (heartbeat, commands, shared limits).
    cluster: ClusterRuntime
    # Interview recordings (relay.recording).
    recordings: RecordingService
    # Webhook endpoints and the delivery of their events (relay.webhooks).
    webhooks: Webhooks
    # The media bridges of this instance (relay.media.manager).
    bridges: BridgeManager
    # Resumes of dropped browser legs: here, at the member holding them, or taken over
    # from a member that died (relay.cluster.resume).
    resume: ResumeService
    # Frees ended interviews promptly (relay.memory).
    memory: MemoryKeeper
    # Event-loop lag and CPU of this process (relay.observability.loop_monitor).
    loop_monitor: LoopMonitor
    # Non-retryable start-up failures (shared with the start-up tasks that report them).
    startup: StartupStatus
    # The ``recordings`` block of /api/stats and the dashboard (counts by status, failures,
    # and ``latest``: items with id, session_id, status, duration_s, bytes, created_at).
    recordings_summary: Callable[[], Awaitable[dict[str, Any]]]
    # The management API's parts: API keys, interviews, the users and sessions resources.
    api_keys: ApiKeyRows
    interviews: InterviewService
    # Erasure of interviews and users (DELETE /api/interviews/{id}, /api/users/{id}).
    erasure: Erasure
    user_admin: UserAdmin
    session_list: SessionList
    # Seals what must not sit readable in the database (relay.cluster.sealing).
    sealer: Sealer = field(repr=False)
    # The operator token's SHA-256 (never the token itself).
    operator_token_hash: str = field(repr=False)
    # Set when no operator token was configured: printed once by `relay serve`.
    generated_operator_token: str | None = field(default=None, repr=False)
    # The built-in simulator's process when this relay started one as its upstream (no
    # OpenAI key configured): its URLs and the token of its /_sim/* control API.
    simulator: SimulatorProcess | None = None
    # The upstream is a simulator (this process's own or a shared `relay simulate`):
    # candidates (the session response) and operators (/api/stats) are told.
    simulated: bool = False
    # Evicts users changed in PostgreSQL from the cache (None: cache.invalidate_from_database
    # is off).
    cache_invalidation: CacheInvalidationListener | None = None


SERVICES = web.AppKey("services", Services)
