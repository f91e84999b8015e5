"""The supervisor: both legs connected in time, then watched until something ends it.

``Supervisor`` runs one owned task (``relay.tasks.spawn``) and acts on the bridge only
through its callbacks: ``on_connecting`` (the session layer's milestone), ``on_connected``
(both legs up: the bridge becomes active), ``on_end(reason, state)`` (the bridge begins its
teardown). If the task itself fails, it calls ``on_end("internal_error", "failed")`` rather
than leave the bridge running. The bridge calls ``legs_connected`` when both peers are
connected, ``wake`` when its teardown begins (every wait ends at once) and ``stop`` from the
teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from relay.config import SessionConfig
from relay.media.bridge.base import EndState
from relay.media.bridge.quality import Quality
from relay.media.forwarding import DirectionStats
from relay.media.metrics import MediaMetrics
from relay.tasks import cancel_and_wait, spawn

log = logging.getLogger("relay.media")

QUALITY_REFRESH_S = 2.0
MAX_TICK_S = 1.0


class Supervisor:
    """One bridge's lifecycle timer: connect timeout, then idle media and maximum duration."""

    def __init__(
        self,
        *,
        session_id: str,
        session: SessionConfig,
        started_at: float,
        max_duration_s: float,
        browser_to_upstream: DirectionStats,
        upstream_to_browser: DirectionStats,
        quality: Quality,
        metrics: MediaMetrics,
        leg_states: Callable[[], tuple[str, str]],
        on_connecting: Callable[[], Awaitable[None]],
        on_connected: Callable[[float], Awaitable[None]],
        on_end: Callable[[str, EndState], object],
    ) -> None:
        self._session_id = session_id
        self._session = session
        self._started_at = started_at
        self._max_duration_s = max_duration_s
        self._browser_to_upstream = browser_to_upstream
        self._upstream_to_browser = upstream_to_browser
        self._quality = quality
        self._metrics = metrics
        self._leg_states = leg_states
        self._on_connecting = on_connecting
        self._on_connected = on_connected
        self._on_end = on_end
        self._both_connected = asyncio.Event()
        # Set when the bridge's teardown begins, so the waits below end at once.
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start supervising (once the browser has its answer)."""
        self._task = spawn(
            self._run(),
            name=f"bridge-{self._session_id}",
            log=log,
            on_failure=lambda exc: self._on_end("internal_error", "failed"),
        )

    def legs_connected(self) -> None:
        """Both peers report ``connected``."""
        self._both_connected.set()

    def wake(self) -> None:
        """The bridge is closing: stop waiting and return."""
        self._woken.set()

    async def stop(self) -> None:
        """Cancel the task and wait for it; never raises its own failure (logged by spawn)."""
        await cancel_and_wait(self._task)

    def _stopping(self) -> bool:
        """A call, not a property: mypy would keep a property narrowed across awaits."""
        return self._woken.is_set()

    async def _run(self) -> None:
        session = self._session
        await self._on_connecting()
        remaining = session.connect_timeout_s - (time.monotonic() - self._started_at)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self._both_connected.wait()
        except TimeoutError:
            browser, upstream = self._leg_states()
            log.warning(
                "session %s: legs not connected within %.1fs (browser %s, upstream %s)",
                self._session_id,
                session.connect_timeout_s,
                browser,
                upstream,
            )
            self._on_end("connect_timeout", "failed")
            return
        if self._stopping():
            return
        connected_at = time.monotonic()
        await self._on_connected(connected_at)
        await self._monitor(connected_at)

    async def _monitor(self, connected_at: float) -> None:
        """Until teardown: end on maximum duration or idle media; publish stats."""
        idle_timeout = self._session.idle_media_timeout_s
        tick = min(MAX_TICK_S, idle_timeout / 4) if idle_timeout > 0 else MAX_TICK_S
        reported_first_audio = False
        quality_at = 0.0
        while not self._stopping():
            now = time.monotonic()
            remaining = self._max_duration_s - (now - connected_at)
            if remaining <= 0:
                self._on_end("max_duration", "ended")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(tick, remaining)):
                    await self._woken.wait()
            if self._stopping():
                return
            now = time.monotonic()
            if idle_timeout > 0 and now - self._last_media_at(connected_at) >= idle_timeout:
                self._on_end("idle_media", "ended")
                return
            first = self._upstream_to_browser.first_packet_at
            if not reported_first_audio and first is not None:
                reported_first_audio = True
                self._metrics.first_upstream_audio_s.observe(first - self._started_at)
            self._quality.publish_metrics()
            if now - quality_at >= QUALITY_REFRESH_S:
                quality_at = now
                await self._quality.refresh()

    def _last_media_at(self, connected_at: float) -> float:
        times = [
            t
            for t in (
                connected_at,
                self._browser_to_upstream.last_packet_at,
                self._upstream_to_browser.last_packet_at,
            )
            if t is not None
        ]
        return max(times)
