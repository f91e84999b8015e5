"""Invites: an interview's candidate link (``<public URL>/#invite=ri_…``) as a credential.

The invite token is 32 random bytes shown once (in the interview's ``candidate_url``);
the ``interviews`` table (migration 007) keeps its SHA-256. It opens the candidate
endpoints for that one interview: sessions started with it are the interview's, with its
interviewer (instructions, voice, language) and its budget (``max_duration_s`` less the
seconds its sessions have used), never the user's own seconds. A session may start while
the interview is ``scheduled`` or ``in_progress`` and before ``expires_at``
(relay.admission.service.check_open); after that the invite still reads and ends the
interview's own sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from relay.admission.users import UserRecord
from relay.db import Store

OPEN_STATUSES = ("scheduled", "in_progress")

# The seconds an interview's sessions have used: the debits of its closed sessions (so
# every path that closes a session, crash recovery included, counts without a second
# write).
USED_SECONDS_SQL = """COALESCE((SELECT SUM(s.debited_seconds) FROM interview_sessions s
    WHERE s.interview_id = i.id AND s.state IN ('ended', 'failed')), 0)"""


@dataclass(frozen=True)
class InterviewGrant:
    """What an invite allows: the interview's interviewer and what is left of its budget."""

    id: str
    status: str
    instructions: str = field(repr=False)
    voice: str | None
    language: str | None
    max_duration_s: int
    recording: bool
    expires_at: datetime
    budget_left_s: float

    def effective_status(self, now: datetime | None = None) -> str:
        """The status, with an open interview past ``expires_at`` counted as expired
        (housekeeping writes that a moment later)."""
        if self.status in OPEN_STATUSES and (now or datetime.now(UTC)) >= self.expires_at:
            return "expired"
        return self.status


def grant_from_row(row: asyncpg.Record) -> InterviewGrant:
    return InterviewGrant(
        id=row["interview_id"],
        status=row["status"],
        instructions=row["instructions"],
        voice=row["voice"],
        language=row["language"],
        max_duration_s=int(row["max_duration_s"]),
        recording=bool(row["recording"]),
        expires_at=row["expires_at"],
        budget_left_s=max(0.0, float(row["budget_left_s"])),
    )


class InviteRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def find(self, invite_hash: str) -> tuple[UserRecord, InterviewGrant] | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"""SELECT i.id AS interview_id, i.status, i.instructions, i.voice, i.language,
                           i.max_duration_s, i.recording, i.expires_at,
                           i.max_duration_s - {USED_SECONDS_SQL} AS budget_left_s,
                           u.id, u.email, u.active, u.remaining_seconds
                    FROM interviews i JOIN users u ON u.id = i.user_id
                    WHERE i.invite_token_hash = $1""",
                invite_hash,
            )

        row = await self._store.run("invite_by_token", op)
        if row is None:
            return None
        user = UserRecord(
            id=row["id"],
            email=row["email"],
            active=row["active"],
            remaining_seconds=row["remaining_seconds"],
        )
        return user, grant_from_row(row)
