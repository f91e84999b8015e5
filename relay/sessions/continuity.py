"""What lets an interview outlive its browser leg, and the member holding it.

* **Resume tokens.** The exchange's answer, and every resume's, carries a new
  ``rs_<43 urlsafe>`` token; only its SHA-256 is kept (the registry entry and the
  session row's ``resume_token_hash``). A resume needs the candidate's credential *and*
  the current token: neither alone can take a live session over. A token is spent by the
  resume that succeeds with it (the answer carries the next one); a failed attempt leaves
  it valid for another.
* **Progress.** The seconds charged so far (``used_seconds``) and the conversation so far
  (``session_transcript``, text items) are written as the interview goes, so that a
  member taking the session over from a dead one charges the time already used and seeds
  its new upstream session with the conversation. An interview's conversation is kept past
  its sessions' ends while the interview is in progress (migration 015), so that the new
  session of a candidate who rejoins it is seeded the same way (``earlier_conversation``).
* **Taking over.** One conditional UPDATE moves a live session from a dead member to this
  one, if the token matches and nobody took it first; it rotates the token and writes a
  new claim, so the old holder (were it alive after all) can no longer close or debit the
  row, and its reconciliation ends its copy (``taken_over``).

The orchestration (local resume, forwarding to the holder, take-over) is
relay.cluster.resume; the bridge's side is relay.media.bridge (``browser_lost``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relay.db import DatabaseUnavailable, Store
from relay.media.conversation import TranscriptItem
from relay.observability.metrics import MetricsRegistry
from relay.tasks import TaskGroup
from relay.upstream.base import SessionOverrides

log = logging.getLogger("relay.sessions")

# How long progress handed in waits for the progress of other sessions to share its write.
PROGRESS_FLUSH_S = 2.0

RESUME_TOKEN_PREFIX = "rs_"
_RESUME_TOKEN = re.compile(r"rs_[A-Za-z0-9_-]{43}")


def new_resume_token() -> tuple[str, str]:
    """A new resume token and its hash."""
    token = RESUME_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_resume_token(token)


def hash_resume_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_resume_token(value: object) -> bool:
    """Whether ``value`` has the form of ``new_resume_token()``'s (checked before any use)."""
    return isinstance(value, str) and _RESUME_TOKEN.fullmatch(value) is not None


def token_matches(token: str, expected_hash: str | None) -> bool:
    """``token`` is the one whose hash is ``expected_hash`` (compared in constant time)."""
    if not expected_hash:
        return False
    return hmac.compare_digest(hash_resume_token(token), expected_hash)


@dataclass(frozen=True)
class ResumeTarget:
    """What a member that does not hold a session reads of it to serve a resume."""

    state: str
    end_reason: str | None
    holder: str
    resume_token_hash: str | None
    # The holder's address in the cluster view, and seconds since its last heartbeat
    # (None: it left the view, e.g. removed as dead).
    holder_address: str | None
    holder_heartbeat_age_s: float | None
    # Seconds since the process holding it was found gone (``holder_lost_at``: removed as a
    # dead member, or a worker started again after a crash); None: not lost.
    holder_lost_s: float | None = None


@dataclass(frozen=True)
class TakenOver:
    """A live session this member took over from a dead one (the row now names it)."""

    user_id: int
    token_hash: str
    active: bool
    remaining_seconds: int
    request_id: str
    expires_at: datetime
    max_duration_s: float
    used_seconds: float
    part: int
    # The interview it belongs to (its budget, its status), and whether it is recorded.
    interview_id: str | None = None
    recording: bool = True
    overrides: SessionOverrides | None = None


@dataclass(frozen=True)
class EarlierConversation:
    """What an interview's earlier sessions said (``ContinuityRows.earlier_conversation``)."""

    items: tuple[TranscriptItem, ...]
    # Seconds since the last of them ended (the candidate's time without an interviewer).
    gap_s: float


class InterviewClosed(Exception):
    """The session's interview was closed while no member held the session (its cancel's
    command to end it reached nobody): the take-over closed the row instead."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


class HangUpRequested(Exception):
    """The session was hung up (its candidate, the operator or an admin key) while no
    member held it: the hang-up is written on its live row (``SessionRows.request_hangup``)
    and the take-over closes it instead of moving it. ``used_seconds``: what was charged
    until its holder was lost."""

    def __init__(self, reason: str, used_seconds: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.used_seconds = used_seconds


class ContinuityRows:
    """The statements of continuity (``interview_sessions`` columns of migration 008 and
    ``session_transcript``)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def save_progress(self, progress: Mapping[str, tuple[float, str | None]]) -> None:
        """The seconds charged so far of each live session (id → seconds, its claim token),
        in one statement: a row moves only while live and, with a token, still held."""
        ids = list(progress)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """UPDATE interview_sessions AS s SET used_seconds = p.used_s
                   FROM unnest($1::text[], $2::float8[], $3::text[])
                        AS p(id, used_s, claim_token)
                   WHERE s.id = p.id AND s.state IN ('connecting', 'active')
                     AND (p.claim_token IS NULL OR s.claim_token = p.claim_token)""",
                ids,
                [progress[i][0] for i in ids],
                [progress[i][1] for i in ids],
            )

        await self._store.run("save_progress", op)

    async def add_transcript_item(self, session_id: str, item: TranscriptItem) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                # Only while the session is live: its end deletes the text (migration
                # 013), and an item written late must not outlive it.
                """INSERT INTO session_transcript (session_id, position, role, text, at_s)
                   SELECT $1, $2, $3, $4, $5 FROM interview_sessions
                   WHERE id = $1 AND state IN ('pending', 'connecting', 'active')
                   -- Racing the session's end: this waits for it (then finds it ended), or
                   -- the end waits for this insert, and its trigger then deletes it.
                   FOR SHARE
                   ON CONFLICT DO NOTHING""",
                session_id,
                item.position,
                item.role,
                item.text,
                item.at_s,
            )

        await self._store.run("add_transcript_item", op)

    async def purge_ended(self, limit: int) -> int:
        """Delete up to ``limit`` items no rejoin can need: of sessions that have ended,
        unless their interview is still in progress (what sessions left before migration
        013's trigger deleted them at the end, and what an interview's close racing its
        session's end left, migration 015); how many were deleted."""

        async def op(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(
                """DELETE FROM session_transcript WHERE ctid IN (
                       SELECT t.ctid FROM session_transcript t
                       JOIN interview_sessions s ON s.id = t.session_id
                       LEFT JOIN interviews i ON i.id = s.interview_id
                       WHERE s.state IN ('ended', 'failed')
                         AND i.status IS DISTINCT FROM 'in_progress'
                       LIMIT $1)""",
                limit,
            )
            return int(status.split()[-1])

        return await self._store.run("purge_ended_transcripts", op)

    async def transcript(self, session_id: str) -> list[TranscriptItem]:
        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                """SELECT position, role, text, at_s FROM session_transcript
                   WHERE session_id = $1 ORDER BY position""",
                session_id,
            )
            return rows

        return [
            TranscriptItem(r["role"], r["text"], float(r["at_s"]), int(r["position"]))
            for r in await self._store.run("read_transcript", op)
        ]

    async def earlier_conversation(self, interview_id: str, session_id: str) -> EarlierConversation:
        """The conversation of ``interview_id``'s sessions created before ``session_id``
        that have ended (kept while the interview is in progress, migration 015), in order:
        each session's items in their order, the sessions by their start. Their positions
        are -n..-1, so that they come before whatever ``session_id`` says (its own positions
        start at 0, or after those of a part before a take-over), whichever they were."""

        async def op(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], float | None]:
            rows: list[asyncpg.Record] = await conn.fetch(
                """SELECT t.role, t.text, t.at_s
                   FROM session_transcript t JOIN interview_sessions s ON s.id = t.session_id
                   WHERE s.interview_id = $1 AND s.id <> $2 AND s.state IN ('ended', 'failed')
                     AND s.created_at <= (SELECT created_at FROM interview_sessions
                                          WHERE id = $2 AND interview_id = $1)
                   ORDER BY s.created_at, s.id, t.position""",
                interview_id,
                session_id,
            )
            gap: float | None = None
            if rows:
                gap = await conn.fetchval(
                    """SELECT EXTRACT(EPOCH FROM now() - max(ended_at))::float8
                       FROM interview_sessions
                       WHERE interview_id = $1 AND id <> $2 AND state IN ('ended', 'failed')""",
                    interview_id,
                    session_id,
                )
            return rows, gap

        rows, gap = await self._store.run("read_earlier_conversation", op)
        first = -len(rows)
        items = tuple(
            TranscriptItem(r["role"], r["text"], float(r["at_s"]), first + index)
            for index, r in enumerate(rows)
        )
        return EarlierConversation(items, max(0.0, gap or 0.0))

    async def set_resume_token(
        self, session_id: str, new_hash: str, *, old_hash: str | None, claim_token: str | None
    ) -> bool:
        """Rotate the row's token (from ``old_hash``; None: whatever it was) while this
        member's claim holds the live row; False if it does not."""

        async def op(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(
                """UPDATE interview_sessions SET resume_token_hash = $2
                   WHERE id = $1 AND state IN ('connecting', 'active')
                     AND ($3::text IS NULL OR resume_token_hash = $3)
                     AND ($4::text IS NULL OR claim_token = $4)""",
                session_id,
                new_hash,
                old_hash,
                claim_token,
            )
            return status.endswith(" 1")

        result: bool = await self._store.run("rotate_resume_token", op)
        return result

    async def resume_target(
        self, session_id: str, user_id: int, interview_id: str | None = None
    ) -> ResumeTarget | None:
        """The row of the user's session and its holder's place in the cluster view.
        ``interview_id``: the caller is that interview's invite, which opens that
        interview's sessions only (not the same candidate's other interviews')."""

        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                """SELECT s.state, s.end_reason, s.relay_instance, s.resume_token_hash,
                          m.address,
                          EXTRACT(EPOCH FROM now() - m.heartbeat_at)::float8 AS heartbeat_age,
                          EXTRACT(EPOCH FROM now() - s.holder_lost_at)::float8 AS lost_age
                   FROM interview_sessions s
                   LEFT JOIN relay_members m ON m.id = s.relay_instance
                   WHERE s.id = $1 AND s.user_id = $2
                     AND ($3::text IS NULL OR s.interview_id = $3)""",
                session_id,
                user_id,
                interview_id,
            )
            return row

        row = await self._store.run("resume_target", op)
        if row is None:
            return None
        age, lost = row["heartbeat_age"], row["lost_age"]
        return ResumeTarget(
            state=row["state"],
            end_reason=row["end_reason"],
            holder=row["relay_instance"],
            resume_token_hash=row["resume_token_hash"],
            holder_address=row["address"],
            holder_heartbeat_age_s=None if age is None else max(0.0, float(age)),
            holder_lost_s=None if lost is None else max(0.0, float(lost)),
        )

    async def take_over(
        self,
        session_id: str,
        user_id: int,
        *,
        old_hash: str,
        new_hash: str,
        holder: str,
        instance: str,
        claim_token: str,
    ) -> TakenOver | None:
        """Move the live session from ``holder`` (dead) to ``instance``, if its token is
        still ``old_hash`` and nobody moved it first: one conditional UPDATE, retried
        safely (a retry whose first attempt landed finds its own claim).

        An interview's session is moved only while its interview is open. One cancelled
        while its holder was dead was never ended (the cancel's command reached no
        member): its row is closed here, with the interview's end reason and the seconds
        charged until the holder was lost, and ``InterviewClosed`` is raised. One hung up
        while its holder was dead is not moved either: ``HangUpRequested``."""

        async def op(
            conn: asyncpg.Connection,
        ) -> asyncpg.Record | str | HangUpRequested | None:
            async with conn.transaction():
                await conn.execute(
                    """UPDATE interview_sessions s
                       SET relay_instance = $5, claim_token = $6, resume_token_hash = $4,
                           holder_lost_at = NULL, parts = s.parts + 1, state = 'connecting'
                       FROM users u
                       WHERE s.id = $1 AND s.user_id = $2 AND u.id = s.user_id
                         AND s.state IN ('connecting', 'active')
                         AND s.resume_token_hash = $3 AND s.relay_instance = $7 AND u.active
                         AND s.end_reason IS NULL
                         AND (s.interview_id IS NULL
                              OR EXISTS (SELECT 1 FROM interviews i
                                         WHERE i.id = s.interview_id
                                           AND i.status IN ('scheduled', 'in_progress')))""",
                    session_id,
                    user_id,
                    old_hash,
                    new_hash,
                    instance,
                    claim_token,
                    holder,
                )
                # Ours if this attempt moved it, or a retried one whose first attempt did.
                row: asyncpg.Record | None = await conn.fetchrow(
                    """SELECT u.token_hash, u.active, u.remaining_seconds, s.request_id,
                              s.expires_at, s.max_duration_s, s.used_seconds, s.parts,
                              s.interview_id, i.recording, i.instructions, i.voice, i.language
                       FROM interview_sessions s JOIN users u ON u.id = s.user_id
                            LEFT JOIN interviews i ON i.id = s.interview_id
                       WHERE s.id = $1 AND s.user_id = $2 AND s.claim_token = $3
                         AND s.relay_instance = $4""",
                    session_id,
                    user_id,
                    claim_token,
                    instance,
                )
                if row is not None:
                    return row
                # A closed interview's live row nobody holds (or a retry of this very
                # close, whose first attempt landed: the row says so).
                reason: str | None = await conn.fetchval(
                    """WITH closed AS (
                           UPDATE interview_sessions s
                           SET state = 'ended', end_reason = i.end_reason, ended_at = now(),
                               duration_seconds = COALESCE(s.used_seconds, 0),
                               debited_seconds = CEIL(COALESCE(s.used_seconds, 0))::int
                           FROM interviews i
                           WHERE s.id = $1 AND s.user_id = $2 AND i.id = s.interview_id
                             AND s.state IN ('connecting', 'active')
                             AND s.resume_token_hash = $3 AND s.relay_instance = $4
                             AND i.status NOT IN ('scheduled', 'in_progress')
                           RETURNING s.end_reason)
                       SELECT end_reason FROM closed
                       UNION ALL
                       SELECT s.end_reason FROM interview_sessions s
                       WHERE s.id = $1 AND s.user_id = $2 AND s.state = 'ended'
                         AND s.resume_token_hash = $3 AND s.relay_instance = $4
                         AND s.end_reason IS NOT DISTINCT FROM
                             (SELECT i.end_reason FROM interviews i
                              WHERE i.id = s.interview_id
                                AND i.status NOT IN ('scheduled', 'in_progress'))
                       LIMIT 1""",
                    session_id,
                    user_id,
                    old_hash,
                    holder,
                )
                if reason is not None:
                    return reason
                # Hung up while nobody held it: closed by the caller, as any end is.
                hung_up: asyncpg.Record | None = await conn.fetchrow(
                    """SELECT end_reason, COALESCE(used_seconds, 0)::float8 AS used_seconds
                       FROM interview_sessions
                       WHERE id = $1 AND user_id = $2 AND state IN ('connecting', 'active')
                         AND resume_token_hash = $3 AND relay_instance = $4
                         AND end_reason IS NOT NULL""",
                    session_id,
                    user_id,
                    old_hash,
                    holder,
                )
                if hung_up is not None:
                    return HangUpRequested(hung_up["end_reason"], hung_up["used_seconds"])
                return None

        row = await self._store.run("take_over_session", op)
        if isinstance(row, str):
            raise InterviewClosed(row)
        if isinstance(row, HangUpRequested):
            raise row
        if row is None:
            return None
        return TakenOver(
            user_id=user_id,
            token_hash=row["token_hash"],
            active=bool(row["active"]),
            remaining_seconds=int(row["remaining_seconds"]),
            request_id=row["request_id"],
            expires_at=row["expires_at"],
            max_duration_s=float(row["max_duration_s"] or 0.0),
            used_seconds=float(row["used_seconds"] or 0.0),
            part=int(row["parts"]),
            interview_id=row["interview_id"],
            recording=row["recording"] is not False,
            # The interview's own interviewer, minted again on this member as at the start.
            overrides=SessionOverrides(
                instructions=row["instructions"], voice=row["voice"], language=row["language"]
            )
            if row["interview_id"] is not None
            else None,
        )


class ContinuityKeeper:
    """Writes one process's sessions' progress and transcript items as they come, off the
    media's path (each write an owned task; a failure is logged and the interview goes
    on: the holder keeps its own copy, only a take-over would miss it).

    Progress is written for every session of the process together: each session hands in
    its seconds every ``session.progress_interval_s`` (relay.media.bridge.supervision), and what
    came in within ``PROGRESS_FLUSH_S`` goes out in one statement (at N interviews, one
    statement instead of N per interval, on the database and on the relay's loop)."""

    def __init__(
        self, store: Store, metrics: MetricsRegistry, *, flush_s: float = PROGRESS_FLUSH_S
    ) -> None:
        self.rows = ContinuityRows(store)
        self._tasks = TaskGroup("continuity", log=log, metrics=metrics)
        self._flush_s = flush_s
        # session id → (seconds charged, claim token): the newest of each, not yet written
        # (while not empty, a flush is on its way).
        self._progress: dict[str, tuple[float, str | None]] = {}
        self._failures = metrics.counter(
            "relay_continuity_writes_failed_total",
            "Progress and transcript writes that did not reach the database, by kind",
            ["kind"],
        )

    def session(self, session_id: str, claim_token: str | None) -> SessionContinuity:
        return SessionContinuity(self, session_id, claim_token)

    def write(self, kind: str, name: str, op: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await op
            except DatabaseUnavailable as exc:
                self._failures.inc(kind=kind)
                log.warning("%s not written (%s)", name, exc.code)

        self._tasks.spawn(run(), name=name)

    def note_progress(self, session_id: str, used_s: float, claim_token: str | None) -> None:
        first = not self._progress
        self._progress[session_id] = (used_s, claim_token)
        if first:
            self._tasks.spawn(self._flush_soon(), name="progress-flush")

    async def _flush_soon(self) -> None:
        # A coalescing delay, not a synchronisation: the progress of every session that
        # reports meanwhile shares this write.
        await asyncio.sleep(self._flush_s)
        await self._flush_progress()

    async def _flush_progress(self) -> None:
        """Write the progress handed in and not yet written (one statement)."""
        batch, self._progress = self._progress, {}
        if not batch:
            return
        try:
            await self.rows.save_progress(batch)
        except DatabaseUnavailable as exc:
            self._failures.inc(len(batch), kind="progress")
            log.warning("progress of %d sessions not written (%s)", len(batch), exc.code)

    async def close(self) -> None:
        """Write the progress waiting for its flush, let the writes on their way land
        (briefly), then stop."""
        await self._flush_progress()
        await self._tasks.close(grace_s=5.0)


class SessionContinuity:
    """One session's ``ContinuityHooks`` (relay.media.bridge): what its bridge reports."""

    def __init__(self, keeper: ContinuityKeeper, session_id: str, claim_token: str | None) -> None:
        self._keeper = keeper
        self._session_id = session_id
        self._claim_token = claim_token

    def on_transcript_item(self, item: TranscriptItem) -> None:
        self._keeper.write(
            "transcript",
            f"transcript-{self._session_id}",
            self._keeper.rows.add_transcript_item(self._session_id, item),
        )

    def on_progress(self, used_s: float) -> None:
        self._keeper.note_progress(self._session_id, used_s, self._claim_token)
