"""The supervisor: both legs connected in time, then watched until something ends it.

``Supervisor`` runs one task of the bridge's task group and acts on the bridge only
through its callbacks: ``on_connecting`` (the session layer's milestone), ``on_connected``
(both legs up: the bridge becomes active), ``on_end(reason, state)`` (the bridge begins its
teardown), and the interview's limits (``Limits``): the time left, the wrap-up, the
progress written for a member that may take over, and the reply in progress that may
finish past the limit. If the task itself fails, it calls
``on_end("internal_error", "failed")`` rather than leave the bridge running. The bridge
calls ``legs_connected`` when both peers are connected, ``wake`` when its teardown begins
(every wait ends at once) and ``stop`` from the teardown.

While the browser's leg is lost (``Limits.lost_deadline`` says until when it may come back)
the interview's clock is paused: no limit, no idle-media check, no time announcements; at
the deadline the session ends ``browser_gone``. While the upstream's leg is being replaced
(``upstream_lost``) the clock is paused too: no limit, no idle-media check. With
``session.upstream_silence_timeout_s`` an active interview's upstream that sent nothing
(no audio, no event) for that long is reported (``Limits.on_upstream_silent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.config import SessionConfig
from relay.media.bridge.base import EndState
from relay.media.bridge.clock import InterviewClock
from relay.media.bridge.quality import Quality
from relay.media.forwarding import DirectionStats
from relay.media.metrics import MediaMetrics
from relay.media.relay_events import TimeLeftSchedule
from relay.tasks import TaskGroup, cancel_and_wait

log = logging.getLogger("relay.media")

# How often each leg's loss, jitter and round-trip time are read from aiortc's RTCP-based
# stats: what they are computed from arrives about that often (browsers and the relay
# itself report audio every 5 s, relay.media.rtcp_reports), and each read builds aiortc's
# stats objects for both legs.
QUALITY_REFRESH_S = 5.0
# The longest the monitor sleeps when nothing is due sooner. Time announcements, the
# wrap-up, the limit and a lost leg's grace are each waited for to the moment; what needs
# the tick is idle media (noticed within a quarter of its timeout) and the periodic work
# (quality figures, metrics, progress), none of which changes meaningfully faster. Every
# wake-up costs each live interview CPU whether audio flows or not, so it is the quality
# interval rather than a second (docs/benchmarks.md, "The supervision tick and the
# pool's reset").
MAX_TICK_S = QUALITY_REFRESH_S
# How often, past the limit, the reply in progress is checked for its end.
OVERRUN_TICK_S = 0.05
# How early a timer may fire by ``time.monotonic()`` (uvloop's clock has millisecond
# steps): work due within this is done now rather than a whole tick later.
TIMER_SLACK_S = 0.01


@dataclass(frozen=True)
class Limits:
    """The interview's clock and what the supervisor does at its marks."""

    clock: InterviewClock
    # A reply of the interviewer is in progress (at the limit it may finish).
    replying: Callable[[], bool]
    # The time left was announced / the wrap-up is due (seconds left).
    on_time_left: Callable[[float], None]
    on_wrap_up: Callable[[float], None]
    # When a lost browser leg's grace runs out (None: the browser's leg is up).
    lost_deadline: Callable[[], float | None]
    # The seconds charged so far, every ``session.progress_interval_s`` (None: not wanted).
    on_progress: Callable[[float], None] | None = None
    # When the upstream was last heard (its last audio packet or event), and what to do
    # when that was ``session.upstream_silence_timeout_s`` ago (None: not watched).
    upstream_heard_at: Callable[[], float | None] | None = None
    on_upstream_silent: Callable[[], None] | None = None


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
        limits: Limits,
        tasks: TaskGroup,
    ) -> None:
        self._session_id = session_id
        # The bridge's task group: the supervising task is one of the bridge's tasks.
        self._tasks = tasks
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
        self._limits = limits
        # Set once the limit is reached while a reply goes on (it may finish).
        self.overrunning = False
        self._both_connected = asyncio.Event()
        # True once the bridge's teardown begins (``wake``).
        self._stop = False
        # Ends the monitor's wait at once: set by ``wake`` (teardown) and by ``recheck``
        # (what the next wake-up depends on changed). One event rather than two: waiting
        # on either of two would cost each live interview a task per tick.
        self._nudged = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start supervising (once the browser has its answer)."""
        self._task = self._tasks.spawn(
            self._run(),
            name=f"bridge-{self._session_id}",
            on_failure=lambda exc: self._on_end("internal_error", "failed"),
        )

    def legs_connected(self) -> None:
        """Both peers report ``connected``."""
        self._both_connected.set()

    def wake(self) -> None:
        """The bridge is closing: stop waiting and return."""
        self._stop = True
        self._nudged.set()

    def recheck(self) -> None:
        """What the monitor's next wake-up depends on changed (the browser's leg was lost,
        so its grace now runs out at a time of its own, or it came back): work it out
        again now rather than at the end of a wait of up to ``MAX_TICK_S`` (the grace's end
        was noticed up to 5 s late)."""
        self._nudged.set()

    async def stop(self) -> None:
        """Cancel the task and wait for it; never raises its own failure (logged and counted
        by the bridge's task group)."""
        await cancel_and_wait(self._task)

    def _stopping(self) -> bool:
        """A call, not a property: mypy would keep a property narrowed across awaits."""
        return self._stop

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
        """Until teardown: the limit (with its overrun), the time announcements and the
        wrap-up, idle media, a lost browser leg's grace; publish stats."""
        session = self._session
        limits = self._limits
        clock = limits.clock
        idle_timeout = session.idle_media_timeout_s
        tick = min(MAX_TICK_S, idle_timeout / 4) if idle_timeout > 0 else MAX_TICK_S
        silence_timeout = session.upstream_silence_timeout_s
        if limits.on_upstream_silent is None:
            silence_timeout = 0.0
        if silence_timeout > 0:
            tick = min(tick, silence_timeout / 4)
        reported_first_audio = False
        # The periodic work is due at these times; the tick is no shorter than it, so each
        # is waited for to its time rather than left to the next tick after it.
        quality_due = connected_at + QUALITY_REFRESH_S
        progress_s = session.progress_interval_s
        progress_due = connected_at + progress_s if limits.on_progress else math.inf
        limit_at: float | None = None
        remaining = self._max_duration_s - clock.used(connected_at)
        schedule = TimeLeftSchedule(remaining)
        limits.on_time_left(remaining)
        # Only an interview longer than the wrap-up is asked to close before its end.
        wrap_up_s = session.wrap_up_s
        wrap_up_due = wrap_up_s > 0 and remaining > wrap_up_s
        while not self._stopping():
            now = time.monotonic()
            lost_deadline = limits.lost_deadline()
            if lost_deadline is not None:
                if now >= lost_deadline:
                    self._on_end("browser_gone", "ended")
                    return
                wait = min(tick, lost_deadline - now)
            else:
                remaining = self._max_duration_s - clock.used(now)
                if schedule.due(remaining):
                    limits.on_time_left(remaining)
                if wrap_up_due and remaining <= wrap_up_s:
                    wrap_up_due = False
                    limits.on_wrap_up(remaining)
                if remaining <= 0:
                    if limit_at is None:
                        limit_at = now
                    if not self._may_overrun(now - limit_at):
                        self._on_end("max_duration", "ended")
                        return
                    wait = min(OVERRUN_TICK_S, limit_at + session.overrun_grace_s - now)
                else:
                    wait = min(tick, remaining)
                    mark = schedule.next_mark()
                    if mark is not None and remaining > mark:
                        wait = min(wait, remaining - mark)
                    if wrap_up_due:
                        wait = min(wait, remaining - wrap_up_s)
            wait = min(wait, quality_due - now, progress_due - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await self._nudged.wait()
            if self._stopping():
                return
            self._nudged.clear()
            now = time.monotonic()
            if (
                idle_timeout > 0
                and limits.lost_deadline() is None
                # (nor while the upstream's leg is being replaced: the clock is paused)
                and not clock.paused
                and not self.overrunning
                and now - self._last_media_at(connected_at) >= idle_timeout
            ):
                self._on_end("idle_media", "ended")
                return
            if (
                silence_timeout > 0
                and limits.lost_deadline() is None
                and not clock.paused
                and now - self._upstream_heard_at(connected_at) >= silence_timeout
                and limits.on_upstream_silent is not None
            ):
                # A hung upstream: its connection up (ICE consent holds), nothing arriving.
                limits.on_upstream_silent()
            first = self._upstream_to_browser.first_packet_at
            if not reported_first_audio and first is not None:
                reported_first_audio = True
                self._metrics.first_upstream_audio_s.observe(first - self._started_at)
            self._quality.publish_metrics()
            if now >= quality_due - TIMER_SLACK_S:
                quality_due = now + QUALITY_REFRESH_S
                await self._quality.refresh()
            if limits.on_progress is not None and now >= progress_due - TIMER_SLACK_S:
                progress_due = now + progress_s
                limits.on_progress(clock.used(now))

    def _may_overrun(self, past_limit_s: float) -> bool:
        """At the limit: a reply in progress may finish within ``overrun_grace_s``."""
        grace = self._session.overrun_grace_s
        if grace <= 0 or past_limit_s >= grace or not self._limits.replying():
            return False
        if not self.overrunning:
            self.overrunning = True
            log.info(
                "session %s: at the limit with a reply in progress; it may finish (%.0fs)",
                self._session_id,
                grace,
            )
        return True

    def _upstream_heard_at(self, connected_at: float) -> float:
        heard_at = self._limits.upstream_heard_at
        times = [
            t
            for t in (
                connected_at,
                # A healed (or resumed) leg starts its own wait.
                self._limits.clock.resumed_at,
                heard_at() if heard_at is not None else None,
            )
            if t is not None
        ]
        return max(times)

    def _last_media_at(self, connected_at: float) -> float:
        times = [
            t
            for t in (
                connected_at,
                # A resumed leg starts its own wait for media.
                self._limits.clock.resumed_at,
                self._browser_to_upstream.last_packet_at,
                self._upstream_to_browser.last_packet_at,
            )
            if t is not None
        ]
        return max(times)
