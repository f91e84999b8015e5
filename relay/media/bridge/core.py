"""The ``Bridge`` facade: one interview's state and public API.

The work is done by the sibling modules (negotiation, audio wiring, peer events,
supervision, teardown, quality); this class owns the state they share and the
lifecycle tasks, so each of them can be read on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection

from relay.media.bridge import negotiation, peer_events, supervision, teardown
from relay.media.bridge.base import (
    BridgeClosed,
    BridgeHooks,
    BridgeSettings,
    BridgeState,
    EndState,
    failure_reason,
)
from relay.media.bridge.quality import Quality
from relay.media.events import EventRelay
from relay.media.forwarding import DirectionStats, Forwarder
from relay.media.metrics import MediaMetrics
from relay.media.peers import new_peer
from relay.media.tracks import BoundedQueueTrack
from relay.tasks import spawn
from relay.upstream.base import MintedSession, UpstreamClient

if TYPE_CHECKING:
    from relay.recording.recorder import SessionRecorder

log = logging.getLogger("relay.media")


class Bridge:
    def __init__(
        self,
        *,
        session_id: str,
        request_id: str,
        settings: BridgeSettings,
        upstream: UpstreamClient,
        minted: MintedSession,
        max_duration_s: float,
        metrics: MediaMetrics,
        hooks: BridgeHooks,
        force_decode: bool = False,
        recorder: SessionRecorder | None = None,
    ) -> None:
        self.session_id = session_id
        # Both voices and the transcript (relay.recording), fed by the forwarders' taps.
        self.recorder = recorder
        self.request_id = request_id
        self.settings = settings
        self.upstream = upstream
        self.minted = minted
        self.max_duration_s = max_duration_s
        self.metrics = metrics
        self.hooks = hooks
        self.force_decode = force_decode

        self.state: BridgeState = "new"
        self.end_state: EndState | None = None
        self.end_reason: str | None = None
        self.upstream_call_id: str | None = None
        # The browser's answer SDP, once ``start`` succeeded.
        self.answer: str | None = None
        self.started_at = time.monotonic()
        self.connected_at: float | None = None
        self.ended_at: float | None = None

        queue_max = settings.media.queue_max_frames
        self.to_upstream = BoundedQueueTrack(queue_max)
        self.to_browser = BoundedQueueTrack(queue_max)
        self.browser_to_upstream = DirectionStats("browser_to_upstream")
        self.upstream_to_browser = DirectionStats("upstream_to_browser")
        self.events = EventRelay(
            settings.events,
            metrics,
            on_closed=lambda side: peer_events.on_channel_closed(self, side),
            session_id=session_id,
            on_flood=lambda: self.begin_close("event_flood"),
        )
        if recorder is not None:
            self.events.observer = recorder.on_upstream_event
        self.browser_pc: RTCPeerConnection = new_peer(
            settings.ice,
            leg="browser",
            session_id=session_id,
            capabilities=settings.capabilities,
        )
        self.upstream_pc: RTCPeerConnection | None = None
        # One per direction once negotiated (audio_wiring); stopped by teardown.
        self.forwarders: list[Forwarder] = []
        self.quality = Quality(self)
        self.both_connected = asyncio.Event()
        # Set when teardown begins, so the supervisor's waits end at once.
        self.wake = asyncio.Event()
        self.supervisor: asyncio.Task[None] | None = None
        self.teardown_task: asyncio.Task[None] | None = None
        # Whether teardown asked upstream to hang up (it may run before the call exists).
        self.hangup_sent = False
        self.closed_event = asyncio.Event()

    # ------------------------------------------------------------------ public
    @property
    def closed(self) -> bool:
        return self.closed_event.is_set()

    def is_closing(self) -> bool:
        """True once teardown has begun (it may still be in progress).

        A call, not a property: mypy would keep a property narrowed across awaits."""
        return self.teardown_task is not None

    async def start(self, offer_sdp: str) -> str:
        """Negotiate both legs; return the browser's answer SDP."""
        self.state = "negotiating"
        try:
            answer = await negotiation.negotiate(self, offer_sdp)
        except BaseException as exc:
            if self.teardown_task is not None:
                await asyncio.shield(self.teardown_task)
                await self._hang_up_late_call()
                if isinstance(exc, asyncio.CancelledError):
                    # The caller's own cancellation is never swallowed (relay.tasks): it
                    # is not "the session was closed" (BridgeClosed would answer 409).
                    raise
                raise BridgeClosed(self.end_reason or "closed") from exc
            reason = failure_reason(exc)
            log.warning("session %s: exchange failed (%s)", self.session_id, reason)
            await asyncio.shield(self.begin_close(reason, state="failed"))
            raise
        if self.teardown_task is not None:
            await asyncio.shield(self.teardown_task)
            await self._hang_up_late_call()
            raise BridgeClosed(self.end_reason or "closed")
        self.state = "connecting"
        self.answer = answer
        # Owned: if supervision itself fails, the session still ends (failed) and
        # teardown releases everything.
        self.supervisor = spawn(
            supervision.supervise(self),
            name=f"bridge-{self.session_id}",
            log=log,
            on_failure=lambda exc: self.begin_close("internal_error", state="failed"),
        )
        return answer

    def raise_if_closing(self) -> None:
        """Stop negotiating once teardown began: nothing created after it would be closed."""
        if self.is_closing():
            raise BridgeClosed(self.end_reason or "closed")

    async def _hang_up_late_call(self) -> None:
        """The upstream call came into being after teardown had passed its hang-up."""
        if self.upstream_call_id and not self.hangup_sent:
            self.hangup_sent = True
            await self.upstream.hangup(self.upstream_call_id)

    def begin_close(self, reason: str, *, state: EndState = "ended") -> asyncio.Task[None]:
        """Start tearing down (once); the first reason wins."""
        if self.teardown_task is None:
            self.state = "closing"
            self.wake.set()
            self.teardown_task = spawn(
                teardown.teardown(self, state, reason),
                name=f"bridge-close-{self.session_id}",
                log=log,
            )
        return self.teardown_task

    async def close(self, reason: str, *, state: EndState = "ended") -> None:
        """End the session (both legs, upstream hang-up, session finished) and wait."""
        await asyncio.shield(self.begin_close(reason, state=state))

    async def wait_closed(self) -> None:
        await self.closed_event.wait()

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of this bridge (cheap; no awaits)."""
        return self.quality.snapshot()

    def active_seconds(self, now: float) -> float:
        if self.connected_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else now
        return max(0.0, end - self.connected_at)

    async def call_hook(self, name: str, call: Awaitable[None]) -> None:
        """Await one of ``self.hooks``' calls; bookkeeping must not take the media down."""
        try:
            await call
        except Exception:
            log.exception("session %s: %s failed", self.session_id, name)
