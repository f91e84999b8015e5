"""The ``recordings`` table (migration 003) and the recording columns of a session row.

Statements go through ``Store.run`` (pooled connection, per-query timeout, retries on
connection errors) like every other query of the relay.

A recording that becomes ``ready`` or ``failed`` writes its webhook event
(``recording.ready`` / ``recording.failed``, relay.webhooks.outbox) in the transaction that
sets the status, once per change of status (a retried statement, or a status set again,
writes none).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from relay.db import Store
from relay.fields import iso_utc_or_none
from relay.webhooks.outbox import enqueue

STATUSES = ("recording", "rendering", "ready", "failed", "deleted")
_COLUMNS = """r.id, r.session_id, r.status, r.status_reason, r.format, r.storage, r.location,
    r.relay_instance, r.files, r.duration_seconds, r.bytes, r.sha256, r.manifest, r.recovered,
    r.created_at, r.updated_at, r.finished_at, r.deleted_at, r.part,
    s.interview_id, s.user_id, u.email AS candidate_email"""
# Every recording with its session and candidate (who, and for which interview).
_FROM = """recordings r JOIN interview_sessions s ON s.id = r.session_id
    JOIN users u ON u.id = s.user_id"""
# Not of a candidate or an interview marked for erasure (migration 017): from the erasure's
# answer on, the API neither lists nor serves them, while their files are being removed.
NOT_ERASED = """u.erase_requested_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM interviews ie WHERE ie.id = s.interview_id
      AND ie.erase_requested_at IS NOT NULL)"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def to_json(row: asyncpg.Record) -> dict[str, Any]:
    """The API's view of a row."""
    manifest = _json(row["manifest"]) or {}
    return {
        "id": row["id"],
        "session_id": row["session_id"],
        "interview_id": row["interview_id"],
        "user_id": row["user_id"],
        "candidate_email": row["candidate_email"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "format": row["format"],
        "storage": row["storage"],
        "duration_s": row["duration_seconds"],
        "durations_s": manifest.get("durations_s"),
        "bytes": row["bytes"],
        "sha256": row["sha256"],
        "files": _json(row["files"]),
        "recovered_after_crash": row["recovered"],
        "packets_recorded": manifest.get("packets_recorded"),
        "packets_dropped": manifest.get("packets_dropped"),
        "gaps_filled": manifest.get("gaps_filled"),
        # Continuity: which part of the session (a member took it over: 2, ...), and the
        # browser's absences kept as silence.
        "part": row["part"],
        "disconnections": manifest.get("disconnections"),
        "created_at": iso_utc_or_none(row["created_at"]),
        "finished_at": iso_utc_or_none(row["finished_at"]),
        "deleted_at": iso_utc_or_none(row["deleted_at"]),
    }


async def _enqueue_outcome(
    conn: asyncpg.Connection,
    recording_id: str,
    session_id: str,
    interview_id: str | None,
    status: str,
    reason: str | None,
    duration_s: float | None,
) -> None:
    """``recording.ready`` / ``recording.failed``, in the transaction of the status change
    (relay.webhooks.outbox): the event exists if and only if the change committed."""
    if status == "ready":
        data: dict[str, Any] = {
            "interview_id": interview_id,
            "session_id": session_id,
            "recording_id": recording_id,
            "duration_s": duration_s,
            "audio_url": f"/api/recordings/{recording_id}/audio",
            "transcript_url": f"/api/recordings/{recording_id}/transcript",
        }
        await enqueue(conn, "recording.ready", interview_id=interview_id, data=data)
    else:
        data = {
            "interview_id": interview_id,
            "session_id": session_id,
            "recording_id": recording_id,
            "reason": reason,
        }
        await enqueue(conn, "recording.failed", interview_id=interview_id, data=data)


def _filters(first: int) -> str:
    """The list's filters as SQL, their parameters numbered from ``$first``: interview id,
    user id, candidate e-mail, created since, created until."""
    n = [f"${first + i}" for i in range(5)]
    return f"""{NOT_ERASED}
        AND ({n[0]}::text IS NULL OR s.interview_id = {n[0]})
        AND ({n[1]}::bigint IS NULL OR s.user_id = {n[1]})
        AND ({n[2]}::text IS NULL OR lower(u.email) = lower({n[2]}))
        AND ({n[3]}::timestamptz IS NULL OR r.created_at >= {n[3]})
        AND ({n[4]}::timestamptz IS NULL OR r.created_at < {n[4]})"""


class RecordingRows:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self,
        *,
        recording_id: str,
        session_id: str,
        audio_format: str,
        storage: str,
        location: str,
        relay_instance: str,
        recovered: bool = False,
        part: int = 1,
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO recordings
                           (id, session_id, status, format, storage, location, relay_instance,
                            recovered, part)
                       VALUES ($1, $2, 'recording', $3, $4, $5, $6, $7, $8)
                       ON CONFLICT (id) DO NOTHING""",
                    recording_id,
                    session_id,
                    audio_format,
                    storage,
                    location,
                    relay_instance,
                    recovered,
                    part,
                )
                await conn.execute(
                    "UPDATE interview_sessions SET recording_status = 'recording' WHERE id = $1",
                    session_id,
                )

        await self._store.run("recording_create", op)

    async def set_status(
        self,
        recording_id: str,
        status: str,
        *,
        reason: str | None = None,
        manifest: dict[str, Any] | None = None,
        files: list[dict[str, Any]] | None = None,
        location: str | None = None,
        recovered: bool | None = None,
        session_note: str | None = None,
    ) -> str | None:
        """Move a row to ``status``; the session row's ``recording_status`` follows
        (``session_note`` when given, e.g. "ready (recovered after a relay crash)").
        Returns the row's status after it: ``deleted`` stays (a DELETE, retention or an
        erasure that marked it while it was being finalised or uploaded wins); None: no
        such row (its session was erased, or the row was never written)."""
        audio = (files or [{}])[0]
        duration = manifest.get("duration_s") if manifest else None

        async def op(conn: asyncpg.Connection) -> str | None:
            async with conn.transaction():
                before = await conn.fetchval(
                    "SELECT status FROM recordings WHERE id = $1 FOR UPDATE", recording_id
                )
                if before is None or before == "deleted":
                    return before  # type: ignore[no-any-return]
                changed = await conn.fetchrow(
                    """UPDATE recordings SET
                           status = $2, status_reason = $3,
                           manifest = COALESCE($4::jsonb, manifest),
                           files = COALESCE($5::jsonb, files),
                           duration_seconds = COALESCE($6, duration_seconds),
                           bytes = COALESCE($7, bytes),
                           sha256 = COALESCE($8, sha256),
                           location = COALESCE($9, location),
                           recovered = COALESCE($10, recovered),
                           updated_at = now(),
                           finished_at = CASE WHEN $2 IN ('ready', 'failed')
                                              THEN now() ELSE finished_at END,
                           deleted_at = CASE WHEN $2 = 'deleted' THEN now() ELSE deleted_at END
                       WHERE id = $1
                       RETURNING session_id, duration_seconds""",
                    recording_id,
                    status,
                    reason,
                    None if manifest is None else json.dumps(manifest),
                    None if files is None else json.dumps(files),
                    duration,
                    audio.get("bytes"),
                    audio.get("sha256"),
                    location,
                    recovered,
                )
                if changed is None:
                    return None
                session_id = changed["session_id"]
                note = session_note or (f"{status}: {reason}" if reason else status)
                interview_id = await conn.fetchval(
                    """UPDATE interview_sessions SET recording_status = $2 WHERE id = $1
                       RETURNING interview_id""",
                    session_id,
                    note[:500],
                )
                # Only a real change of outcome: a retried statement (its first attempt
                # committed) writes no second event.
                if status != before and status in ("ready", "failed"):
                    await _enqueue_outcome(
                        conn,
                        recording_id,
                        session_id,
                        interview_id,
                        status,
                        reason,
                        changed["duration_seconds"],
                    )
                return status

        return await self._store.run("recording_status", op)

    async def discard(self, recording_id: str) -> None:
        """Forget a recording that holds no audio at all (the session never carried any)."""

        async def op(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                session_id = await conn.fetchval(
                    "DELETE FROM recordings WHERE id = $1 RETURNING session_id", recording_id
                )
                if session_id is not None:
                    await conn.execute(
                        "UPDATE interview_sessions SET recording_status = 'no audio' WHERE id = $1",
                        session_id,
                    )

        await self._store.run("recording_discard", op)

    async def get(self, recording_id: str, *, erased_too: bool = True) -> asyncpg.Record | None:
        """The recording's row; with ``erased_too=False`` (the API's reads), None for one
        of an interview or candidate marked for erasure."""
        hidden = "" if erased_too else f" AND {NOT_ERASED}"

        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM {_FROM} WHERE r.id = $1{hidden}", recording_id
            )

        return await self._store.run("recording_get", op)

    async def page(
        self,
        *,
        limit: int,
        offset: int = 0,
        after: tuple[datetime, str] | None = None,
        interview_id: str | None = None,
        user_id: int | None = None,
        email: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[asyncpg.Record], int]:
        """Newest first, filtered; ``after`` (a cursor's position) or ``offset`` pages.
        Returns the rows and how many match the filters."""
        args = (interview_id, user_id, email, since, until)

        async def op(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], int]:
            rows = await conn.fetch(
                f"""SELECT {_COLUMNS} FROM {_FROM}
                    WHERE {_filters(3)}
                      AND ($8::timestamptz IS NULL OR (r.created_at, r.id) < ($8, $9))
                    ORDER BY r.created_at DESC, r.id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
                *args,
                after[0] if after else None,
                after[1] if after else None,
            )
            total = await conn.fetchval(f"SELECT count(*) FROM {_FROM} WHERE {_filters(1)}", *args)
            return list(rows), int(total)

        return await self._store.run("recording_page", op)

    async def expired(
        self,
        older_than: datetime,
        *,
        after: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[asyncpg.Record]:
        """Recordings older than ``older_than``, oldest first, after ``after`` (created_at,
        id) when given: a pass goes on past those it could not delete."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""SELECT {_COLUMNS} FROM {_FROM}
                        WHERE r.status <> 'deleted' AND r.created_at < $1
                          AND ($3::timestamptz IS NULL OR (r.created_at, r.id) > ($3, $4))
                        ORDER BY r.created_at, r.id LIMIT $2""",
                    older_than,
                    limit,
                    after[0] if after else None,
                    after[1] if after else None,
                )
            )

        return await self._store.run("recording_expired", op)

    async def unfinished(self, relay_instance: str, *, skip: list[str]) -> list[asyncpg.Record]:
        """This instance's recordings still ``recording`` or ``rendering``, but those in
        ``skip`` (the ones it works on), oldest first. Not limited: past its live ones,
        only what an outage left behind is there, and a limit would let those that cannot
        be taken up (no files left) hide the others for good."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    """SELECT id, session_id, status, storage, location, part, recovered
                       FROM recordings
                       WHERE status IN ('recording', 'rendering') AND relay_instance = $1
                         AND NOT (id = ANY($2::text[]))
                       ORDER BY created_at, id""",
                    relay_instance,
                    skip,
                )
            )

        return await self._store.run("recording_unfinished", op)

    async def upload_pending(self, relay_instance: str) -> list[asyncpg.Record]:
        """Failed S3 uploads of this instance whose local files were kept for a retry."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""SELECT {_COLUMNS} FROM {_FROM}
                        WHERE r.status = 'failed' AND r.storage = 's3'
                          AND r.relay_instance = $1 AND r.status_reason LIKE 'upload%'
                        ORDER BY r.created_at LIMIT 20""",
                    relay_instance,
                )
            )

        return await self._store.run("recording_upload_pending", op)

    async def summary(self) -> dict[str, Any]:
        async def op(conn: asyncpg.Connection) -> dict[str, Any]:
            counts = await conn.fetch("SELECT status, count(*) AS n FROM recordings GROUP BY 1")
            failures = await conn.fetch(
                """SELECT id, session_id, status_reason, updated_at FROM recordings
                   WHERE status = 'failed' ORDER BY updated_at DESC LIMIT 10"""
            )
            return {
                "by_status": {s: 0 for s in STATUSES} | {r["status"]: r["n"] for r in counts},
                "recent_failures": [
                    {
                        "id": r["id"],
                        "session_id": r["session_id"],
                        "reason": r["status_reason"],
                        "at": iso_utc_or_none(r["updated_at"]),
                    }
                    for r in failures
                ],
            }

        return await self._store.run("recording_summary", op)

    async def session_exists(self, session_id: str) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            found: bool = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM interview_sessions WHERE id = $1)", session_id
            )
            return found

        return await self._store.run("recording_session_exists", op)

    async def note_consent(self, session_id: str, shown: bool) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE interview_sessions SET recording_notice_shown = $2 WHERE id = $1",
                session_id,
                shown,
            )

        await self._store.run("recording_consent", op)
