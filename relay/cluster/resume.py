"""Resuming an interview whose browser leg dropped, on whichever member the resume lands.

``POST /api/sessions/{id}/resume`` (relay.web.routes_resume) hands the checked request to
``ResumeService.resume``, which serves it in one of three ways:

1. **Here**: this member holds the session's bridge. The bridge answers the new leg's
   offer on the same upstream call, conversation and recording
   (``BridgeManager.resume``); the token is rotated.
2. **Forwarded**: another member holds it and is alive (in the cluster view). The request
   goes, as it came (the candidate's credential, the body), to that member's address
   (``cluster.advertise_address``), and its answer comes back as it is. A forwarded
   request (``X-Relay-Forwarded-By``) is forwarded again only between workers that share
   the holder's address (``MAX_FORWARD_HOPS``), and never taken over unless the row says
   its holder is lost (3.).
3. **Taken over**: the holder is gone (out of the cluster view, or its address refuses
   connections: a process killed outright), or the row says the process that held it is
   (``holder_lost_at``: its member was removed as dead, or a worker was started again after a
   crash, relay.sessions.rows). This member moves the row to itself in one
   conditional UPDATE (``ContinuityRows.take_over``: the token must match, and only one
   member can win), mints a new upstream session, and bridges it seeded with the
   conversation so far (``Seed``: text items from ``session_transcript``); the recording
   continues as the next part. The time charged on the dead member (``used_seconds``,
   written every few seconds) is carried over, so the limit and the debit cover the whole
   interview.

Every refusal is an ``ApiError``: 404 unknown (or someone else's), 410 ``session_ended``,
409 ``session_not_resumable`` / ``resume_token_invalid`` / ``resume_in_progress``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.admission.service import Caller, database_error
from relay.cluster.members import DEAD_AFTER_HEARTBEATS
from relay.config import Settings
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.media.bridge import Seed
from relay.media.manager import BridgeManager, session_ended_error, token_invalid
from relay.sessions.continuity import (
    ContinuityKeeper,
    HangUpRequested,
    InterviewClosed,
    ResumeTarget,
    hash_resume_token,
    new_resume_token,
    token_matches,
)
from relay.sessions.registry import SessionEntry, SessionRegistry
from relay.sessions.service import SessionService, upstream_api_error
from relay.sessions.shared_state import new_claim_token
from relay.upstream.base import UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger("relay.cluster")

# Set on a resume forwarded by a member to the holder, with how many times it was.
FORWARDED_BY_HEADER = "X-Relay-Forwarded-By"
FORWARD_HOPS_HEADER = "X-Relay-Forward-Hops"
# Workers of one `relay serve --workers N` share one address (the port is shared): a resume
# forwarded there lands on any of them, and one that is not the holder sends it on, at most
# this many times in all (each hop reaches the holder with a chance of 1 in N).
MAX_FORWARD_HOPS = 8
# Connecting to the holder: a process that is gone refuses at once; a host that is gone
# does not answer at all.
FORWARD_CONNECT_TIMEOUT_S = 2.0
# The holder answers the new leg's offer (its ICE gathering included).
FORWARD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Resumed:
    """Served by this member: the answer and the session's next resume token."""

    answer_sdp: str
    resume_token: str


@dataclass(frozen=True)
class Forwarded:
    """Served by the holder: its status and body, passed on as they are."""

    status: int
    body: Any


class _HolderUnreachable(Exception):
    """The holder's address refused the connection or did not answer it."""


class ResumeService:
    def __init__(
        self,
        settings: Settings,
        *,
        instance_id: str,
        address: str,
        registry: SessionRegistry,
        sessions: SessionService,
        bridges: BridgeManager,
        continuity: ContinuityKeeper,
        upstream: UpstreamClient,
    ) -> None:
        self._settings = settings
        self._instance_id = instance_id
        # This member's address in the cluster view (workers of one port share it).
        self._address = address
        self._registry = registry
        self._sessions = sessions
        self._bridges = bridges
        self._continuity = continuity
        self._upstream = upstream
        self._http: aiohttp.ClientSession | None = None
        self._dead_after_s = settings.cluster.heartbeat_interval_s * DEAD_AFTER_HEARTBEATS

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def resume(
        self,
        session_id: str,
        caller: Caller,
        resume_token: str,
        offer_sdp: str,
        *,
        request_id: str,
        authorization: str,
        forwarded_by: str | None,
        hops: int = 0,
    ) -> Resumed | Forwarded:
        """Serve one resume (see the module docstring). ``forwarded_by``, ``hops``: the
        member that forwarded it here, and how many times it has been forwarded."""
        entry = self._registry.get(session_id)
        if entry is not None and caller.owns(entry.user_id, entry.interview_id):
            if entry.bridge is not None:
                return await self._here(entry, resume_token, offer_sdp)
            raise not_resumable("This session was never connected; exchange it instead.")
        target = await self._target(session_id, caller)
        if target is None:
            raise ApiError(404, "session_not_found", "No such session for this user.")
        if target.state in ("ended", "failed"):
            raise session_ended_error(target.end_reason)
        if target.state == "pending" or not target.resume_token_hash:
            raise not_resumable("This session cannot be resumed.")
        if not token_matches(resume_token, target.resume_token_hash):
            raise token_invalid()
        if target.holder_lost_s is not None:
            # The process that held it is gone, and nothing holds a copy: its member was
            # removed as dead, or it was a worker started again after a crash (the same
            # member id, alive, but holding nothing). Whichever member the resume reaches
            # takes it over, forwarded or not: forwarding would only look for a holder that
            # is not there, and the take-over's conditional UPDATE lets one member win.
            return await self._take_over(
                session_id, caller, resume_token, offer_sdp, target, request_id=request_id
            )
        shared_address = target.holder_address == self._address
        if (
            target.holder == self._instance_id
            or (forwarded_by is not None and not shared_address)
            or hops >= MAX_FORWARD_HOPS
        ):
            # Held here by the row and not by this process (it is ending), or forwarded
            # here by a member that took this one for the holder: ask again shortly.
            raise unavailable("The session is moving between servers; try again.")
        if self._holder_alive(target):
            assert target.holder_address is not None
            try:
                return await self._forward(
                    target.holder_address,
                    session_id,
                    resume_token,
                    offer_sdp,
                    request_id=request_id,
                    passed_on_id=request_id if forwarded_by is None else first_id(request_id),
                    authorization=authorization,
                    hops=hops + 1,
                )
            except _HolderUnreachable as exc:
                log.warning(
                    "session %s: its member %s does not answer (%s); taking it over",
                    session_id,
                    target.holder,
                    exc,
                )
        if forwarded_by is not None:
            # A worker beside the holder: the holder's copy is not this one's to take over.
            raise unavailable("The session is moving between servers; try again.")
        return await self._take_over(
            session_id, caller, resume_token, offer_sdp, target, request_id=request_id
        )

    # ------------------------------------------------------------------ here
    async def _here(self, entry: SessionEntry, resume_token: str, offer_sdp: str) -> Resumed:
        answer = await self._bridges.resume(entry, resume_token, offer_sdp)
        token = self._bridges.issue_resume_token(entry)
        assert token is not None and entry.resume_token_hash is not None  # it resumed
        try:
            await self._continuity.rows.set_resume_token(
                entry.session_id,
                entry.resume_token_hash,
                old_hash=hash_resume_token(resume_token),
                claim_token=entry.claim_token,
            )
        except DatabaseUnavailable as exc:
            # This member checks its own copy; only a resume elsewhere needs the row.
            log.warning("session %s: resume token not written (%s)", entry.session_id, exc.code)
        log.info("session %s: resumed here", entry.session_id)
        return Resumed(answer, token)

    async def _target(self, session_id: str, caller: Caller) -> ResumeTarget | None:
        try:
            # Whose the session is, as Caller.owns says it (an invite: its interview's only).
            interview_id = caller.interview.id if caller.interview is not None else None
            return await self._continuity.rows.resume_target(
                session_id, caller.user.id, interview_id
            )
        except DatabaseUnavailable as exc:
            raise database_error(exc, self._settings.database.retry_after_s) from exc

    def _holder_alive(self, target: ResumeTarget) -> bool:
        age = target.holder_heartbeat_age_s
        return target.holder_address is not None and age is not None and age < self._dead_after_s

    # ------------------------------------------------------------------ forwarded
    async def _forward(
        self,
        address: str,
        session_id: str,
        resume_token: str,
        offer_sdp: str,
        *,
        request_id: str,
        passed_on_id: str,
        authorization: str,
        hops: int,
    ) -> Forwarded:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=FORWARD_TIMEOUT_S, sock_connect=FORWARD_CONNECT_TIMEOUT_S
                ),
                # A connection of its own each time: workers sharing a port are reached
                # through new connections (a kept-alive one would go back to the same).
                connector=aiohttp.TCPConnector(force_close=True),
            )
        url = f"{address.rstrip('/')}/api/sessions/{session_id}/resume"
        headers = {
            "Authorization": authorization,
            FORWARDED_BY_HEADER: self._instance_id,
            FORWARD_HOPS_HEADER: str(hops),
            # The holder's own request id ends with the one of the member the client
            # reached, however many workers it went through: one resume, one id to grep.
            "X-Request-ID": passed_on_id,
        }
        body = {"resume_token": resume_token, "type": "offer", "sdp": offer_sdp}
        log.info("[%s] RESUME_FORWARDED to %s", request_id, address)
        try:
            async with self._http.post(url, json=body, headers=headers) as response:
                try:
                    answer: Any = await response.json(content_type=None)
                except ValueError:
                    answer = None
                if not isinstance(answer, dict):
                    raise ApiError(
                        502,
                        "resume_forward_failed",
                        "The server holding this session answered unexpectedly; try again.",
                        retryable=True,
                    )
                return Forwarded(response.status, answer)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _HolderUnreachable(type(exc).__name__) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # It was reached and then failed: it may have served the resume; not taken
            # over from a member that may be alive. The page tries again.
            log.warning("session %s: forwarded resume failed (%s)", session_id, exc)
            raise unavailable("The server holding it did not answer; try again.") from None

    # ------------------------------------------------------------------ taken over
    async def _take_over(
        self,
        session_id: str,
        caller: Caller,
        resume_token: str,
        offer_sdp: str,
        target: ResumeTarget,
        *,
        request_id: str,
    ) -> Resumed:
        self._sessions.refuse_if_draining()
        self._bridges.refuse_if_no_media_ports()
        started = time.monotonic()
        token, token_hash = new_resume_token()
        claim_token = new_claim_token()
        rows = self._continuity.rows
        try:
            taken = await rows.take_over(
                session_id,
                caller.user.id,
                old_hash=hash_resume_token(resume_token),
                new_hash=token_hash,
                holder=target.holder,
                instance=self._instance_id,
                claim_token=claim_token,
            )
        except DatabaseUnavailable as exc:
            raise database_error(exc, self._settings.database.retry_after_s) from exc
        except InterviewClosed as exc:
            log.info("session %s: its interview closed while no member held it", session_id)
            raise session_ended_error(exc.reason) from None
        except HangUpRequested as exc:
            log.info("session %s: hung up (%s) while no member held it", session_id, exc.reason)
            try:
                await self._sessions.close_unheld(
                    session_id, reason=exc.reason, duration_s=exc.used_seconds
                )
            except DatabaseUnavailable as db_exc:
                raise database_error(db_exc, self._settings.database.retry_after_s) from db_exc
            raise session_ended_error(exc.reason) from None
        if taken is None:
            # Another member took it over first, or the token was spent meanwhile.
            raise token_invalid()
        log.warning(
            "session %s: taken over from %s (part %d, %.0fs already charged)",
            session_id,
            target.holder,
            taken.part,
            taken.used_seconds,
        )
        entry = self._registry.adopt(
            SessionEntry(
                session_id=session_id,
                user_id=caller.user.id,
                token_hash=taken.token_hash,
                request_id=taken.request_id,
                max_duration_s=taken.max_duration_s,
                expires_at=taken.expires_at,
                credit_s=taken.remaining_seconds,
                state="connecting",
                email=caller.user.email,
                # The lease the dead member renewed is this member's to renew and release.
                lease=True,
                claim_token=claim_token,
                resume_token_hash=token_hash,
                part=taken.part,
                interview_id=taken.interview_id,
                recording=taken.recording,
                overrides=taken.overrides,
            )
        )
        charged = taken.used_seconds
        try:
            items = await rows.transcript(session_id)
            if taken.interview_id is not None:
                # A rejoined interview's session: what its earlier sessions said first, as
                # its own upstream session was seeded with it (relay.media.manager).
                earlier = await rows.earlier_conversation(taken.interview_id, session_id)
                items = [*earlier.items, *items]
            entry.minted = await self._upstream.mint(
                request_id=request_id, overrides=taken.overrides
            )
        except (UpstreamTimeout, UpstreamError) as exc:
            reason = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
            await self._sessions.finish(entry, state="failed", reason=reason, duration_s=charged)
            raise upstream_api_error(exc) from exc
        except DatabaseUnavailable as exc:
            await self._sessions.finish(entry, state="failed", reason=exc.code, duration_s=charged)
            raise database_error(exc, self._settings.database.retry_after_s) from exc
        except BaseException as exc:
            reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error"
            await self._sessions.finish(entry, state="failed", reason=reason, duration_s=charged)
            raise
        if self._registry.get(session_id) is not entry:
            # Ended while its new upstream session was minted (shut-down, revoked, ...).
            raise session_ended_error(entry.end_reason)
        lost_s = target.holder_lost_s
        if lost_s is None:
            lost_s = target.holder_heartbeat_age_s or 0.0
        away = lost_s + (time.monotonic() - started)
        seed = Seed(items=tuple(items), charged_s=charged, gap_s=away)
        bridge = await self._bridges.open(entry, offer_sdp, request_id, seed=seed)
        assert bridge.answer is not None
        return Resumed(bridge.answer, token)


def first_id(request_id: str) -> str:
    """The request id a forwarded request came with: this member's own id is prefixed to
    it (``<own>.<incoming>``, relay.web.middleware; the own part has no dot). Passed on
    as it came: prefixing again at each hop would soon exceed the length a member accepts,
    and the next one would drop it."""
    return request_id.partition(".")[2] or request_id


def unavailable(message: str) -> ApiError:
    return ApiError(503, "resume_unavailable", message, retryable=True, retry_after_s=1)


def not_resumable(message: str) -> ApiError:
    return ApiError(409, "session_not_resumable", message)
