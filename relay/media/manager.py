"""The media bridges of this relay instance: opening, tracking, draining, closing.

The manager is the glue between a bridge and the session layer: it moves the session
to ``connecting`` and ``active`` (registry and database row) as the bridge reaches
those milestones, and finishes it through ``SessionService.finish`` (slot released,
row closed, credit debited) when the bridge ends, whatever ended it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from relay.config import IceConfig, Settings
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.media import fastloop, relay_events, udp
from relay.media.bridge import (
    RETRYABLE_RESUME_REFUSALS,
    Bridge,
    BridgeClosed,
    BridgeSettings,
    EndState,
    ResumeRefused,
    Seed,
    UpstreamAnswerInvalid,
)
from relay.media.capabilities import MediaCapabilities, log_capabilities, probe
from relay.media.ice import gathered_address_count, uses_udp_turn
from relay.media.metrics import MediaMetrics
from relay.media.peers import IceGatherTimeout
from relay.media.port_range import NoMediaPorts, port_range
from relay.media.sdp import InvalidOffer, invalid_offer_error
from relay.memory import MemoryKeeper
from relay.observability.metrics import MetricsRegistry
from relay.recording.service import RecordingService
from relay.sessions.continuity import ContinuityKeeper, new_resume_token, token_matches
from relay.sessions.registry import SessionEntry, SessionRegistry
from relay.sessions.rows import SessionRows, SessionState
from relay.sessions.service import SessionService, upstream_api_error
from relay.tasks import TaskGroup
from relay.upstream.base import MintedSession, UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger("relay.media")

SHUTDOWN_REASON = "relay_shutdown"


class _SessionHooks:
    """A bridge's milestones, applied to the session registry, database and credit."""

    def __init__(self, manager: BridgeManager, entry: SessionEntry) -> None:
        self._manager = manager
        self._entry = entry

    async def on_connecting(self) -> None:
        await self._write_state("connecting")

    async def on_active(self, upstream_call_id: str | None) -> None:
        self._manager.registry.set_state(self._entry.session_id, "active")
        await self._write_state("active", upstream_call_id)

    async def on_upstream_replaced(
        self, upstream_call_id: str | None, upstream_session_id: str | None
    ) -> None:
        # The row names the upstream call (and session) in use: the new one, once healed.
        await self._write_state("active", upstream_call_id, upstream_session_id=upstream_session_id)

    async def on_finished(self, state: EndState, reason: str, duration_s: float) -> None:
        try:
            await self._manager.sessions.finish(
                self._entry, state=state, reason=reason, duration_s=duration_s
            )
        finally:
            self._manager.forget(self._entry.session_id)

    async def _write_state(
        self,
        state: SessionState,
        upstream_call_id: str | None = None,
        *,
        upstream_session_id: str | None = None,
    ) -> None:
        try:
            entry = self._entry
            minted = entry.minted
            if upstream_session_id is None and minted is not None:
                upstream_session_id = minted.upstream_session_id
            await self._manager.session_rows.set_session_state(
                entry.session_id,
                state,
                upstream_call_id=upstream_call_id,
                upstream_session_id=upstream_session_id,
                resume_token_hash=entry.resume_token_hash,
                claim_token=entry.claim_token,
            )
        except DatabaseUnavailable as exc:
            # The row catches up at the end (finish); the interview goes on.
            log.warning(
                "session %s: could not record state %s (%s)", self._entry.session_id, state, exc
            )


def ports_per_exchange(ice: IceConfig, *, addresses: int | None = None) -> int:
    """UDP sockets of the port range one exchange binds at its peak (docs/deploy.md):

        (A + Tb) + 2 × (A + Tu)

    A: host addresses gathered (``ice.host_addresses``, or with it empty the machine's
    addresses as aioice finds them; ``addresses`` overrides, for sizing elsewhere).
    Tb, Tu: 1 when the browser / upstream leg's peer runs a TURN client over UDP, from
    ``ice.servers`` (handed to both legs) or ``turn_urls`` with ``ice.relay_turn``.
    The browser leg has one ICE transport (the browser's offer is bundled); the upstream
    leg gathers two (audio and data channel) until the upstream's answer bundles them.
    Live, one of the upstream's two is closed: (A + Tb) + (A + Tu)."""
    count = gathered_address_count(ice) if addresses is None else addresses
    browser = count + int(uses_udp_turn(ice, "browser"))
    upstream = count + int(uses_udp_turn(ice, "upstream"))
    return browser + 2 * upstream


def check_port_range_size(ice: IceConfig, max_sessions: int) -> str | None:
    """Why the range is too small for ``max_sessions`` exchanges at their peak, or None."""
    ports = port_range(ice.udp_port_min, ice.udp_port_max)
    if ports is None:
        return None
    needed = max_sessions * ports_per_exchange(ice)
    if ports.size >= needed:
        return None
    return (
        f"ice.udp_port_min..udp_port_max has {ports.size} ports; limits.global_max_sessions "
        f"({max_sessions}) × {ports_per_exchange(ice)} ports per exchange needs {needed} "
        "(docs/deploy.md): exchanges beyond that get 503 no_media_ports"
    )


class BridgeManager:
    """Tracks live bridges; ``drain`` and ``close_all`` end them at shut-down."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: SessionService,
        registry: SessionRegistry,
        session_rows: SessionRows,
        upstream: UpstreamClient,
        recordings: RecordingService,
        memory: MemoryKeeper,
        metrics: MetricsRegistry,
        force_decode: bool = False,
        continuity: ContinuityKeeper | None = None,
    ) -> None:
        self.sessions = sessions
        # Writes each interview's progress and transcript (a resume on another member, a
        # take-over from a dead one); None: not kept (resuming stays on this member).
        self.continuity = continuity
        self.registry = registry
        self.session_rows = session_rows
        self.upstream = upstream
        self.recordings = recordings
        self.memory = memory
        # Once per start: which aiortc/aioice adaptations this installation allows; every
        # bridge falls back to aiortc's own path for the others.
        self.capabilities: MediaCapabilities = probe()
        self.settings = BridgeSettings(
            session=settings.session,
            media=settings.media,
            events=settings.events,
            ice=settings.ice,
            capabilities=self.capabilities,
        )
        self.metrics = MediaMetrics(metrics)
        log_capabilities(
            self.capabilities,
            port_range_configured=port_range(settings.ice.udp_port_min, settings.ice.udp_port_max)
            is not None,
        )
        for state in self.capabilities.features:
            self.metrics.capability_available.set(
                1.0 if state.available else 0.0, feature=state.feature.name
            )
        too_small = check_port_range_size(settings.ice, settings.limits.global_max_sessions)
        if too_small is not None:
            log.warning("%s", too_small)
        # Process-wide, like the other aioice adaptations: every relay media socket.
        udp.configure(settings.media.receive_batch_ms / 1000)
        fastloop.configure(
            settings.media.compiled_fast_path,
            self.capabilities,
            threaded=settings.media.forwarding_thread,
            raised=settings.media.forwarding_priority == "raised",
        )
        self.metrics.set_forwarding_path(fastloop.path())
        self._force_decode = force_decode
        self._bridges: dict[str, Bridge] = {}

    def __len__(self) -> int:
        return len(self._bridges)

    def get(self, session_id: str) -> Bridge | None:
        return self._bridges.get(session_id)

    def bridges(self) -> list[Bridge]:
        return list(self._bridges.values())

    def forget(self, session_id: str) -> None:
        if self._bridges.pop(session_id, None) is not None:
            self.metrics.bridges_live.set(len(self._bridges))
            self.memory.session_ended()

    def issue_resume_token(self, entry: SessionEntry) -> str | None:
        """A new resume token for ``entry`` (its hash kept on the entry, written to the row
        with its next state); None when resuming is switched off."""
        if self.settings.session.reconnect_grace_s <= 0:
            return None
        token, token_hash = new_resume_token()
        entry.resume_token_hash = token_hash
        return token

    async def rejoin_seed(self, session_id: str, interview_id: str) -> Seed | None:
        """What a new session of an interview rejoined (its candidate opened the link again
        after an earlier session failed or lost its connection for good) is seeded with:
        the conversation of the interview's earlier sessions, kept while the interview is
        in progress (migration 015), as a take-over seeds its new upstream session. None:
        nothing was said before (or continuity is off: nothing was kept). Read before the
        claim (nothing may await between the claim and the bridge); raises
        ``DatabaseUnavailable``."""
        if self.continuity is None:
            return None
        earlier = await self.continuity.rows.earlier_conversation(interview_id, session_id)
        if not earlier.items:
            return None
        log.info(
            "session %s: a rejoin of interview %s, seeded with %d earlier items",
            session_id,
            interview_id,
            len(earlier.items),
        )
        return Seed(items=earlier.items, charged_s=0.0, gap_s=earlier.gap_s)

    async def open(
        self, entry: SessionEntry, offer_sdp: str, request_id: str, *, seed: Seed | None = None
    ) -> Bridge:
        """Bridge a claimed session; return the started bridge (``bridge.answer`` is the SDP).

        ``seed``: a session taken over from a member that died (relay.cluster.resume): its
        new upstream session is given the conversation so far, its recording continues in
        part ``entry.part``; or a new session of a rejoined interview (``rejoin_seed``): its
        upstream session is given the interview's earlier conversation, its page too.

        Raises ``ApiError``; the session is finished as failed on every error path (its
        slot, row, promised credit and shared lease released, its recorder stopped):
        by the bridge's teardown once the bridge exists, here before that.
        """
        charged = seed.charged_s if seed is not None else 0.0
        if entry.minted is None:
            await self.sessions.finish(
                entry, state="failed", reason="not_minted", duration_s=charged
            )
            raise ApiError(409, "session_not_ready", "This session is not ready for media.")
        started = time.perf_counter()
        bridge = await self._new_bridge(entry, entry.minted, request_id, seed)
        try:
            await bridge.start(offer_sdp)
        except InvalidOffer as exc:
            raise invalid_offer_error(exc) from None
        except (UpstreamTimeout, UpstreamError) as exc:
            raise upstream_api_error(exc) from None
        except UpstreamAnswerInvalid as exc:
            raise ApiError(
                502,
                "upstream_error",
                "The realtime service answered with SDP the relay cannot use.",
                retryable=True,
                details={"stage": "sdp", "upstream_code": "invalid_answer"},
            ) from exc
        except IceGatherTimeout as exc:
            raise ApiError(504, "ice_gather_timeout", str(exc), retryable=True) from None
        except NoMediaPorts:
            raise self._no_media_ports() from None
        except BridgeClosed as exc:
            raise ApiError(
                409, "session_closed", f"The session ended during the exchange ({exc.reason})."
            ) from None
        # (``start`` tore the bridge down on every failure above, and on any other; its
        # answer already announces ``ice.public_address``.)
        try:
            self.metrics.exchange_s.observe(time.perf_counter() - started)
        except BaseException:
            await bridge.close("internal_error", state="failed")
            raise
        return bridge

    async def _new_bridge(
        self, entry: SessionEntry, minted: MintedSession, request_id: str, seed: Seed | None
    ) -> Bridge:
        """A registered, not yet started bridge for ``entry`` (its teardown owns the
        session from here); if it cannot be built, the session is finished here."""
        recorder = None
        continuity = None
        # Resumable only if its client was given a resume token (the candidate page is; an
        # OpenAI-shaped client cannot resume, so its dropped call ends at once).
        if (
            self.continuity is not None
            and self.settings.session.reconnect_grace_s > 0
            and entry.resume_token_hash is not None
        ):
            continuity = self.continuity.session(entry.session_id, entry.claim_token)
        try:
            # An interview created with recording off records none of its sessions.
            recorder = (
                self.recordings.begin(entry.session_id, part=entry.part)
                if entry.recording
                else None
            )
            hooks = _SessionHooks(self, entry)
            bridge = Bridge(
                continuity=continuity,
                resumable=entry.resume_token_hash is not None,
                seed=seed,
                recorder=recorder,
                session_id=entry.session_id,
                request_id=request_id,
                settings=self.settings,
                upstream=self.upstream,
                minted=minted,
                max_duration_s=entry.max_duration_s,
                metrics=self.metrics,
                hooks=hooks,
                force_decode=self._force_decode,
                # Healed in place only for clients given a resume token (the candidate
                # page, the relay's own API): they speak the relay's events. An
                # OpenAI-shaped client builds its history from the upstream's item events,
                # and a healed session announces the conversation again as the new
                # session's seed (it would show it twice), with a second session.created:
                # its dropped call ends as before, and an interview stays open for a new
                # call (docs/openai-compatible.md).
                mint_upstream=self._minter(entry) if entry.resume_token_hash is not None else None,
                on_upstream_replaced=hooks.on_upstream_replaced,
            )
        except BaseException:
            log.exception("session %s: could not set up its bridge", entry.session_id)
            if recorder is not None:
                recorder.stop(None, None)  # nothing recorded: discarded, row and all
            await self.sessions.finish(
                entry,
                state="failed",
                reason="internal_error",
                duration_s=seed.charged_s if seed is not None else 0.0,
            )
            raise
        entry.bridge = bridge
        self._bridges[entry.session_id] = bridge
        self.metrics.bridges_live.set(len(self._bridges))
        return bridge

    def _minter(self, entry: SessionEntry) -> Callable[[str], Awaitable[MintedSession]]:
        """How a lost upstream leg of ``entry`` gets a new upstream session: minted as at
        its start (the same interviewer; the upstream client's timeouts and retries)."""

        async def mint(request_id: str) -> MintedSession:
            return await self.upstream.mint(request_id=request_id, overrides=entry.overrides)

        return mint

    async def resume(self, entry: SessionEntry, resume_token: str, offer_sdp: str) -> str:
        """Resume ``entry``'s bridge on this member with a new browser leg; return the
        answer SDP (the caller then rotates the token: ``issue_resume_token``).

        Raises ``ApiError``: 409 ``resume_token_invalid`` (not the current token: wrong, or
        spent by an earlier resume), 409 ``resume_in_progress`` / ``session_not_resumable``,
        410 ``session_ended`` (it ended meanwhile), 400 ``invalid_offer``, 503
        ``resume_failed`` (the new leg failed at once; the token is still valid) or
        ``resume_unavailable`` (the upstream's leg is being replaced: try again)."""
        bridge = entry.bridge
        if bridge is None or bridge.is_closing():
            raise session_ended_error(bridge.end_reason if bridge is not None else None)
        if not token_matches(resume_token, entry.resume_token_hash):
            raise token_invalid()
        try:
            answer = await bridge.resume(offer_sdp)
        except ResumeRefused as exc:
            status = 503 if exc.code in RETRYABLE_RESUME_REFUSALS else 409
            raise ApiError(status, exc.code, exc.message, retryable=status == 503) from None
        except InvalidOffer as exc:
            raise invalid_offer_error(exc) from None
        except IceGatherTimeout as exc:
            raise ApiError(504, "ice_gather_timeout", str(exc), retryable=True) from None
        except NoMediaPorts:
            raise self._no_media_ports() from None
        except BridgeClosed as exc:
            raise session_ended_error(exc.reason) from None
        return answer

    def refuse_if_no_media_ports(self) -> None:
        """503 ``no_media_ports`` before a session is claimed when the UDP port range has
        fewer free ports than one exchange binds (the session stays usable for a retry).
        A range that runs out half-way through an exchange (ports taken meanwhile) fails
        that exchange the same way, in ``open``."""
        ice = self.settings.ice
        ports = port_range(ice.udp_port_min, ice.udp_port_max)
        if ports is None or not self.capabilities.available("port_range"):
            return  # no range, or one aioice cannot be held to (relay.media.capabilities)
        host = ice.host_addresses[0] if ice.host_addresses else "0.0.0.0"
        if not ports.has_free_ports(host, ports_per_exchange(ice)):
            raise self._no_media_ports()

    def _no_media_ports(self) -> ApiError:
        ice = self.settings.ice
        return ApiError(
            503,
            "no_media_ports",
            f"All UDP media ports ({ice.udp_port_min}-{ice.udp_port_max}) are in use; retry later.",
            retryable=True,
            retry_after_s=ice.no_media_ports_retry_after_s,
        )

    async def drain(self, deadline_s: float) -> None:
        """Wait up to ``deadline_s`` for live bridges to end, then hang up the rest."""
        live = self.bridges()
        if live:
            log.info("draining: waiting up to %.0fs for %d bridges", deadline_s, len(live))
            waits = TaskGroup("bridge-drain", log=log)
            ends = [waits.spawn(b.wait_closed(), name=f"drain-{b.session_id}") for b in live]
            try:
                await asyncio.wait(ends, timeout=max(0.0, deadline_s))
            finally:
                await waits.close()
        await self.close_all()

    async def close_all(self, reason: str = SHUTDOWN_REASON) -> None:
        """Hang up every live bridge and wait until each session is finished."""
        live = self.bridges()
        if not live:
            return
        log.info("closing %d bridges (%s)", len(live), reason)
        # Failed, not ended: the relay stopped them, not the candidate nor the time, so an
        # interview stays open for its candidate to go on through another member or the
        # restarted relay (interviews.rejoin_window_s) instead of completing cut short.
        results = await asyncio.gather(
            *(b.close(reason, state="failed") for b in live), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.error("closing a bridge failed: %s: %s", type(result).__name__, result)


def token_invalid() -> ApiError:
    return ApiError(
        409,
        "resume_token_invalid",
        "This resume token is not the session's current one (wrong, or already used).",
    )


def session_ended_error(reason: str | None) -> ApiError:
    """410 ``session_ended``: there is nothing left to resume (its end reason in details,
    and, where the relay decided it, the ``relay.session.ending`` the page would have been
    sent: a page whose data channel closed before that event arrived reads it here)."""
    details: dict[str, object] = {"end_reason": reason}
    announced = relay_events.page_reason(reason) if reason is not None else None
    if announced is not None:
        ending = relay_events.ending(announced)
        details["ending"] = {"reason": ending["reason"], "message": ending["message"]}
    return ApiError(
        410,
        "session_ended",
        "This interview session has ended and cannot be resumed.",
        details=details,
    )
