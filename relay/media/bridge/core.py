"""The ``Bridge``: one interview's state machine and public API.

The bridge alone owns its state, as aiortc's transports own theirs (``RTCDtlsTransport``,
``RTCSctpTransport``): the state is private (``state`` reads it), one method makes each
transition, and every transition goes through ``_set_state``, which checks it against
``state.TRANSITIONS`` and raises ``InvalidTransition`` for a move the table does not allow.

* new → negotiating → connecting: ``start`` (the second step once both legs are negotiated);
* connecting → active: ``_activate``, when the supervisor saw both legs connected;
* active → browser_lost: ``_lose_browser``, when the browser's leg drops and it may come
  back (``session.reconnect_grace_s``); the upstream leg stays;
* browser_lost → resuming: ``resume``, which answers a resumed leg's offer on a new
  browser peer; resuming → active: ``_resumed`` once it is connected; resuming →
  browser_lost: ``_resume_leg_failed``;
* active → upstream_lost: ``_lose_upstream``, when the upstream's leg drops and it may be
  healed (``session.upstream_reconnect_attempts``); the browser's leg stays while a task
  (``_heal_upstream``) mints a new upstream session, opens a new upstream leg and seeds it;
  upstream_lost → active: ``_upstream_healed`` once that leg is connected;
* any state before it → closing: ``begin_close`` (once; the first reason wins); the page
  is told why first (``relay.session.ending``) when the relay decided it;
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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection

from relay.media import aiortc_private
from relay.media.bridge.audio_wiring import (
    AudioEnds,
    NegotiatedCodecs,
    audio_receiver,
    healed_codecs,
    park_browser_audio,
    park_upstream_audio,
    resumed_codecs,
    start_audio,
    wire_audio,
)
from relay.media.bridge.base import (
    BridgeClosed,
    BridgeHooks,
    BridgeSettings,
    ContinuityHooks,
    EndState,
    ResumeRefused,
    Seed,
    UpstreamAnswerInvalid,
    failure_reason,
)
from relay.media.bridge.clock import InterviewClock
from relay.media.bridge.negotiation import Negotiation, answer_browser
from relay.media.bridge.peer_events import PeerWatch
from relay.media.bridge.quality import Quality
from relay.media.bridge.state import BridgeState, check_transition
from relay.media.bridge.supervision import Limits, Supervisor
from relay.media.bridge.talk import Talk
from relay.media.bridge.teardown import release, settle
from relay.media.conversation import ConversationLog, TranscriptItem
from relay.media.events import EventRelay, Message, Side
from relay.media.forwarding import DirectionStats, Forwarder
from relay.media.ice import announce_public_address
from relay.media.metrics import MediaMetrics
from relay.media.peers import close_peer, new_peer
from relay.media.tracks import BoundedQueueTrack
from relay.observability import request_context
from relay.tasks import TaskGroup, cancel_and_wait
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
        continuity: ContinuityHooks | None = None,
        resumable: bool = True,
        seed: Seed | None = None,
        mint_upstream: Callable[[str], Awaitable[MintedSession]] | None = None,
        on_upstream_replaced: Callable[[str | None, str | None], Awaitable[None]] | None = None,
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
        # Every background task of this bridge (supervision, teardown, a take-over's seeding,
        # a lost leg's release): a failure is logged and counted with the owner "bridge", and
        # teardown closes the group last, so nothing of an ended interview keeps running.
        self._tasks = TaskGroup("bridge", log=log, metrics=metrics.registry)
        # Whether teardown asked upstream to hang up (it may run before the call exists).
        self._hangup_sent = False
        self._closed = asyncio.Event()

        # Continuity: the interview's clock (time away not charged), the conversation, the
        # lost browser leg's release and its stand-in for the upstream's audio.
        self._continuity = continuity
        # Whether its client can come back (it holds a resume token): only then does a lost
        # browser leg wait for it (session.reconnect_grace_s).
        self._resumable = resumable
        self._seed = seed
        # The recorder's transcript source, as given (tests swap ``recorder`` for taps only).
        self._record_event = recorder.on_upstream_event if recorder is not None else None
        self._clock = InterviewClock(seed.charged_s if seed is not None else 0.0)
        self.conversation = ConversationLog(
            clock=lambda: self._clock.used(time.monotonic()),
            items=seed.items if seed is not None else (),
            on_item=self._on_transcript_item,
            on_reply_over=self._on_reply_over,
        )
        self._codecs: NegotiatedCodecs | None = None
        self._resume_started_at: float | None = None
        self._browser_release: asyncio.Task[None] | None = None
        self._parking: Forwarder | None = None
        # The browser → upstream forwarder of the last leg that sent: a resumed leg's
        # continues its stream.
        self._sent_upstream: Forwarder | None = None
        # Tell the (resumed) page reconnected + transcript + time left once its channel is
        # open and the leg is up; upstream events wait until then.
        self._greet_pending = seed is not None
        self._gap_s = seed.gap_s if seed is not None else 0.0
        self._seeding: asyncio.Task[None] | None = None
        # Healing a lost upstream leg in place (``_lose_upstream``): a new upstream session
        # is minted with this (None: a lost upstream leg ends the session), the lost leg is
        # released in a task of its own, the heal runs in another; the browser's audio is
        # parked meanwhile, and its upstream → browser forwarder's stream is continued.
        self._mint_upstream = mint_upstream
        # The session layer's note of the new upstream call and session (its row).
        self._on_upstream_replaced = on_upstream_replaced
        self._upstream_release: asyncio.Task[None] | None = None
        self._upstream_hangups: list[asyncio.Task[None]] = []
        self._healing: asyncio.Task[None] | None = None
        self._browser_parking: Forwarder | None = None
        self._sent_browser: Forwarder | None = None
        # Set by peer events while a new upstream leg connects: True up, False failed.
        self._upstream_attempt: asyncio.Future[bool] | None = None
        # The upstream session the current attempt minted (the row names it once healed).
        self._healing_minted: MintedSession | None = None
        # When the upstream last sent an event (with its last audio packet: when it was
        # last heard, ``_upstream_went_at``).
        self._upstream_event_at: float | None = None
        # The browser peer whose ICE checks are noted (once per peer: ``_wire_audio``).
        self._ice_noted: RTCPeerConnection | None = None
        # How the upstream's leg was lost (the end reason if it cannot be healed).
        self._upstream_lost_what = "failed"
        # Losses of the upstream leg taken up so far (at most MAX_HEALS).
        self._heals = 0

        # The parts: both legs' peers, what each leg sends, each direction's counters.
        queue_max = settings.media.queue_max_frames
        self.to_upstream = BoundedQueueTrack(queue_max)
        self.to_browser = BoundedQueueTrack(queue_max)
        self.browser_to_upstream = DirectionStats("browser_to_upstream")
        self.upstream_to_browser = DirectionStats("upstream_to_browser")
        # When the browser's leg last sent an ICE check (``_browser_went_at``).
        self._browser_checked_at: float | None = None
        self.events = EventRelay(
            settings.events,
            metrics,
            on_closed=lambda side: self._leg_lost(side, "channel_closed"),
            session_id=session_id,
            on_flood=lambda: self.begin_close("event_flood"),
            observer=self._observe_upstream,
            on_browser_open=self._try_greet,
            drain_until_acknowledged=settings.capabilities.available("ending_acknowledged"),
        )
        if seed is not None:
            self.events.detach_browser()  # nothing before the greeting (_try_greet)
        self._talk = Talk(
            session_id=session_id,
            events=self.events,
            conversation=self.conversation,
            dialect=upstream.dialect,
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
            forwarders=lambda: self._forwarders,
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
            tasks=self._tasks,
            limits=Limits(
                clock=self._clock,
                replying=lambda: self.conversation.replying,
                on_time_left=self._talk.time_left,
                on_wrap_up=self._talk.wrap_up,
                lost_deadline=self._lost_deadline,
                on_progress=continuity.on_progress if continuity is not None else None,
                upstream_heard_at=self._upstream_heard_at,
                on_upstream_silent=lambda: self._leg_lost("upstream", "silent"),
            ),
        )
        self._watch = PeerWatch(
            session_id=session_id,
            events=self.events,
            on_both_connected=self._both_connected,
            on_lost=self._leg_lost,
        )
        self._watch.watch_browser(self.browser_pc)

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> BridgeState:
        """``new``, ``negotiating``, ``connecting``, ``active``, ``browser_lost``,
        ``resuming``, ``upstream_lost``, ``closing`` or ``closed``."""
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
        """Seconds charged: connected time without the time the browser was away (and
        with the seconds of earlier parts, for a session taken over)."""
        end = self._ended_at if self._ended_at is not None else now
        return self._clock.used(end)

    def time_left(self, now: float | None = None) -> float:
        """Seconds left before the interview's limit (the clock paused while away)."""
        return self._max_duration_s - self._clock.used(time.monotonic() if now is None else now)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of this bridge (cheap; no awaits)."""
        now = time.monotonic()
        return {
            "state": self._state,
            "end_state": self._end_state,
            "end_reason": self._end_reason,
            "age_s": round(now - self.started_at, 3),
            "active_s": round(self.active_seconds(now), 3),
            "time_left_s": round(self.time_left(now), 3),
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
        if self._seed is not None:
            self._seeding = self._tasks.spawn(
                self._talk.seed(self._seed.items), name=f"bridge-seed-{self.session_id}"
            )
        return answer

    async def _activate(self, connected_at: float) -> None:
        """connecting → active: the supervisor saw both legs connected (and the bridge was
        not closing: it checks)."""
        self._set_state("active")
        self._connected_at = connected_at
        self._clock.start(connected_at)
        self._try_greet()
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
            self._teardown_task = self._tasks.spawn(
                self._teardown(state, reason), name=f"bridge-close-{self.session_id}"
            )
        return self._teardown_task

    async def close(self, reason: str, *, state: EndState = "ended") -> None:
        """End the session (both legs, upstream hang-up, session finished) and wait."""
        await asyncio.shield(self.begin_close(reason, state=state))

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _teardown(self, end_state: EndState, reason: str) -> None:
        """The work of ``closing``: tell the page why (when the relay decided it), release
        everything, → closed, report to the session layer exactly once (whatever failed
        before)."""
        # Its lines (the upstream hang-up's among them) are this session's, whoever began
        # the close: a timer, a drain, another session's request (a task of its own).
        request_context.begin_session_task(self.session_id)
        self._ended_at = time.monotonic()
        self._clock.stop(self._ended_at)
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
            # A heal under way stops where it is: what it created is the bridge's (its
            # peer and call, released below); a lost leg's release is awaited.
            await cancel_and_wait(self._healing)
            await self._talk.ending(reason)
            for task in (
                self._seeding,
                self._browser_release,
                self._upstream_release,
                *self._upstream_hangups,
            ):
                if task is not None:
                    # Its own failure was logged and counted by the task group.
                    await asyncio.gather(asyncio.shield(task), return_exceptions=True)
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
                # Whatever of its tasks still runs (released above, normally none) ends now.
                await self._tasks.close()
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
        self._quality.attach_upstream(pc, self.to_upstream)
        return pc

    def _on_upstream_call(self, call_id: str | None) -> None:
        self._upstream_call_id = call_id

    def _raise_if_closing(self) -> None:
        """Stop negotiating once teardown began: nothing created after it would be closed."""
        if self.is_closing():
            raise BridgeClosed(self._end_reason or "closed")

    def _wire_audio(
        self,
        codecs: NegotiatedCodecs,
        previous: Forwarder | None = None,
        previous_down: Forwarder | None = None,
    ) -> None:
        assert self._upstream_pc is not None  # negotiation created it
        self._codecs = codecs
        # The browser's ICE checks say it is there when its audio does not (muted by
        # removing its track, or a client that sends none): _browser_went_at. Once per
        # peer: a healed upstream leg is wired to the same browser peer.
        if self._ice_noted is not self.browser_pc:
            self._ice_noted = self.browser_pc
            aiortc_private.note_ice_checks(
                audio_receiver(self.browser_pc).transport, self._browser_checked
            )
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
            previous=(previous,) if previous is not None else (),
            previous_down=previous_down,
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
        """A peer failed or closed, or a data channel closed (``PeerWatch``, ``EventRelay``).

        The browser's leg may come back (a network blip, a reload): while a grace is
        configured, an active interview keeps its upstream leg for it (``browser_lost``)."""
        if self.is_closing() or self._state == "negotiating":
            return  # already ending, or start() fails and tears down on its own
        if self._connected_at is None:
            self.begin_close(f"{leg}_connect_failed", state="failed")
            return
        if leg == "browser":
            if self._state == "upstream_lost":
                # The candidate's leg went too while the interviewer's was being replaced
                # (often one network cut): a failure like the upstream's own, so that an
                # interview stays open for the page's rejoin.
                self.begin_close(f"upstream_{self._upstream_lost_what}", state="failed")
                return
            if self._state == "browser_lost":
                return  # the lost leg's own peer and channel closing after it
            if self._state == "resuming":
                self._resume_leg_failed(what)
                return
            if self._state == "active" and self._may_resume():
                self._lose_browser(what)
                return
            # The candidate's side went away: the interview ended (it completes).
            self.begin_close(f"browser_{what}")
            return
        if self._state == "upstream_lost":
            self._upstream_attempt_over(False)  # the new leg failed while connecting
            return
        if self._state == "active" and self._may_heal():
            self._lose_upstream(what)
            return
        # The interviewer's service dropped the call (and it cannot be healed, or the
        # browser's leg is away): a failure, not an end, so an interview stays open for
        # the candidate to rejoin (interviews.rejoin_window_s) rather than completing with
        # a conversation cut short.
        self.begin_close(f"upstream_{what}", state="failed")

    def _both_connected(self) -> None:
        """Both peers are connected: the exchange's legs, or a resumed browser leg."""
        if self._state == "connecting":
            self._supervisor.legs_connected()
        elif self._state == "resuming":
            self._resumed()
        elif self._state == "upstream_lost":
            self._upstream_attempt_over(True)

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

    # ------------------------------------------------------------------ continuity
    async def resume(self, offer_sdp: str) -> str:
        """browser_lost → resuming: answer a resumed browser leg's offer on a new browser
        peer, wired to the same upstream leg; return the answer SDP. The bridge becomes
        active again once that peer is connected (``_resumed``).

        An active bridge is first taken for lost (a page reloaded before the relay saw its
        old leg go). Raises ``ResumeRefused`` (in progress, not resumable, the new leg
        failed meanwhile, the upstream's leg being replaced: ``resume_unavailable``),
        ``BridgeClosed`` (closing), ``InvalidOffer``; any other failure leaves the bridge
        in ``browser_lost`` for another attempt within the grace."""
        if self.is_closing():
            raise BridgeClosed(self._end_reason or "closed")
        if self._state == "resuming":
            raise ResumeRefused("resume_in_progress", "A resume of this session is under way.")
        if self._state == "upstream_lost":
            # Not for good: the heal ends soon, one way or the other (active again: the
            # next attempt takes the leg; given up: the session ended, 410).
            raise ResumeRefused(
                "resume_unavailable",
                "The interviewer's connection is being restored; try again in a moment.",
            )
        if self._state == "active" and self._may_resume():
            self._lose_browser("replaced")
        if self._state != "browser_lost":
            raise ResumeRefused("session_not_resumable", "This session cannot be resumed now.")
        self._set_state("resuming")
        self._resume_started_at = time.monotonic()
        pc: RTCPeerConnection | None = None
        try:
            released = self._browser_release
            if released is not None:
                await asyncio.gather(asyncio.shield(released), return_exceptions=True)
            self._raise_unless_resuming(None)
            settings = self._settings
            pc = new_peer(
                settings.ice,
                leg="browser",
                session_id=self.session_id,
                capabilities=settings.capabilities,
            )
            self.browser_pc = pc
            self._watch.watch_browser(pc)
            # aiortc stopped the lost leg's queue track with its sender: a new one.
            to_browser = BoundedQueueTrack(settings.media.queue_max_frames)
            to_browser.count_on_from(self.to_browser)
            self.to_browser = to_browser
            self._quality.attach_browser(pc, to_browser)
            answer = await answer_browser(
                pc, self.to_browser, offer_sdp, settings.session.ice_gather_timeout_s
            )
            self._raise_unless_resuming(pc)
            assert self._codecs is not None  # a lost leg was wired
            codecs = resumed_codecs(self._codecs, str(answer.sdp))
            await self._stop_parking()
            self._raise_unless_resuming(pc)
            self._wire_audio(codecs, previous=self._sent_upstream)
            answer_sdp = announce_public_address(str(answer.sdp), settings.ice.public_address)
        except BaseException as exc:
            teardown = self._teardown_task
            if teardown is not None:
                # Closed meanwhile: the teardown releases the new peer with everything else.
                await asyncio.shield(teardown)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise BridgeClosed(self._end_reason or "closed") from exc
            if self._state_now() == "resuming" and (pc is None or self.browser_pc is pc):
                self._resume_leg_failed("refused")
            self.metrics.resumes.inc(outcome="failed")
            raise
        self._greet_pending = True
        log.info("session %s: resume answered; waiting for the new leg", self.session_id)
        return answer_sdp

    def _state_now(self) -> BridgeState:
        """A call, not the attribute: mypy would keep ``_state`` narrowed across awaits."""
        return self._state

    def _may_resume(self) -> bool:
        # Past the limit (a reply finishing) the interview ends rather than waits.
        grace = self._settings.session.reconnect_grace_s
        return self._resumable and grace > 0 and not self._supervisor.overrunning

    def _lose_browser(self, what: str) -> None:
        """active → browser_lost: keep the upstream leg, forward nothing, pause the clock,
        cancel the reply in progress, release the lost leg (in a task of its own)."""
        now = time.monotonic()
        self._set_state("browser_lost")
        self._resume_started_at = None
        self._greet_pending = False
        # The clock's pause is when the leg was lost: its grace runs from there. What is
        # charged stops when the browser went, if that was clearly earlier.
        self._clock.pause(now, away_since=self._browser_went_at(now))
        self.events.detach_browser()
        self._talk.cancel_reply()
        if self.recorder is not None:
            self.recorder.mark("browser_lost", now)
        self.metrics.browser_lost.inc(cause=what if what in _LOSS_CAUSES else "other")
        log.info(
            "session %s: browser leg lost (%s); resumable for %.0fs",
            self.session_id,
            what,
            self._settings.session.reconnect_grace_s,
        )
        if self._continuity is not None:
            self._continuity.on_progress(self._clock.used(now))
        # Its grace runs out at a time of its own: the monitor waits for that now.
        self._supervisor.recheck()
        self._release_browser_leg_soon()

    def _browser_went_at(self, now: float) -> float | None:
        """When the browser's leg went quiet, if well before ``now``: the later of its last
        packet and its last ICE check.

        A leg from which neither came for over ``BROWSER_QUIET_S`` was gone from then: a
        network that vanished (noticed here when ICE consent fails, about 30 s on) or a
        page that resumes on a new leg after a cut this leg did not notice. A page that
        closes or reloads is noticed at once and was heard recently: nothing is moved.
        Audio alone would not do: a client that stops sending it (its track removed) while
        it listens, then resumes or closes, would have had all that time for free; its
        ICE checks (every 2.5 to 6 s, whatever it sends) go on while it is there. Never
        more than ``LOSS_NOTICE_MAX_S`` back, what consent takes to fail (a client that
        sends no checks of its own). The packet's time may be ``SYNC_INTERVAL_S`` old on
        the compiled path, hence the margin."""
        heard = [
            t
            for t in (self.browser_to_upstream.last_packet_at, self._browser_checked_at)
            if t is not None
        ]
        if not heard or now - max(heard) <= BROWSER_QUIET_S:
            return None
        return max(max(heard), now - LOSS_NOTICE_MAX_S)

    def _browser_checked(self) -> None:
        self._browser_checked_at = time.monotonic()

    def _resume_leg_failed(self, what: str) -> None:
        """resuming → browser_lost: the resumed leg failed; the grace of the first loss
        goes on (another attempt may follow)."""
        log.info("session %s: resumed leg failed (%s)", self.session_id, what)
        self._set_state("browser_lost")
        self._resume_started_at = None
        self._greet_pending = False
        self.events.detach_browser()
        self._release_browser_leg_soon()

    def _release_browser_leg_soon(self) -> None:
        pc, forwarders = self.browser_pc, self._forwarders
        self._watch.forget_browser(pc)
        parking = self._parking
        self._forwarders = [f for f in forwarders if f is parking]
        sending = [f for f in forwarders if f is not parking]
        if sending:
            self._sent_upstream = sending[0]  # browser → upstream (wire_audio's order)
        self._browser_release = self._tasks.spawn(
            self._release_browser_leg(pc, sending),
            name=f"bridge-release-browser-{self.session_id}",
        )

    async def _release_browser_leg(
        self, pc: RTCPeerConnection, forwarders: list[Forwarder]
    ) -> None:
        """Stop a lost leg's forwarders and close its peer; then, while the browser is
        still away, take the upstream's audio into a queue nobody reads."""
        await settle(self.session_id, [forwarder.stop() for forwarder in forwarders])
        await settle(self.session_id, [close_peer(pc)])
        if self._state == "browser_lost" and self._parking is None:
            self._park_upstream_audio()

    def _park_upstream_audio(self) -> None:
        upstream_pc, codecs = self._upstream_pc, self._codecs
        if upstream_pc is None or codecs is None:
            return
        parking = park_upstream_audio(
            upstream_pc,
            codecs,
            media=self._settings.media,
            capabilities=self._settings.capabilities,
            force_decode=self._force_decode,
        )
        self._parking = parking
        self._forwarders.append(parking)
        parking.start()

    async def _stop_parking(self) -> None:
        parking, self._parking = self._parking, None
        if parking is not None:
            self._forwarders = [f for f in self._forwarders if f is not parking]
            await parking.stop()

    def _raise_unless_resuming(self, pc: RTCPeerConnection | None) -> None:
        """Stop answering a resume once teardown began, or once its new leg failed."""
        self._raise_if_closing()
        if self._state_now() != "resuming" or (pc is not None and self.browser_pc is not pc):
            raise ResumeRefused("resume_failed", "The resumed connection failed; try again.")

    def _resumed(self) -> None:
        """resuming → active: the resumed leg is connected; the clock runs again."""
        now = time.monotonic()
        self._set_state("active")
        self._gap_s = self._clock.resume(now)
        self._resume_started_at = None
        if self.recorder is not None:
            self.recorder.mark("browser_resumed", now)
        self.metrics.resumes.inc(outcome="resumed")
        log.info("session %s: resumed after %.1fs away", self.session_id, self._gap_s)
        # The clock runs again: the time announcements and the limit are due from now.
        self._supervisor.recheck()
        self._try_greet()

    def _lost_deadline(self) -> float | None:
        """When a lost browser leg's grace runs out (None while the leg is up). A resume
        under way gets at least ``connect_timeout_s`` to connect its new leg."""
        lost_at = self._clock.paused_at
        if lost_at is None or self._state not in ("browser_lost", "resuming"):
            return None
        deadline = lost_at + self._settings.session.reconnect_grace_s
        if self._resume_started_at is not None:
            deadline = max(
                deadline, self._resume_started_at + self._settings.session.connect_timeout_s
            )
        return deadline

    def _try_greet(self) -> None:
        """A resumed (or taken-over) leg, up and with its channel open, is greeted first;
        upstream events wait until then."""
        if not self._greet_pending or self._state != "active" or not self.events.browser_open:
            return
        self._greet_pending = False
        self._talk.greet(self._gap_s, self.time_left())

    def _observe_upstream(self, message: Message) -> None:
        """Every upstream server event: the recorder's transcript and the conversation."""
        self._upstream_event_at = time.monotonic()
        if self._record_event is not None:
            self._record_event(message)
        self.conversation.on_upstream_event(message)

    def _on_transcript_item(self, item: TranscriptItem) -> None:
        if self._continuity is not None:
            self._continuity.on_transcript_item(item)

    def _on_reply_over(self) -> None:
        if self._state == "active":  # a wrap-up's response is for a page that hears it
            self._talk.reply_over()

    # ------------------------------------------------------------------ the upstream healed
    def _may_heal(self) -> bool:
        # Past the limit (a reply finishing) the interview ends rather than waits; an
        # upstream that keeps dropping is not given new sessions without end (each loss
        # pauses the clock and mints anew): after MAX_HEALS the session ends as before.
        return (
            self._mint_upstream is not None
            and self._settings.session.upstream_reconnect_attempts > 0
            and not self._supervisor.overrunning
            and self._heals < MAX_HEALS
        )

    def _lose_upstream(self, what: str) -> None:
        """active → upstream_lost: keep the browser's leg, forward nothing, pause the clock,
        tell the page, release the lost upstream leg and open a new one (a task)."""
        now = time.monotonic()
        self._set_state("upstream_lost")
        self._heals += 1
        self._upstream_lost_what = what
        # The clock's pause is when the loss was noticed; what is charged stops when the
        # upstream was last heard, if that was clearly earlier (a hung upstream).
        self._clock.pause(now, away_since=self._upstream_went_at(now))
        # The reply in progress is cut with its leg (no event of it will say so).
        self.conversation.upstream_gone()
        self.events.detach_upstream()
        self._talk.upstream_reconnecting(1)
        if self.recorder is not None:
            self.recorder.mark("upstream_lost", now)
        log.warning(
            "session %s: upstream leg lost (%s); opening a new one (at most %d attempts)",
            self.session_id,
            what,
            self._settings.session.upstream_reconnect_attempts,
        )
        if self._continuity is not None:
            self._continuity.on_progress(self._clock.used(now))
        self._release_upstream_leg_soon()
        # The clock is paused: the monitor works out its next wake-up again.
        self._supervisor.recheck()
        self._healing = self._tasks.spawn(
            self._heal_upstream(what), name=f"bridge-heal-upstream-{self.session_id}"
        )

    def _upstream_heard_at(self) -> float | None:
        """When the upstream was last heard: the later of its last audio packet and its
        last event (None: never yet)."""
        heard = [
            t
            for t in (self.upstream_to_browser.last_packet_at, self._upstream_event_at)
            if t is not None
        ]
        return max(heard) if heard else None

    def _upstream_went_at(self, now: float) -> float | None:
        """When the upstream's leg went quiet, if well before ``now``: the later of its
        last audio packet and its last event.

        An upstream that hung (its connection up, nothing arriving) is found lost only when
        ICE consent fails or its call is ended, maybe tens of seconds on: that stretch is
        not the candidate's to pay. An upstream sending the codec's silence between replies
        (the simulator does) is heard every 20 ms while it is there; one that sends nothing
        between replies leaves its quiet time before a loss uncharged too, in the
        candidate's favour, as for the browser's leg. ``BROWSER_QUIET_S`` is the margin for
        the compiled path's copy of its counters; never more than ``LOSS_NOTICE_MAX_S``
        back."""
        heard = self._upstream_heard_at()
        if heard is None or now - heard <= BROWSER_QUIET_S:
            return None
        return max(heard, now - LOSS_NOTICE_MAX_S)

    def _release_upstream_leg_soon(self) -> None:
        """Stop the upstream leg's forwarders, close its peer and hang its call up, in a
        task of its own (teardown waits for it); keep the browser's audio parked."""
        pc, call_id = self._upstream_pc, self._upstream_call_id
        self._upstream_pc, self._upstream_call_id = None, None
        if pc is not None:
            self._watch.forget_upstream(pc)
        self.events.detach_upstream()
        parking = self._browser_parking
        forwarders = [f for f in self._forwarders if f is not parking]
        self._forwarders = [f for f in self._forwarders if f is parking]
        if len(forwarders) == 2:
            # Upstream → browser (wire_audio's order): the next one continues its stream.
            self._sent_browser = forwarders[1]
        self._upstream_release = self._tasks.spawn(
            self._release_upstream_leg(pc, forwarders, call_id),
            name=f"bridge-release-upstream-{self.session_id}",
        )

    async def _release_upstream_leg(
        self, pc: RTCPeerConnection | None, forwarders: list[Forwarder], call_id: str | None
    ) -> None:
        if call_id:
            # The call may still be up on the upstream's side (a leg that failed here). Its
            # own task: the next attempt does not wait for the upstream to answer it (up to
            # upstream.hangup_timeout_s); teardown does.
            self._upstream_hangups.append(
                self._tasks.spawn(
                    self._upstream.hangup(call_id),
                    name=f"bridge-hangup-lost-upstream-{self.session_id}",
                )
            )
        await settle(self.session_id, [forwarder.stop() for forwarder in forwarders])
        if pc is not None:
            await settle(self.session_id, [close_peer(pc)])
        if self._state == "upstream_lost" and self._browser_parking is None:
            self._park_browser_audio()

    def _park_browser_audio(self) -> None:
        codecs = self._codecs
        if codecs is None:
            return
        parking = park_browser_audio(
            self.browser_pc,
            codecs,
            media=self._settings.media,
            capabilities=self._settings.capabilities,
            force_decode=self._force_decode,
        )
        self._browser_parking = parking
        self._forwarders.append(parking)
        parking.start()

    async def _stop_browser_parking(self) -> None:
        parking, self._browser_parking = self._browser_parking, None
        if parking is not None:
            self._forwarders = [f for f in self._forwarders if f is not parking]
            await parking.stop()

    async def _heal_upstream(self, what: str) -> None:
        """Open a new upstream leg, at most ``upstream_reconnect_attempts`` times (waiting
        ``upstream_reconnect_backoff_s``, doubled each time, between them); when every
        attempt failed, the session ends with the loss's own reason, as without healing."""
        session = self._settings.session
        attempts = session.upstream_reconnect_attempts
        delay = session.upstream_reconnect_backoff_s
        for attempt in range(1, attempts + 1):
            released = self._upstream_release
            if released is not None:
                await asyncio.gather(asyncio.shield(released), return_exceptions=True)
            if attempt > 1:
                await asyncio.sleep(delay)
                delay *= 2
                self._talk.upstream_reconnecting(attempt)
            try:
                await self._open_new_upstream_leg()
            except BridgeClosed:
                return
            except Exception as exc:
                self.metrics.upstream_reconnects.inc(outcome="attempt_failed")
                log.warning(
                    "session %s: upstream reconnect attempt %d of %d failed (%s: %s)",
                    self.session_id,
                    attempt,
                    attempts,
                    failure_reason(exc),
                    exc,
                )
                self._release_upstream_leg_soon()
                continue
            self._upstream_healed()
            return
        released = self._upstream_release
        if released is not None:
            await asyncio.gather(asyncio.shield(released), return_exceptions=True)
        self.metrics.upstream_reconnects.inc(outcome="gave_up")
        log.warning(
            "session %s: the upstream leg could not be reopened in %d attempts",
            self.session_id,
            attempts,
        )
        self.begin_close(f"upstream_{what}", state="failed")

    async def _open_new_upstream_leg(self) -> None:
        """Mint a new upstream session (as at the start: the upstream client's own
        timeouts and retries), offer it a new leg, wire audio to it and wait (at most
        ``connect_timeout_s``) until it is connected. Raises on any failure; what it
        created is the bridge's (released by the caller, or by teardown)."""
        assert self._mint_upstream is not None and self._codecs is not None
        minted = await self._mint_upstream(self._request_id)
        self._raise_unless_upstream_lost()
        self._healing_minted = minted
        settings = self._settings
        # aiortc stopped the lost leg's queue track with its sender: a new one.
        to_upstream = BoundedQueueTrack(settings.media.queue_max_frames)
        to_upstream.count_on_from(self.to_upstream)
        self.to_upstream = to_upstream
        attempt: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._upstream_attempt = attempt
        leg = await Negotiation(
            browser_pc=self.browser_pc,
            to_browser=self.to_browser,
            to_upstream=to_upstream,
            events=self.events,
            upstream=self._upstream,
            minted=minted,
            request_id=self._request_id,
            gather_timeout_s=settings.session.ice_gather_timeout_s,
            open_upstream_peer=self._open_upstream_peer,
            on_upstream_call=self._on_upstream_call,
            check_open=self._raise_unless_upstream_lost,
        ).run_upstream()
        codecs = healed_codecs(self._codecs, leg.codecs, leg.our_opus, leg.rtp)
        if codecs is None:
            raise UpstreamAnswerInvalid(
                f"the new upstream leg answered {leg.codecs.primary}, the first "
                f"{self._codecs.upstream.primary}: its audio cannot continue the same stream"
            )
        await self._stop_browser_parking()
        self._raise_unless_upstream_lost()
        self._wire_audio(codecs, previous_down=self._sent_browser)
        async with asyncio.timeout(settings.session.connect_timeout_s):
            connected = await attempt
        if not connected:
            raise UpstreamLegFailed("the new upstream leg failed while connecting")
        self._raise_unless_upstream_lost()
        # Connected, then lost again before this task went on: that loss's signal found
        # the attempt already answered (``_upstream_attempt_over``) and was dropped, so it
        # is looked for here rather than going active on a dead leg.
        pc = self._upstream_pc
        if pc is None or pc.connectionState != "connected":
            raise UpstreamLegFailed("the new upstream leg was lost as it connected")

    def _upstream_attempt_over(self, connected: bool) -> None:
        attempt = self._upstream_attempt
        if attempt is not None and not attempt.done():
            attempt.set_result(connected)

    def _raise_unless_upstream_lost(self) -> None:
        self._raise_if_closing()
        if self._state_now() != "upstream_lost":
            raise BridgeClosed(self._end_reason or "closed")

    def _upstream_healed(self) -> None:
        """upstream_lost → active: the new upstream leg is connected; the clock runs
        again, the page is told, the new upstream session is seeded with the conversation
        so far (as a take-over's: the relay's own transcript and a note to continue)."""
        now = time.monotonic()
        self._set_state("active")
        self._upstream_attempt = None
        gap = self._clock.resume(now)
        if self.recorder is not None:
            self.recorder.mark("upstream_resumed", now)
        self.metrics.upstream_reconnects.inc(outcome="healed")
        log.info(
            "session %s: upstream leg replaced after %.1fs (call %s)",
            self.session_id,
            gap,
            self._upstream_call_id,
        )
        self._talk.upstream_reconnected(gap, self.time_left(now))
        # The clock runs again: the time announcements and the limit are due from now.
        self._supervisor.recheck()
        minted = self._healing_minted
        self._seeding = self._tasks.spawn(
            self._seed_healed(minted.upstream_session_id if minted is not None else None),
            name=f"bridge-seed-healed-{self.session_id}",
        )

    async def _seed_healed(self, upstream_session_id: str | None) -> None:
        # The seed first: the new session hears the candidate from now on, and must not
        # answer without the conversation while the row's write waits for the database.
        call_id = self._upstream_call_id
        await self._talk.seed_healed(self.conversation.items)
        if self._state_now() == "active":
            self._talk.reply_over()  # a wrap-up that waited for the cut reply
        if self._on_upstream_replaced is not None:
            await self._call_hook(
                "on_upstream_replaced", self._on_upstream_replaced(call_id, upstream_session_id)
            )


# The causes of a lost browser leg counted apart (the rest count as ``other``).
# A leg without a packet for longer than this was gone by then (``_browser_went_at``,
# ``_upstream_went_at``):
# well above a packet's interval (20 ms) and the compiled path's copy of its counters (1.5 s).
BROWSER_QUIET_S = 3.0
# The longest a vanished network goes unnoticed: aioice's consent fails after 6 checks
# unanswered, 4 to 6 s apart, after the last answered one.
LOSS_NOTICE_MAX_S = 40.0
_LOSS_CAUSES = frozenset({"disconnected", "failed", "channel_closed", "replaced"})
# The most losses of the upstream leg one session heals (each with its own attempts).
MAX_HEALS = 5


class UpstreamLegFailed(Exception):
    """A new upstream leg (healing a lost one) failed before it was connected."""
