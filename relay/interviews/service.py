"""Interviews as the API and the command line use them: create (with the candidate link),
read, list, cancel, a new candidate link, and housekeeping's expiry."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from relay.admission.tokens import hash_token, new_invite_token, unusable_token_hash
from relay.config import InterviewsConfig
from relay.db import Store, Within
from relay.interviews.models import (
    CandidateOut,
    Interview,
    InterviewCreate,
    InterviewRecording,
    InterviewSession,
)
from relay.interviews.rows import OPEN, Closed, InterviewRecord, InterviewRows, NewInterview, Notify

log = logging.getLogger("relay.interviews")


def new_interview_id() -> str:
    return "iv_" + secrets.token_hex(16)


def candidate_url(base_url: str, invite: str) -> str:
    """The candidate's link: the page, with the invite in the fragment (never sent to a
    server, removed from the address bar by the page once read)."""
    return f"{base_url.rstrip('/')}/#invite={invite}"


def effective_status(record: InterviewRecord, now: datetime | None = None) -> str:
    """Its status, with an open interview past ``expires_at`` counted as expired
    (housekeeping writes that a moment later), as its invite sees it."""
    assert record.expires_at is not None
    if record.status in OPEN and (now or datetime.now(UTC)) >= record.expires_at:
        return "expired"
    return record.status


def view(
    record: InterviewRecord,
    *,
    url: str | None = None,
    sessions: list[InterviewSession] | None = None,
    recordings: list[InterviewRecording] | None = None,
) -> Interview:
    assert record.expires_at is not None and record.created_at is not None
    return Interview(
        id=record.id,
        status=record.status,  # type: ignore[arg-type]
        candidate=CandidateOut(email=record.email, name=record.name, user_id=record.user_id),
        instructions=record.instructions,
        voice=record.voice,
        language=record.language,
        max_duration_s=record.max_duration_s,
        used_seconds=record.used_seconds,
        remaining_seconds=max(0, record.max_duration_s - record.used_seconds),
        recording=record.recording,
        metadata=record.metadata,
        expires_at=record.expires_at,
        end_reason=record.end_reason,
        created_at=record.created_at,
        started_at=record.started_at,
        ended_at=record.ended_at,
        created_by=record.created_by,
        candidate_url=url,
        sessions=sessions,
        recordings=recordings,
    )


class InterviewService:
    def __init__(self, config: InterviewsConfig, store: Store, notify: Notify) -> None:
        """``notify``: sends a cluster command inside a transaction (relay.cluster.bus)."""
        self.config = config
        self.rows = InterviewRows(store)
        self._store = store
        self._notify = notify

    async def create(
        self,
        spec: InterviewCreate,
        *,
        created_by: str,
        base_url: str,
        within: Within[tuple[InterviewRecord, str]] | None = None,
    ) -> tuple[InterviewRecord, str]:
        """The new interview and its candidate link (shown once); ``within`` is given both
        in the interview's transaction (relay.db.within). Raises ``CandidateInactive``
        (relay.interviews.rows)."""
        invite = new_invite_token()
        expires_at = spec.expires_at or datetime.now(UTC) + timedelta(
            seconds=self.config.default_expires_s
        )
        new = NewInterview(
            interview_id=new_interview_id(),
            email=spec.candidate.email,
            name=spec.candidate.name,
            invite_hash=hash_token(invite),
            user_token_hash=unusable_token_hash(),
            instructions=spec.instructions,
            voice=spec.voice,
            language=spec.language,
            max_duration_s=spec.max_duration_s or self.config.default_max_duration_s,
            recording=spec.recording,
            metadata=spec.metadata,
            expires_at=expires_at,
            created_by=created_by,
        )
        url = candidate_url(base_url, invite)

        async def with_url(conn: asyncpg.Connection, record: InterviewRecord) -> None:
            assert within is not None
            await within(conn, (record, url))

        record = await self.rows.create(new, None if within is None else with_url)
        log.info("interview %s created by %s", record.id, created_by)
        return record, url

    async def detail(self, interview_id: str) -> Interview | None:
        """One interview with its sessions and recordings."""
        record = await self.rows.get(interview_id)
        if record is None:
            return None

        async def op(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
            sessions = await conn.fetch(
                """SELECT id, state, created_at, connected_at, ended_at, end_reason,
                          duration_seconds
                   FROM interview_sessions WHERE interview_id = $1
                   ORDER BY created_at DESC, id DESC LIMIT 100""",
                interview_id,
            )
            recordings = await conn.fetch(
                """SELECT r.id, r.session_id, r.status, r.duration_seconds, r.created_at
                   FROM recordings r JOIN interview_sessions s ON s.id = r.session_id
                   WHERE s.interview_id = $1 ORDER BY r.created_at DESC, r.id DESC LIMIT 100""",
                interview_id,
            )
            return list(sessions), list(recordings)

        sessions, recordings = await self._store.run("interview_detail", op)
        return view(
            record,
            sessions=[
                InterviewSession(
                    session_id=s["id"],
                    state=s["state"],
                    created_at=s["created_at"],
                    connected_at=s["connected_at"],
                    ended_at=s["ended_at"],
                    end_reason=s["end_reason"],
                    duration_seconds=s["duration_seconds"],
                )
                for s in sessions
            ],
            recordings=[
                InterviewRecording(
                    id=r["id"],
                    session_id=r["session_id"],
                    status=r["status"],
                    duration_s=r["duration_seconds"],
                    created_at=r["created_at"],
                    audio_url=f"/api/recordings/{r['id']}/audio",
                    transcript_url=f"/api/recordings/{r['id']}/transcript",
                )
                for r in recordings
            ],
        )

    async def cancel(
        self, interview_id: str, within: Within[tuple[InterviewRecord, bool]] | None = None
    ) -> tuple[InterviewRecord, bool] | None:
        """Cancel (its live sessions end with reason ``cancelled`` wherever they are held);
        see ``InterviewRows.cancel``."""
        result = await self.rows.cancel(interview_id, self._notify, within)
        if result is not None and result[1]:
            log.info("interview %s cancelled", interview_id)
        return result

    async def new_link(
        self,
        interview_id: str,
        *,
        base_url: str,
        within: Within[tuple[InterviewRecord, str | None]] | None = None,
    ) -> tuple[InterviewRecord, str | None] | None:
        """A new candidate link for an open interview; the old one stops opening anything
        at once (sessions already live keep running). Returns the interview and its new
        link (None: the interview is not open, nothing changed); None: no such interview.
        ``within`` is given the same in the replacement's transaction."""
        invite = new_invite_token()
        url = candidate_url(base_url, invite)

        async def with_url(conn: asyncpg.Connection, found: tuple[InterviewRecord, bool]) -> None:
            assert within is not None
            await within(conn, (found[0], url if found[1] else None))

        result = await self.rows.replace_invite(
            interview_id, hash_token(invite), None if within is None else with_url
        )
        if result is None:
            return None
        record, replaced = result
        if not replaced:
            return record, None
        log.info("interview %s has a new candidate link", interview_id)
        return record, url

    async def close_due(self) -> list[Closed]:
        closed = await self.rows.close_due(rejoin_window_s=self.config.rejoin_window_s)
        for item in closed:
            log.info("interview %s %s", item.id, item.status)
        return closed
