"""The recordings API: reading needs a read key (or the operator token), deleting an admin
key (or the operator token).

GET /api/recordings?limit=&cursor=|offset=&interview_id=&user_id=&email=&since=&until=
                                     newest first; each item names its candidate and interview
GET /api/recordings/{id}
GET /api/recordings/{id}/audio       the stereo file; HTTP Range → 206 (for <audio> seeking)
GET /api/recordings/{id}/transcript  transcript.jsonl
                                     both as attachments named after the candidate and date
DELETE /api/recordings/{id}          files/objects removed, row marked deleted
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import Annotated, Any

import asyncpg
from aiohttp import web
from pydantic import Field

from relay.admission.api_keys import Scope
from relay.errors import ApiError
from relay.fields import Email, UtcDatetime
from relay.observability.request_context import current_request_id
from relay.recording import render, rows
from relay.recording.s3 import StorageError
from relay.recording.service import (
    CONTENT_TYPES,
    DeletionFailed,
    NoObjectStore,
    RecordingElsewhere,
    RecordingService,
)
from relay.services import SERVICES
from relay.web.api import Api, Call, Operation, PathParam, Reply, Response
from relay.web.caller import require_scope
from relay.web.pagination import PageQuery, decode_cursor, encode_cursor
from relay.web.schemas import RecordingList, RecordingOne

_ID = re.compile(r"^rec_[0-9a-f]{16}$")
# What a download's name keeps of the candidate's e-mail; the rest becomes "-".
_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_NAME_MAX = 64
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


class RecordingsQuery(PageQuery):
    offset: Annotated[
        int, Field(ge=0, le=10_000_000, description="Skip this many (instead of a cursor).")
    ] = 0
    # The same types as GET /api/sessions' filters: what passes is something PostgreSQL
    # takes (no NUL, no time outside its range), so a hostile value is a 400, not a 500.
    interview_id: Annotated[str | None, Field(pattern=r"^iv_[0-9a-f]{32}$")] = None
    user_id: Annotated[int | None, Field(ge=1, le=2**63 - 1)] = None
    email: Email | None = Field(default=None, description="The candidate's.")
    since: UtcDatetime | None = Field(default=None, description="Created at or after (ISO 8601).")
    until: UtcDatetime | None = Field(default=None, description="Created before (ISO 8601).")


async def _service(request: web.Request, scope: Scope = "read") -> RecordingService:
    await require_scope(request, scope)
    return request.app[SERVICES].recordings


async def _row(request: web.Request, service: RecordingService) -> asyncpg.Record:
    recording_id = request.match_info["id"]
    if not _ID.match(recording_id):
        raise ApiError(404, "recording_not_found", "No such recording.")
    row = await service.rows.get(recording_id, erased_too=False)
    if row is None:
        raise ApiError(404, "recording_not_found", "No such recording.")
    return row


def _ready(row: asyncpg.Record) -> None:
    if row["status"] != "ready":
        raise ApiError(409, "recording_not_ready", f"The recording is {row['status']}, not ready.")


async def list_recordings(call: Call) -> Reply:
    query = call.query(RecordingsQuery)
    after = decode_cursor(query.cursor)
    page, total = await call.services.recordings.rows.page(
        limit=query.limit + 1,
        offset=0 if after is not None else query.offset,
        after=after,
        interview_id=query.interview_id,
        user_id=query.user_id,
        email=query.email,
        since=query.since,
        until=query.until,
    )
    items = page[: query.limit]
    more = len(page) > query.limit
    next_cursor = encode_cursor(items[-1]["created_at"], items[-1]["id"]) if more else None
    next_offset = query.offset + len(items) if more and after is None else None
    body = RecordingList.model_validate(
        {
            "items": [rows.to_json(r) for r in items],
            "total": total,
            "limit": query.limit,
            "offset": query.offset if after is None else 0,
            "next_offset": next_offset,
            "next_cursor": next_cursor,
            "request_id": current_request_id(),
        }
    )
    return Reply(200, body)


async def get_recording(request: web.Request) -> web.Response:
    service = await _service(request)
    row = await _row(request, service)
    return web.json_response(rows.to_json(row) | {"request_id": current_request_id()})


def _file_name(row: asyncpg.Record) -> str:
    return render.AUDIO_NAMES.get(row["format"], "recording.ogg")


def download_name(email: str | None, created_at: datetime, suffix: str, part: int = 1) -> str:
    """``interview-<candidate>-<YYYY-MM-DD-HHMMSS>[-part<N>].<suffix>``: the candidate's
    e-mail reduced to ``[a-z0-9._-]`` (anything else, "@" included, becomes "-"), the
    recording's start in UTC to the second, and after a take-over the part (two recordings
    of one candidate keep apart, the parts of one session too). Plain ASCII, so the header
    needs no RFC 5987 ``filename*`` and no quoting beyond the quotes."""
    candidate = _NAME_UNSAFE.sub("-", (email or "").lower())[:_NAME_MAX].strip("-._")
    when = created_at.astimezone(UTC).strftime("%Y-%m-%d-%H%M%S")
    of_part = f"-part{part}" if part > 1 else ""
    return f"interview-{candidate or 'candidate'}-{when}{of_part}.{suffix}"


def _disposition(row: asyncpg.Record, name: str) -> str:
    suffix = name.rsplit(".", 1)[-1]
    name = download_name(row["candidate_email"], row["created_at"], suffix, row["part"])
    return f'attachment; filename="{name}"'


async def _serve(
    request: web.Request, service: RecordingService, row: asyncpg.Record, name: str
) -> web.StreamResponse:
    content_type = CONTENT_TYPES.get(name, "application/octet-stream")
    if row["storage"] == "s3":
        if service.s3 is None:
            raise ApiError(503, "storage_unavailable", "S3 storage is not configured here.")
        return await _serve_s3(request, service, row, name, content_type)
    path = service.local_file(row, name)
    stat = await asyncio.to_thread(_file_stat, path)
    if stat is None:
        raise ApiError(404, "recording_file_missing", f"{name} is not on this instance.")
    # FileResponse answers Range requests itself (206, Content-Range) and If-Range given as
    # a date; an If-Range that is not a date (an entity tag) it does not read, and serves
    # the range. Its 416 is an empty body: refused here first, as the JSON error.
    if _unsatisfiable_range(request, stat):
        raise ApiError(
            416,
            "invalid_range",
            "The range cannot be served: one 'bytes=a-b' range within the file.",
            extra_headers={"Content-Range": f"bytes */{stat.st_size}"},
        )
    response = web.FileResponse(path, headers={"Content-Type": content_type})
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Disposition"] = _disposition(row, name)
    return response


def _file_stat(path: Path) -> os.stat_result | None:
    """The file's stat, or None when it is not a regular file (missing)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat if S_ISREG(stat.st_mode) else None


def _unsatisfiable_range(request: web.Request, stat: os.stat_result) -> bool:
    """Whether aiohttp's FileResponse would answer this request 416 (its own checks: a
    Range applies unless an If-Range date is older than the file; one that does not parse,
    or starts at or past the end, cannot be served)."""
    if "Range" not in request.headers:
        return False
    if_range = request.if_range
    if if_range is not None and stat.st_mtime > if_range.timestamp():
        return False  # the whole file is served (200): the Range is ignored
    try:
        start: int | None = request.http_range.start
    except ValueError:
        return True
    if start is None:
        return False
    if start < 0:  # the last -start bytes: only an empty file has none
        return stat.st_size == 0
    return start >= stat.st_size


async def _serve_s3(
    request: web.Request,
    service: RecordingService,
    row: asyncpg.Record,
    name: str,
    content_type: str,
) -> web.StreamResponse:
    assert service.s3 is not None
    byte_range = request.headers.get("Range")
    if byte_range is not None:
        match = _RANGE.match(byte_range.strip())
        if match is None or not (match[1] or match[2]):
            raise ApiError(416, "invalid_range", "Only a single 'bytes=a-b' range is supported.")
    key = service.s3.key(row["session_id"], row["id"], name)
    try:
        obj, stack = await service.s3.get(key, byte_range)
    except StorageError as exc:
        if "NoSuchKey" in str(exc) or "404" in str(exc):
            raise ApiError(404, "recording_file_missing", f"{name} is not in storage.") from None
        if "InvalidRange" in str(exc) or "416" in str(exc):
            raise ApiError(416, "invalid_range", "The range is outside the file.") from None
        raise ApiError(502, "storage_error", "The object store did not answer.") from exc
    async with stack:
        # Released even when the client goes away mid-stream (the pooled connection).
        stack.callback(_close_quietly, obj.body)
        response = web.StreamResponse(status=206 if obj.content_range else 200)
        response.content_type = content_type
        response.content_length = obj.content_length
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Disposition"] = _disposition(row, name)
        if obj.content_range:
            response.headers["Content-Range"] = obj.content_range
        await response.prepare(request)
        while chunk := await obj.body.read(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


def _close_quietly(body: Any) -> None:
    with contextlib.suppress(Exception):
        body.close()


async def get_audio(request: web.Request) -> web.StreamResponse:
    service = await _service(request)
    row = await _row(request, service)
    _ready(row)
    return await _serve(request, service, row, _file_name(row))


async def get_transcript(request: web.Request) -> web.StreamResponse:
    service = await _service(request)
    row = await _row(request, service)
    _ready(row)
    return await _serve(request, service, row, render.TRANSCRIPT)


async def delete_recording(request: web.Request) -> web.Response:
    principal = await require_scope(request, "admin")
    service = request.app[SERVICES].recordings
    row = await _row(request, service)
    if row["status"] in ("recording", "rendering"):
        raise ApiError(409, "recording_busy", f"The recording is {row['status']}; retry later.")
    if row["status"] != "deleted":
        try:
            # Who deleted it, as interviews and keys name their creator (a key's id, or
            # "operator").
            await service.delete(row, reason=f"deleted by {principal.id}")
        except NoObjectStore:
            raise ApiError(
                503,
                "storage_unavailable",
                "The recording is kept in S3, which is not configured on this instance: "
                "delete it through one that has it.",
            ) from None
        except StorageError as exc:
            raise ApiError(502, "storage_error", "The object store did not answer.") from exc
        except RecordingElsewhere as exc:
            # Only the instance that holds the files can remove them (as only it serves
            # them): marking the row deleted here would leave them there for good.
            raise ApiError(
                409,
                "recording_on_another_instance",
                f"The recording's files are on instance {exc.relay_instance}: delete it "
                "through that instance.",
                details={"relay_instance": exc.relay_instance},
            ) from None
        except DeletionFailed as exc:
            raise ApiError(
                500,
                "recording_not_deleted",
                f"The recording's files could not all be removed ({exc}); it is not marked "
                "deleted (its copy in the object store, if any, is kept): try again.",
            ) from exc
    fresh = await service.rows.get(row["id"])
    body: dict[str, Any] = rows.to_json(fresh if fresh is not None else row)
    return web.json_response(body | {"request_id": current_request_id()})


_DOWNLOAD = (
    "Sent as an attachment named after the candidate and the recording's start in UTC, "
    "`Content-Disposition: attachment; "
    'filename="interview-<candidate>-<YYYY-MM-DD-HHMMSS>[-part<N>].{suffix}"`: the '
    "candidate's e-mail reduced to `[a-z0-9._-]` (anything else, `@` included, becomes `-`), "
    "and the part after a take-over, e.g. `interview-ana-example.com-2026-07-01-093012.{suffix}`."
)
_REC_ID = PathParam("id", "The recording's id.", r"^rec_[0-9a-f]{16}$")
_READ_ERRORS: dict[int, tuple[str, ...]] = {
    401: ("missing_token", "invalid_token"),
    403: ("insufficient_scope",),
    404: ("recording_not_found",),
    429: ("too_many_failed_authentications",),
    503: ("database_unavailable", "database_timeout"),
}
_FILE_ERRORS: dict[int, tuple[str, ...]] = {
    **_READ_ERRORS,
    404: ("recording_not_found", "recording_file_missing"),
    409: ("recording_not_ready",),
    416: ("invalid_range",),
    502: ("storage_error",),
    # A recording kept in S3, asked of an instance configured without S3.
    503: (*_READ_ERRORS[503], "storage_unavailable"),
}


def register(api: Api) -> None:
    api.add(
        Operation(
            "GET",
            "/api/recordings",
            "listRecordings",
            "Recordings, newest first, with their candidate and interview",
            auth="read",
            tag="recordings",
            run=list_recordings,
            query=RecordingsQuery,
            responses=(Response(200, "A page of recordings.", RecordingList),),
            errors={**_READ_ERRORS, 400: ("invalid_parameter", "invalid_cursor")},
        ),
        Operation(
            "GET",
            "/api/recordings/{id}",
            "getRecording",
            "One recording",
            auth="read",
            tag="recordings",
            raw=get_recording,
            path_params=(_REC_ID,),
            responses=(Response(200, "The recording.", RecordingOne),),
            errors=_READ_ERRORS,
        ),
        Operation(
            "GET",
            "/api/recordings/{id}/audio",
            "getRecordingAudio",
            "The stereo recording (candidate left, interviewer right); Range → 206",
            auth="read",
            tag="recordings",
            raw=get_audio,
            path_params=(_REC_ID,),
            description=_DOWNLOAD.format(suffix="ogg") + " (`.wav` for a WAV recording.)",
            responses=(
                Response(200, "The whole file.", content_type="audio/ogg", also=("audio/wav",)),
                Response(
                    206, "The requested range.", content_type="audio/ogg", also=("audio/wav",)
                ),
            ),
            errors=_FILE_ERRORS,
        ),
        Operation(
            "GET",
            "/api/recordings/{id}/transcript",
            "getRecordingTranscript",
            "The transcript: one JSON object per line (speaker, offsets, text)",
            auth="read",
            tag="recordings",
            raw=get_transcript,
            path_params=(_REC_ID,),
            description=_DOWNLOAD.format(suffix="jsonl"),
            responses=(
                Response(200, "The transcript.", content_type="application/x-ndjson"),
                Response(206, "The requested range.", content_type="application/x-ndjson"),
            ),
            errors=_FILE_ERRORS,
        ),
        Operation(
            "DELETE",
            "/api/recordings/{id}",
            "deleteRecording",
            "Delete a recording's files; its row stays, marked deleted",
            auth="admin",
            tag="recordings",
            raw=delete_recording,
            path_params=(_REC_ID,),
            responses=(Response(200, "The recording, deleted.", RecordingOne),),
            errors={
                **_READ_ERRORS,
                409: ("recording_busy", "recording_on_another_instance"),
                500: ("recording_not_deleted",),
                502: ("storage_error",),
                # A recording kept in S3, on an instance configured without S3.
                503: (*_READ_ERRORS[503], "storage_unavailable"),
            },
        ),
    )
