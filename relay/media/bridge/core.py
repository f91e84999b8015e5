"""The ``Bridge``: one interview's state machine and public API.

The bridge alone owns its state, as aiortc's transports own theirs (``RTCDtlsTransport``,
``RTCSctpTransport``): the state is private (``state`` reads it), one method makes each
transition, and every transition goes through ``_set_state``, which checks it against
``state.TRANSITIONS`` and raises ``InvalidTransition`` for a move the table does not allow.

* new → negotiating → connecting: ``start`` (the second step once both legs are negotiated);
* connecting → active: ``_activate``, when the supervisor saw both legs connected;
* new, negotiating, connecting or active → closing: ``begin_close`` (once; the first
  reason wins);
* closing → closed: ``_teardown``, once everything is released.

The sibling modules do the work without seeing the bridge: ``Negotiation`` returns a
``Negotiated``, ``audio_wiring`` returns the forwarders, ``Supervisor`` and ``PeerWatch``
report through callbacks, ``teardown.release`` is handed what to release and ``Quality``
what to read: no other module writes the bridge's attributes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection

from relay.media.bridge.audio_wiring import AudioEnds, NegotiatedCodecs, start_audio, wire_audio
from relay.media.bridge.base import (
    BridgeClosed,
    BridgeHooks,
    BridgeSettings,
    EndState,
    failure_reason,
)
from relay.media.bridge.negotiation import Negotiation
from relay.media.bridge.peer_events import PeerWatch
from relay.media.bridge.quality import Quality
from relay.media.bridge.state import BridgeState, check_transition
from relay.media.bridge.supervision import Supervisor
from relay.media.bridge.teardown import release
from relay.media.events import EventRelay, Side
from relay.media.forwarding import DirectionStats, Forwarder
from relay.media.ice import announce_public_address
from relay.media.metrics import MediaMetrics
from relay.media.peers import new_peer
from relay.media.tracks import BoundedQueueTrack
from relay.tasks import spawn
from relay.upstream.base import MintedSession, UpstreamClient

if TYPE_CHECKING:
    from relay.recording.recorder import SessionRecorder

log = logging.getLogger("relay.media")


class Bridge:
    """One interview's two legs, from the browser's offer to both legs closed."""

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
        self.metrics = metrics
        self.started_at = time.monotonic()
        self._request_id = request_id
        self._settings = settings
        self._upstream = upstream
        self._minted = minted
        self._max_duration_s = max_duration_s
        self._hooks = hooks
        self._force_decode = force_decode

        # The lifecycle, written only by the transition methods below.
        self._state: BridgeState = "new"
        self._end_state: EndState | None = None
        self._end_reason: str | None = None
        self._upstream_call_id: str | None = None
        self._answer: str | None = None
        self._connected_at: float | None = None
        self._ended_at: float | None = None
        self._teardown_task: asyncio.Task[None] | None = None
        # Whether teardown asked upstream to hang up (it may run before the call exists).
        self._hangup_sent = False
        self._closed = asyncio.Event()

        # The parts: both legs' peers, what each leg sends, each direction's counters.
        queue_max = settings.media.queue_max_frames
        self.to_upstream = BoundedQueueTrack(queue_max)
        self.to_browser = BoundedQueueTrack(queue_max)
        self.browser_to_upstream = DirectionStats("browser_to_upstream")
        self.upstream_to_browser = DirectionStats("upstream_to_browser")
        self.events = EventRelay(
            settings.events,
            metrics,
            on_closed=lambda side: self._leg_lost(side, "channel_closed"),
            session_id=session_id,
            on_flood=lambda: self.begin_close("event_flood"),
            observer=recorder.on_upstream_event if recorder is not None else None,
        )
        self.browser_pc: RTCPeerConnection = new_peer(
            settings.ice,
            leg="browser",
            session_id=session_id,
            capabilities=settings.capabilities,
        )
        self._upstream_pc: RTCPeerConnection | None = None
        # One per direction once negotiated (audio_wiring); stopped by teardown.
        self._forwarders: list[Forwarder] = []
        self._quality = Quality(
            session_id=session_id,
            started_at=self.started_at,
            browser_to_upstream=self.browser_to_upstream,
            to_upstream=self.to_upstream,
            upstream_to_browser=self.upstream_to_browser,
            to_browser=self.to_browser,
            events=self.events,
            metrics=metrics,
            browser_pc=self.browser_pc,
        )
        self._supervisor = Supervisor(
            session_id=session_id,
            session=settings.session,
            started_at=self.started_at,
            max_duration_s=max_duration_s,
            browser_to_upstream=self.browser_to_upstream,
            upstream_to_browser=self.upstream_to_browser,
            quality=self._quality,
            metrics=metrics,
            leg_states=self._leg_states,
            on_connecting=lambda: self._call_hook("on_connecting", self._hooks.on_connecting()),
            on_connected=self._activate,
            on_end=lambda reason, state: self.begin_close(reason, state=state),
        )
        self._watch = PeerWatch(
            session_id=session_id,
            events=self.events,
            on_both_connected=self._supervisor.legs_connected,
            on_lost=self._leg_lost,
        )
        self._watch.watch_browser(self.browser_pc)

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> BridgeState:
        """``new``, ``negotiating``, ``connecting``, ``active``, ``closing`` or ``closed``."""
        return self._state

    @property
    def end_state(self) -> EndState | None:
        return self._end_state

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    @property
    def answer(self) -> str | None:
        """The browser's answer SDP, once ``start`` succeeded."""
        return self._answer

    @property
    def upstream_call_id(self) -> str | None:
        return self._upstream_call_id

    @property
    def upstream_pc(self) -> RTCPeerConnection | None:
        """The upstream leg's peer, from when negotiation created it."""
        return self._upstream_pc

    @property
    def forwarders(self) -> tuple[Forwarder, ...]:
        """One per direction once negotiated (browser → upstream first)."""
        return tuple(self._forwarders)

    @property
    def connected_at(self) -> float | None:
        """When both legs were connected (``time.monotonic``)."""
        return self._connected_at

    @property
    def ended_at(self) -> float | None:
        """When teardown began (``time.monotonic``)."""
        return self._ended_at

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def is_closing(self) -> bool:
        """True once teardown has begun (it may still be in progress).

        A call, not a property: mypy would keep a property narrowed across awaits."""
        return self._teardown_task is not None

    def active_seconds(self, now: float) -> float:
        if self._connected_at is None:
            return 0.0
        end = self._ended_at if self._ended_at is not None else now
        return max(0.0, end - self._connected_at)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of this bridge (cheap; no awaits)."""
        now = time.monotonic()
        return {
            "state": self._state,
            "end_state": self._end_state,
            "end_reason": self._end_reason,
            "age_s": round(now - self.started_at, 3),
            "active_s": round(self.active_seconds(now), 3),
            "upstream_call_id": self._upstream_call_id,
            **self._quality.snapshot(now),
        }

    # ------------------------------------------------------------------ transitions
    async def start(self, offer_sdp: str) -> str:
        """new → negotiating → connecting: negotiate both legs, wire audio, start the
        supervisor; return the browser's answer SDP.

        Any failure tears both legs down (the session finished as failed with a reason) and
        is re-raised; a close that lands meanwhile raises ``BridgeClosed`` instead."""
        closing = self._teardown_task
        if closing is not None:
            # Closed before it was started: nothing is negotiated on released peers.
            await asyncio.shield(closing)
            raise BridgeClosed(self._end_reason or "closed")
        self._set_state("negotiating")
        try:
            negotiated = await self._negotiation().run(offer_sdp)
            self._wire_audio(negotiated.codecs)
            answer = announce_public_address(
                negotiated.answer_sdp, self._settings.ice.public_address
            )
            # Refused if teardown had begun (the handler below then raises BridgeClosed);
            # it cannot have: negotiation's last step checks, and nothing since awaited.
            self._set_state("connecting")
        except BaseException as exc:
            if self._teardown_task is not None:
                await asyncio.shield(self._teardown_task)
                await self._hang_up_late_call()
                if isinstance(exc, asyncio.CancelledError):
                    # The caller's own cancellation is never swallowed (relay.tasks): it
                    # is not "the session was closed" (BridgeClosed would answer 409).
                    raise
                raise BridgeClosed(self._end_reason or "closed") from exc
            reason = failure_reason(exc)
            log.warning("session %s: exchange failed (%s)", self.session_id, reason)
            await asyncio.shield(self.begin_close(reason, state="failed"))
            raise
        self._answer = answer
        self._supervisor.start()
        return answer

    async def _activate(self, connected_at: float) -> None:
        """connecting → active: the supervisor saw both legs connected (and the bridge was
        not closing: it checks)."""
        self._set_state("active")
        self._connected_at = connected_at
        self.metrics.connect_s.observe(connected_at - self.started_at)
        log.info(
            "session %s: active after %.0fms",
            self.session_id,
            (connected_at - self.started_at) * 1000,
        )
        await self._call_hook("on_active", self._hooks.on_active(self._upstream_call_id))

    def begin_close(self, reason: str, *, state: EndState = "ended") -> asyncio.Task[None]:
        """→ closing, from any state before it, once (the first reason wins); returns the
        teardown, which ends in ``closed``. Later calls return the same task."""
        if self._teardown_task is None:
            self._set_state("closing")
            self._supervisor.wake()
            self._teardown_task = spawn(
                self._teardown(state, reason),
                name=f"bridge-close-{self.session_id}",
                log=log,
            )
        return self._teardown_task

    async def close(self, reason: str, *, state: EndState = "ended") -> None:
        """End the session (both legs, upstream hang-up, session finished) and wait."""
        await asyncio.shield(self.begin_close(reason, state=state))

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _teardown(self, end_state: EndState, reason: str) -> None:
        """The work of ``closing``: release everything, → closed, report to the session
        layer exactly once (whatever failed before)."""
        self._ended_at = time.monotonic()
        self._end_state, self._end_reason = end_state, reason
        duration = self.active_seconds(self._ended_at)
        log.info(
            "session %s: closing (%s, %s) after %.1fs active",
            self.session_id,
            end_state,
            reason,
            duration,
        )
        try:
            peers = [self.browser_pc]
            if self._upstream_pc is not None:
                peers.append(self._upstream_pc)
            await release(
                self.session_id,
                supervisor=self._supervisor,
                forwarders=self._forwarders,
                tracks=(self.to_upstream, self.to_browser),
                peers=peers,
                hang_up=self._hang_up_call,
            )
            self._quality.publish_metrics()
            self.metrics.forget(self.browser_to_upstream)
            self.metrics.forget(self.upstream_to_browser)
            self.metrics.bridges_ended.inc(reason=reason)
        finally:
            try:
                self._set_state("closed")
            finally:
                # Even after a refused transition (a bug, raised to whoever awaits the
                # teardown): the session layer's slot, row and credit are released.
                if self.recorder is not None:
                    self.recorder.stop(self._connected_at, self._ended_at)
                await self._call_hook(
                    "on_finished", self._hooks.on_finished(end_state, reason, duration)
                )
                self._closed.set()

    def _set_state(self, state: BridgeState) -> None:
        """The only writer of ``_state``; a move ``TRANSITIONS`` does not allow raises."""
        check_transition(self._state, state)
        log.debug("session %s: bridge %s -> %s", self.session_id, self._state, state)
        self._state = state

    # ------------------------------------------------------------------ the parts' callbacks
    def _negotiation(self) -> Negotiation:
        return Negotiation(
            browser_pc=self.browser_pc,
            to_browser=self.to_browser,
            to_upstream=self.to_upstream,
            events=self.events,
            upstream=self._upstream,
            minted=self._minted,
            request_id=self._request_id,
            gather_timeout_s=self._settings.session.ice_gather_timeout_s,
            open_upstream_peer=self._open_upstream_peer,
            on_upstream_call=self._on_upstream_call,
            check_open=self._raise_if_closing,
        )

    def _open_upstream_peer(self) -> RTCPeerConnection:
        """The upstream leg's peer: created here so teardown closes it whatever happens."""
        settings = self._settings
        pc = new_peer(
            settings.ice,
            leg="upstream",
            session_id=self.session_id,
            capabilities=settings.capabilities,
        )
        self._upstream_pc = pc
        self._watch.watch_upstream(pc)
        self._quality.attach_upstream(pc)
        return pc

    def _on_upstream_call(self, call_id: str | None) -> None:
        self._upstream_call_id = call_id

    def _raise_if_closing(self) -> None:
        """Stop negotiating once teardown began: nothing created after it would be closed."""
        if self.is_closing():
            raise BridgeClosed(self._end_reason or "closed")

    def _wire_audio(self, codecs: NegotiatedCodecs) -> None:
        assert self._upstream_pc is not None  # negotiation created it
        recorder = self.recorder
        ends = AudioEnds(
            browser_pc=self.browser_pc,
            upstream_pc=self._upstream_pc,
            to_upstream=self.to_upstream,
            to_browser=self.to_browser,
            browser_to_upstream=self.browser_to_upstream,
            upstream_to_browser=self.upstream_to_browser,
            candidate_tap=recorder.tap("candidate") if recorder else None,
            interviewer_tap=recorder.tap("interviewer") if recorder else None,
        )
        capabilities = self._settings.capabilities
        # Kept before they start, so teardown stops whichever of them did.
        self._forwarders = wire_audio(
            ends,
            codecs,
            media=self._settings.media,
            capabilities=capabilities,
            force_decode=self._force_decode,
        )
        start_audio(
            self._forwarders,
            ends,
            codecs,
            capabilities=capabilities,
            metrics=self.metrics,
            session_id=self.session_id,
        )

    def _leg_lost(self, leg: Side, what: str) -> None:
        """A peer failed or closed, or a data channel closed (``PeerWatch``, ``EventRelay``)."""
        if self.is_closing() or self._state == "negotiating":
            return  # already ending, or start() fails and tears down on its own
        if self._connected_at is None:
            self.begin_close(f"{leg}_connect_failed", state="failed")
        else:
            self.begin_close(f"{leg}_{what}")

    def _leg_states(self) -> tuple[str, str]:
        upstream = self._upstream_pc
        return self.browser_pc.connectionState, upstream.connectionState if upstream else "-"

    def _hang_up_call(self) -> Awaitable[None] | None:
        """Teardown's hang-up of the upstream call, if there is one yet."""
        if not self._upstream_call_id:
            return None
        self._hangup_sent = True
        return self._upstream.hangup(self._upstream_call_id)

    async def _hang_up_late_call(self) -> None:
        """The upstream call came into being after teardown had passed its hang-up."""
        if self._upstream_call_id and not self._hangup_sent:
            self._hangup_sent = True
            await self._upstream.hangup(self._upstream_call_id)

    async def _call_hook(self, name: str, call: Awaitable[None]) -> None:
        """Await one of the hooks' calls; bookkeeping must not take the media down."""
        try:
            await call
        except Exception:
            log.exception("session %s: %s failed", self.session_id, name)
