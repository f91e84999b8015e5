"""The operator's recordings API (operator token on every route).

GET /api/recordings?limit=&offset=   newest first
GET /api/recordings/{id}
GET /api/recordings/{id}/audio       the stereo file; HTTP Range → 206 (for <audio> seeking)
GET /api/recordings/{id}/transcript  transcript.jsonl
DELETE /api/recordings/{id}          files/objects removed, row marked deleted
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import asyncpg
from aiohttp import web

from relay.errors import ApiError
from relay.observability.request_context import current_request_id
from relay.recording import render, rows
from relay.recording.s3 import StorageError
from relay.recording.service import CONTENT_TYPES, RecordingService
from relay.services import SERVICES
from relay.web.caller import require_operator

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_ID = re.compile(r"^rec_[0-9a-f]{16}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


async def _service(request: web.Request) -> RecordingService:
    await require_operator(request)
    service = request.app[SERVICES].recordings
    if service is None:
        raise ApiError(404, "recordings_disabled", "Recording is not configured on this relay.")
    return service


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"'{name}' must be an integer.") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"'{name}' must be within {low}..{high}.")
    return value


async def _row(request: web.Request, service: RecordingService) -> asyncpg.Record:
    recording_id = request.match_info["id"]
    if not _ID.match(recording_id):
        raise ApiError(404, "recording_not_found", "No such recording.")
    row = await service.rows.get(recording_id)
    if row is None:
        raise ApiError(404, "recording_not_found", "No such recording.")
    return row


def _ready(row: asyncpg.Record) -> None:
    if row["status"] != "ready":
        raise ApiError(409, "recording_not_ready", f"The recording is {row['status']}, not ready.")


async def list_recordings(request: web.Request) -> web.Response:
    service = await _service(request)
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, 10_000_000)
    page, total = await service.rows.page(limit=limit, offset=offset)
    next_offset = offset + len(page) if offset + len(page) < total else None
    body = {
        "items": [rows.to_json(r) for r in page],
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
        "request_id": current_request_id(),
    }
    return web.json_response(body)


async def get_recording(request: web.Request) -> web.Response:
    service = await _service(request)
    row = await _row(request, service)
    return web.json_response(rows.to_json(row) | {"request_id": current_request_id()})


def _file_name(row: asyncpg.Record) -> str:
    return render.AUDIO_NAMES.get(row["format"], "recording.ogg")


async def _serve(
    request: web.Request, service: RecordingService, row: asyncpg.Record, name: str
) -> web.StreamResponse:
    content_type = CONTENT_TYPES.get(name, "application/octet-stream")
    if row["storage"] == "s3":
        if service.s3 is None:
            raise ApiError(503, "storage_unavailable", "S3 storage is not configured here.")
        return await _serve_s3(request, service, row, name, content_type)
    path = service.local_file(row, name)
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(404, "recording_file_missing", f"{name} is not on this instance.")
    # FileResponse answers Range requests (206, Content-Range) and If-Range itself.
    response = web.FileResponse(path, headers={"Content-Type": content_type})
    response.headers["Cache-Control"] = "no-store"
    return response


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
    service = await _service(request)
    row = await _row(request, service)
    if row["status"] in ("recording", "rendering"):
        raise ApiError(409, "recording_busy", f"The recording is {row['status']}; retry later.")
    if row["status"] != "deleted":
        try:
            await service.delete(row, reason="deleted by operator")
        except StorageError as exc:
            raise ApiError(502, "storage_error", "The object store did not answer.") from exc
    fresh = await service.rows.get(row["id"])
    body: dict[str, Any] = rows.to_json(fresh if fresh is not None else row)
    return web.json_response(body | {"request_id": current_request_id()})


def register(app: web.Application) -> None:
    app.router.add_get("/api/recordings", list_recordings)
    app.router.add_get("/api/recordings/{id}", get_recording)
    app.router.add_get("/api/recordings/{id}/audio", get_audio)
    app.router.add_get("/api/recordings/{id}/transcript", get_transcript)
    app.router.add_delete("/api/recordings/{id}", delete_recording)
