"""The long-lived parts of one relay process, built and torn down by relay.app.

Handlers reach them through the single typed app key ``SERVICES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from relay.admission.cache import UserCache
from relay.admission.service import Admission
from relay.admission.store import Store
from relay.config import Settings
from relay.observability.metrics import MetricsRegistry
from relay.sessions.registry import SessionRegistry
from relay.sessions.service import SessionService
from relay.upstream.base import UpstreamClient

if TYPE_CHECKING:
    from relay.cluster.runtime import ClusterRuntime
    from relay.media.manager import BridgeManager
    from relay.upstream.simulator.server import RunningSimulator


@dataclass
class Services:
    settings: Settings
    metrics: MetricsRegistry
    instance_id: str
    store: Store
    cache: UserCache
    admission: Admission
    registry: SessionRegistry
    upstream: UpstreamClient
    sessions: SessionService
    # The operator token's SHA-256 (never the token itself).
    operator_token_hash: str = field(repr=False)
    # Set on SIGTERM: no new sessions, live ones finish or hit the drain deadline.
    draining: bool = False
    # The media bridges of this instance (relay.media.manager), set during start-up.
    bridges: BridgeManager | None = None
    # The built-in simulator when it is the upstream (no OpenAI key configured).
    simulator: RunningSimulator | None = None
    # Set when no operator token was configured: printed once by `relay serve`.
    generated_operator_token: str | None = field(default=None, repr=False)
    # This member's part in the cluster (heartbeat, commands, shared limits).
    cluster: ClusterRuntime | None = None


SERVICES = web.AppKey("services", Services)
