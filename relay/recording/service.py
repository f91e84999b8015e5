"""Recordings of this relay instance: start, finalise, store, serve, delete, recover.

* ``begin(session_id)`` gives the bridge a ``SessionRecorder`` (nothing blocks: the
  directory is made by the writer thread, the row is inserted by a task).
* When the recorder's files are closed, finalisation runs in a process pool
  (``relay.recording.render`` in ``relay.recording.render_pool``'s workers); the rendered
  files are checked against the manifest and what they were rendered from (the packet
  logs, the event log) removed (``relay.recording.sources``); then (``storage = "s3"``)
  the files are uploaded, and the local copy removed once the row says so; the row goes
  recording → rendering → ready, or failed with a reason.
  A failed upload keeps the local files; a periodic task retries it.
* A status write lost to a database outage leaves a row recording/rendering: a periodic
  pass (``resume_unfinished``) takes up this instance's rows that nothing here works on
  any more, from the files kept on disk, once the database answers.
* At start, directories without a ``manifest.json`` (a relay killed mid-interview, or
  during rendering) are finalised from what was written, and marked recovered; those
  rendered but not yet marked ready are checked and stored; ready ones that still hold
  their sources (finalised by an older version) are checked and lose them.
* A periodic task deletes recordings older than ``retention_days``.

Nothing here can fail an interview: every error ends up in the row's ``status_reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from relay.config import Settings
from relay.db import DatabaseUnavailable, Store
from relay.observability.masking import mask_email
from relay.observability.metrics import MetricsRegistry
from relay.private_files import private_dir
from relay.recording import render, rows, sources
from relay.recording.recorder import META, RecordingWriter, SessionRecorder
from relay.recording.render_pool import RenderPool
from relay.recording.rows import RecordingRows
from relay.recording.s3 import S3Storage, StorageError
from relay.tasks import TaskGroup, idle

log = logging.getLogger("relay.recording")

# The stages of relay_recordings_failed_total (docs/recording.md).
FAILURE_STAGES = ("write", "render", "verify", "upload")

RETENTION_INTERVAL_S = 3600.0
# Recordings looked at per statement of a retention pass (a pass takes batches until none
# is left).
RETENTION_BATCH = 100
UPLOAD_RETRY_INTERVAL_S = 60.0
# How often this instance looks for its recordings left recording/rendering that nothing
# here works on any more (a status write lost to a database outage): resume_unfinished.
RESUME_INTERVAL_S = 60.0
CLOSE_TIMEOUT_S = 60.0
# Recordings listed in /api/stats (the dashboard's list; the API pages through all).
LATEST_IN_STATS = 10
CONTENT_TYPES = {
    "recording.ogg": "audio/ogg",
    "recording.wav": "audio/wav",
    "transcript.jsonl": "application/x-ndjson",
    "manifest.json": "application/json",
}


def _list_rendered(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Directories holding a manifest, with it."""
    out: list[tuple[Path, dict[str, Any]]] = []
    if not root.is_dir():
        return out
    for child in sorted(root.iterdir()):
        path = child / render.MANIFEST
        if not child.is_dir() or not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and "recording_id" in manifest and "session_id" in manifest:
            out.append((child, manifest))
    return out


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    """A rendered directory's manifest; None when there is none (or it cannot be read)."""
    try:
        manifest = json.loads((directory / render.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _files_listed(manifest: dict[str, Any], manifest_bytes: bytes) -> list[dict[str, Any]]:
    """A stored recording's files, as its row lists them: the manifest's, and the manifest."""
    return list(manifest["files"]) + [
        {
            "name": render.MANIFEST,
            "bytes": len(manifest_bytes),
            "sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        }
    ]


def _list_unfinished(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    out: list[tuple[Path, dict[str, Any]]] = []
    if not root.is_dir():
        return out
    for child in sorted(root.iterdir()):
        meta_path = child / META
        if not child.is_dir() or not meta_path.is_file():
            continue
        if (child / render.MANIFEST).is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "recording_id" in meta and "session_id" in meta:
            out.append((child, meta))
    return out


class RecordingElsewhere(Exception):
    """A recording's files are on another instance's disk (local storage, not shared)."""

    def __init__(self, relay_instance: str) -> None:
        super().__init__(f"its files are on instance {relay_instance}")
        self.relay_instance = relay_instance


# What ``_status`` answers when the row's new status could not be written (the database):
# not "gone", so nothing is removed on its account.
UNWRITTEN = "unwritten"


class DeletionFailed(Exception):
    """A recording's files could not be removed (a read-only or failing disk)."""


class NoObjectStore(StorageError):
    """A recording kept in the object store, on an instance configured without one: only a
    member with S3 configured can remove its objects."""


def _remove_tree(path: Path) -> None:
    """``path`` and everything under it; gone already is fine, anything else raises."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def part_directory(session_id: str, part: int) -> str:
    """A recording part's directory under the recordings root: the session id for the
    first, ``<session id>.part<N>`` after a take-over (members may share the directory)."""
    return session_id if part <= 1 else f"{session_id}.part{part}"


def _masked(item: dict[str, Any]) -> dict[str, Any]:
    """A recording for /api/stats, which never carries a full e-mail address (the
    recordings API gives it to API keys)."""
    email = item.get("candidate_email")
    return item | {"candidate_email": mask_email(email) if email else email}


class RecordingService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        instance_id: str,
        metrics: MetricsRegistry,
        *,
        is_live_member: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.config = settings.recording
        self.root = settings.recording_path
        self.instance_id = instance_id
        # Whether another instance is alive (the cluster's view; relay.app passes it, as
        # recording does not import the cluster). Without it, every other one counts as live.
        self._is_live_member = is_live_member
        self.rows = RecordingRows(store)
        self._store = store
        self.s3 = S3Storage(self.config) if self.config.storage == "s3" else None
        self._writer: RecordingWriter | None = None
        self._pool = RenderPool(self.config.render_workers)
        # Two groups, closed at different moments: the periodic housekeeping stops at
        # once, the work on recordings (rows, finalisation, upload) gets time to finish.
        self._housekeeping = TaskGroup("recordings-housekeeping", log=log, metrics=metrics)
        self._tasks = TaskGroup("recordings", log=log, metrics=metrics)
        self._created: dict[str, asyncio.Task[bool]] = {}
        self.live: dict[str, SessionRecorder] = {}
        # Recordings claimed by a piece of work here (``_claim``): recorded no more, but
        # being finalised, stored, failed or discarded.
        self._finalising: set[str] = set()
        # What this run could not write (the database away) and no file on disk records:
        # a write failure's reason, a discard (the files gone already). The resuming pass
        # writes them once the database answers; a restart forgets them (docs/recording.md).
        self._unwritten_failures: dict[str, str] = {}
        self._unwritten_discards: set[str] = set()
        # Rows the resuming pass found nothing to finish from (said once, not every pass).
        self._nothing_to_resume: set[str] = set()
        # Set once the background's first round (recovery, retention) has run, done or not:
        # what a caller that must not race that round (a test writing expired rows) awaits.
        self.first_round_done = asyncio.Event()
        # Set once close() stops taking work: late callbacks start nothing new.
        self._closing = False
        self._failures = metrics.counter(
            "relay_recordings_failed_total",
            "Recordings failed, by stage: write (the packet logs), render, verify (the "
            "rendered files against the manifest), upload",
            ["stage"],
        )
        self._failures.declare(stage=FAILURE_STAGES)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._housekeeping.spawn(self._run_background(), name="recordings")

    @property
    def writing(self) -> int:
        """How many recorders the writer thread holds."""
        return self._writer.recorders if self._writer is not None else 0

    @property
    def idle(self) -> bool:
        """No recorder open and nothing being finalised, stored or deleted."""
        return not self.live and not len(self._tasks)

    def busy(self, recording_id: str) -> bool:
        """Whether this instance still records that recording, or works on it (finalises,
        stores, fails or discards it: ``_claim``)."""
        return recording_id in self.live or recording_id in self._finalising

    async def close(self) -> None:
        """Let stopped recorders close and finalisations finish (bounded), then stop the
        writer and the pool. Whatever is left unfinished is recovered at the next start."""
        await self._housekeeping.close()
        # The bridges have stopped their recorders; the writer closes them within a pass.
        deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT_S
        while any(r.stopping for r in self.live.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        self._closing = True
        await self._tasks.close(grace_s=CLOSE_TIMEOUT_S)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        # Its workers, and multiprocessing's fork server and resource tracker with them.
        await asyncio.to_thread(self._pool.close)
        if self.s3 is not None:
            await self.s3.close()

    # ------------------------------------------------------------------ recording
    def begin(self, session_id: str, *, part: int = 1) -> SessionRecorder | None:
        """A recorder for a session about to be bridged (None when recording is off).

        ``part`` > 1: the session was taken over from a member that died, and its
        recording continues in a part of its own (its own row and directory)."""
        if not self.config.enabled:
            return None
        if self._writer is None:
            self._writer = RecordingWriter()
        recording_id = "rec_" + secrets.token_hex(8)
        directory = self.root / part_directory(session_id, part)
        recorder = SessionRecorder(
            part=part,
            recording_id=recording_id,
            session_id=session_id,
            directory=directory,
            instance_id=self.instance_id,
            audio_format=self.config.format,
            on_failed=self._on_failed,
            on_closed=self._on_closed,
            loop=asyncio.get_running_loop(),
        )
        self.live[recording_id] = recorder
        self._writer.add(recorder)
        self._created[recording_id] = self._tasks.spawn(
            self._create_row(
                recording_id,
                session_id,
                self._location(session_id, recording_id, directory),
                part=part,
            ),
            name=f"recording-row-{recording_id}",
        )
        return recorder

    def _location(self, session_id: str, recording_id: str, directory: Path) -> str:
        if self.s3 is not None:
            return self.s3.location(session_id, recording_id)
        return str(directory)

    async def _create_row(
        self,
        recording_id: str,
        session_id: str,
        location: str,
        *,
        recovered: bool = False,
        part: int = 1,
    ) -> bool:
        try:
            await self.rows.create(
                recording_id=recording_id,
                session_id=session_id,
                audio_format=self.config.format,
                storage=self.config.storage,
                location=location,
                relay_instance=self.instance_id,
                recovered=recovered,
                part=part,
            )
            return True
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning("recording %s: row not written (%s)", recording_id, exc)
            return False

    async def _row_ready(self, recording_id: str) -> None:
        task = self._created.pop(recording_id, None)
        if task is not None:
            await asyncio.shield(task)

    async def _mark_ready(
        self,
        recording_id: str,
        manifest: dict[str, Any],
        files: list[dict[str, Any]],
        location: str,
        *,
        recovered: bool,
    ) -> str | None:
        """The row's ``ready``, with what the session says of it (``_status``'s answer)."""
        note = "ready (recovered after a relay crash)" if recovered else "ready"
        return await self._status(
            recording_id,
            "ready",
            manifest=manifest,
            files=files,
            location=location,
            session_note=note,
        )

    async def _status(self, recording_id: str, status: str, **kwargs: Any) -> str | None:
        """The row's status after (``set_status``), or ``UNWRITTEN``."""
        try:
            return await self.rows.set_status(recording_id, status, **kwargs)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning("recording %s: status %s not written (%s)", recording_id, status, exc)
            return UNWRITTEN

    async def _remove_if_gone(
        self, after: str | None, recording_id: str, session_id: str, directory: Path
    ) -> None:
        """Files stored while their row was marked deleted (a DELETE, retention or an
        erasure during the upload) or deleted with its erased session: nobody will ask
        for them again, so they go now, here and in the object store."""
        if after is not None and after != "deleted":
            return
        if after is None and not await self._session_erased(session_id):
            # No row, but its session is there: the row was never written (the database
            # refused it or was away when the recording began). The files are all that is
            # left of the interview's recording: kept.
            log.warning(
                "recording %s: no row was ever written for it; its files are kept in %s",
                recording_id,
                self._location(session_id, recording_id, directory),
            )
            return
        log.warning("recording %s: deleted while it was being stored; removing it", recording_id)
        await asyncio.to_thread(_remove_tree, directory)
        if self.s3 is not None:
            try:
                await self.s3.delete_prefix(self.s3.key(session_id, recording_id, ""))
            except StorageError as exc:
                log.warning("recording %s: objects not removed (%s)", recording_id, exc)

    async def _session_erased(self, session_id: str) -> bool:
        """Whether the session's row is gone (erased with its recordings' rows); False when
        the database cannot tell: nothing is removed on a guess."""
        try:
            return not await self.rows.session_exists(session_id)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning("session %s: not known whether it was erased (%s)", session_id, exc)
            return False

    def _claim(self, recording_id: str) -> bool:
        """Mark a recording worked on here (``busy``) unless it already is: one piece of
        work at a time per recording, and the resuming pass (``resume_unfinished``) and an
        erasure leave it alone meanwhile. Claimed synchronously, in the callback that
        starts the work: no moment between the recorder leaving ``live`` and the task's
        start where the recording looks abandoned."""
        if recording_id in self._finalising:
            return False
        self._finalising.add(recording_id)
        return True

    async def _holding(self, recording_id: str, work: Awaitable[None]) -> None:
        """``work`` on a claimed recording, then let go of it."""
        try:
            await work
        finally:
            self._finalising.discard(recording_id)

    def _on_failed(self, recorder: SessionRecorder) -> None:
        # The writer has already let go of the recorder and closed its files.
        self._failures.inc(stage="write")
        reason = f"write failed: {recorder.failure}"
        recording_id = recorder.recording_id
        if self._claim(recording_id):
            self._tasks.spawn(
                self._holding(recording_id, self._mark_failed(recording_id, reason)),
                name="recording-failed",
            )

    async def _mark_failed(self, recording_id: str, reason: str) -> None:
        await self._row_ready(recording_id)
        if await self._status(recording_id, "failed", reason=reason) == UNWRITTEN:
            # Kept for the resuming pass: a write failure is final, and the files it left
            # must not be finalised into a recording as if nothing had failed.
            self._unwritten_failures[recording_id] = reason

    def _on_closed(self, recorder: SessionRecorder) -> None:
        self.live.pop(recorder.recording_id, None)
        if self._closing:
            return  # shutting down: the next start finalises it from the directory
        if recorder.failure is not None:
            return  # already marked failed; nothing to finalise
        recording_id = recorder.recording_id
        if not self._claim(recording_id):
            return
        if not any(recorder.packets_written.values()):
            # The session never carried audio (a refused offer, a leg that never
            # connected): nothing to keep, no row to show.
            self._tasks.spawn(
                self._holding(recording_id, self._discard(recorder)), name="recording-discard"
            )
            return
        self._tasks.spawn(
            self._holding(
                recording_id,
                self._render_and_store(
                    recording_id, recorder.session_id, recorder.directory, recovered=False
                ),
            ),
            name=f"recording-finalise-{recording_id}",
        )

    async def _discard(self, recorder: SessionRecorder) -> None:
        await self._row_ready(recorder.recording_id)
        await asyncio.to_thread(shutil.rmtree, recorder.directory, True)
        await self._discard_row(recorder.recording_id)

    async def _discard_row(self, recording_id: str) -> None:
        try:
            await self.rows.discard(recording_id)
            self._unwritten_discards.discard(recording_id)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            # Its files are gone: only this memory says the row is to go (the resuming
            # pass removes it once the database answers).
            log.warning("recording %s: row not removed (%s)", recording_id, exc)
            self._unwritten_discards.add(recording_id)

    # ------------------------------------------------------------------ finalisation
    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        """Runs in a worker thread (see ``_render_and_store``)."""
        return self._pool.submit(fn, *args)

    async def _finalise(
        self, recording_id: str, session_id: str, directory: Path, *, recovered: bool
    ) -> None:
        if self._claim(recording_id):
            await self._holding(
                recording_id,
                self._render_and_store(recording_id, session_id, directory, recovered=recovered),
            )

    async def _render_and_store(
        self, recording_id: str, session_id: str, directory: Path, *, recovered: bool
    ) -> None:
        """Render a claimed recording's files, check them, store them."""
        await self._row_ready(recording_id)
        await self._status(recording_id, "rendering", recovered=recovered or None)
        location = self._location(session_id, recording_id, directory)
        try:
            # Creating the pool and submitting start worker processes (semaphores,
            # pipes, fork/exec): off the loop.
            future = await asyncio.to_thread(
                self._submit,
                render.render,
                str(directory),
                self.config.format,
                location,
                recovered,
            )
            manifest: dict[str, Any] = await asyncio.wrap_future(future)
        except Exception as exc:
            log.exception("recording %s: finalisation failed", recording_id)
            self._failures.inc(stage="render")
            await self._status(
                recording_id, "failed", reason=f"render failed: {type(exc).__name__}: {exc}"
            )
            return
        await self._complete(recording_id, session_id, directory, manifest, recovered)

    async def _complete(
        self,
        recording_id: str,
        session_id: str,
        directory: Path,
        manifest: dict[str, Any],
        recovered: bool,
    ) -> None:
        """A rendered recording: check its files against the manifest, drop what they
        were rendered from, store them."""
        problems = await asyncio.to_thread(sources.mismatches, directory, manifest)
        if problems:
            log.error(
                "recording %s: rendered files do not match the manifest: %s", recording_id, problems
            )
            self._failures.inc(stage="verify")
            await self._status(
                recording_id,
                "failed",
                reason=f"verify failed (packet logs kept): {'; '.join(problems)}",
            )
            return
        try:
            await asyncio.to_thread(sources.remove_sources, directory)
        except OSError as exc:  # the recording is fine; the next start tries again
            log.warning("recording %s: packet logs not removed (%s)", recording_id, exc)
        await self._store_files(recording_id, session_id, directory, manifest, recovered)

    async def _store_files(
        self,
        recording_id: str,
        session_id: str,
        directory: Path,
        manifest: dict[str, Any],
        recovered: bool,
    ) -> None:
        names = [f["name"] for f in manifest["files"]] + [render.MANIFEST]
        manifest_bytes = await asyncio.to_thread((directory / render.MANIFEST).read_bytes)
        files = _files_listed(manifest, manifest_bytes)
        if self.s3 is not None:
            try:
                for name in names:
                    await self.s3.upload(
                        directory / name,
                        self.s3.key(session_id, recording_id, name),
                        CONTENT_TYPES.get(name, "application/octet-stream"),
                    )
            except StorageError as exc:
                log.warning("recording %s: %s (local files kept)", recording_id, exc)
                self._failures.inc(stage="upload")
                after = await self._status(
                    recording_id,
                    "failed",
                    reason=f"upload failed (local files kept for a retry): {exc}",
                    manifest=manifest,
                    files=files,
                    location=str(directory),
                )
                await self._remove_if_gone(after, recording_id, session_id, directory)
                return
            for f in files:
                f["key"] = self.s3.key(session_id, recording_id, f["name"])
        after = await self._mark_ready(
            recording_id,
            manifest,
            files,
            self._location(session_id, recording_id, directory),
            recovered=recovered,
        )
        if after == UNWRITTEN:
            # The row still says rendering: the files stay where they are (with S3, the
            # local copy too), so the resuming pass, or the next start, finds them and
            # stores the recording again once the database answers.
            return
        if self.s3 is not None:
            # Uploaded and its row written: the local copy goes only now.
            await asyncio.to_thread(shutil.rmtree, directory, True)
        if after != "ready":
            await self._remove_if_gone(after, recording_id, session_id, directory)
            return
        log.info(
            "recording %s ready: %.1fs, %s",
            recording_id,
            manifest["duration_s"],
            manifest["storage"],
        )

    # ------------------------------------------------------------------ background
    async def _run_background(self) -> None:
        try:
            # Recordings are the relay user's only; an older version left the directory
            # (and the files in it) readable by every local user: closing the directory
            # closes them all (relay.private_files).
            if self.config.enabled or await asyncio.to_thread(self.root.is_dir):
                await asyncio.to_thread(private_dir, self.root)
        except OSError as exc:  # the writer reports an unusable directory per recording
            log.warning("recordings directory %s: %s", self.root, exc)
        await self._store.wait_schema_ready()
        try:
            await self.recover()
        except Exception:
            log.exception("recovering unfinished recordings failed")
        retention_at = upload_at = 0.0
        # The first pass a round after start-up recovery, which has just done the same.
        resume_at = asyncio.get_running_loop().time() + RESUME_INTERVAL_S
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            try:
                if now >= retention_at:
                    retention_at = now + RETENTION_INTERVAL_S
                    await self.apply_retention()
                if self.s3 is not None and now >= upload_at:
                    upload_at = now + UPLOAD_RETRY_INTERVAL_S
                    await self.retry_uploads()
                if now >= resume_at:
                    resume_at = now + RESUME_INTERVAL_S
                    await self.resume_unfinished()
            except DatabaseUnavailable as exc:  # an outage, logged by the store's retries
                log.warning("recording housekeeping: %s; the next round retries", exc)
            except Exception:  # the next round retries
                log.exception("recording housekeeping failed")
            self.first_round_done.set()
            await idle(min(RETENTION_INTERVAL_S, UPLOAD_RETRY_INTERVAL_S, RESUME_INTERVAL_S))

    async def recover(self) -> int:
        """Finalise the recordings a previous run of this instance left unfinished."""
        count = await self._recover_rendered()
        unfinished = await asyncio.to_thread(_list_unfinished, self.root)
        live = {r.recording_id for r in self.live.values()}
        for directory, meta in unfinished:
            recording_id, session_id = str(meta["recording_id"]), str(meta["session_id"])
            if recording_id in live or meta.get("instance_id") not in (None, self.instance_id):
                continue
            row = await self.rows.get(recording_id)
            if row is not None and row["status"] == "deleted":
                await self._deleted_meanwhile(recording_id, directory)
                continue
            if row is not None and row["status"] not in ("recording", "rendering"):
                continue  # failed (its reason stays), or already finished
            if row is None and await self._erased(session_id, directory):
                continue
            log.warning("recording %s: unfinished (relay stopped); finalising", recording_id)
            await self._create_row(
                recording_id,
                session_id,
                self._location(session_id, recording_id, directory),
                recovered=True,
                part=int(meta.get("part", 1)),
            )
            await self._finalise(recording_id, session_id, directory, recovered=True)
            count += 1
        return count

    async def _recover_rendered(self) -> int:
        """Rendered recordings of this instance not marked ready yet (the relay stopped
        between rendering and storing) are checked and stored; ready ones still holding
        their sources lose them once checked. How many were stored."""
        count = 0
        for directory, manifest in await asyncio.to_thread(_list_rendered, self.root):
            recording_id, session_id = str(manifest["recording_id"]), str(manifest["session_id"])
            if recording_id in self._finalising:
                continue
            row = await self.rows.get(recording_id)
            if row is None and await self._erased(session_id, directory):
                continue
            if row is None or row["relay_instance"] != self.instance_id:
                continue
            if row["status"] == "deleted":
                await self._deleted_meanwhile(recording_id, directory)
                continue
            if row["status"] in ("recording", "rendering"):
                log.warning(
                    "recording %s: rendered but not stored (relay stopped); storing", recording_id
                )
                recovered = bool(manifest.get("recovered_after_crash"))
                await self._complete(recording_id, session_id, directory, manifest, recovered)
                count += 1
            elif row["status"] == "ready" and await asyncio.to_thread(
                sources.has_sources, directory
            ):
                problems = await asyncio.to_thread(sources.mismatches, directory, manifest)
                if problems:
                    log.warning(
                        "recording %s: sources kept, the files differ: %s", recording_id, problems
                    )
                else:
                    await asyncio.to_thread(sources.remove_sources, directory)
        return count

    async def _deleted_meanwhile(self, recording_id: str, directory: Path) -> None:
        """A recording left on this disk whose row was marked deleted while this instance
        was away (a DELETE, retention or an erasure found its files out of reach): nobody
        will ask this instance for them again, so they go now."""
        log.warning("recording %s: deleted while this relay was away; removing it", recording_id)
        await asyncio.to_thread(_remove_tree, directory)

    async def _erased(self, session_id: str, directory: Path) -> bool:
        """A recording left on this disk whose session was erased while this instance was
        away (relay.erasure: its rows go once no live member holds it): its files go too,
        never finalised into a recording nobody may keep."""
        if await self.rows.session_exists(session_id):
            return False
        log.warning("recording in %s: its session was erased; removing it", directory.name)
        await asyncio.to_thread(_remove_tree, directory)
        return True

    async def resume_unfinished(self) -> int:
        """This instance's recordings still ``recording`` or ``rendering`` although nothing
        here works on them any more (not recorded, not claimed: ``busy``): a status write
        that failed while the database was away (the ready row after the files were
        stored, the failed row of a render, a check or an upload) left them so. Each is
        taken up again from what is on disk, as start-up recovery does: rendered ones are
        checked and stored, unrendered ones finalised; with S3, one whose local copy is
        gone is marked ready from what the store holds. What only this run's memory holds
        (a write failure's reason, a discard) is written. How many were taken up."""
        count = 0
        for recording_id, reason in list(self._unwritten_failures.items()):
            if self._claim(recording_id):
                try:
                    after = await self._status(recording_id, "failed", reason=reason)
                finally:
                    self._finalising.discard(recording_id)
                if after != UNWRITTEN:
                    self._unwritten_failures.pop(recording_id, None)
                    count += 1
        for recording_id in list(self._unwritten_discards):
            await self._discard_row(recording_id)
            count += recording_id not in self._unwritten_discards
        skip = sorted(
            self._finalising
            | set(self.live)
            | set(self._unwritten_failures)
            | self._unwritten_discards
        )
        for row in await self.rows.unfinished(self.instance_id, skip=skip):
            if self.busy(row["id"]) or row["id"] in self._unwritten_failures:
                continue  # claimed since the query
            count += await self._resume(row)
        return count

    async def _resume(self, row: asyncpg.Record) -> bool:
        recording_id, session_id = row["id"], row["session_id"]
        recovered = bool(row["recovered"])
        directory = self.root / part_directory(session_id, row["part"])
        if not self._claim(recording_id):
            return False
        try:
            # Looked at again under the claim: a DELETE, retention or an erasure may have
            # taken it since the query (its row deleted or gone: nothing to bring back).
            fresh = await self.rows.get(recording_id)
            if fresh is None or fresh["status"] not in ("recording", "rendering"):
                return False
            manifest = await asyncio.to_thread(_read_manifest, directory)
            if manifest is not None and manifest.get("recording_id") == recording_id:
                log.warning(
                    "recording %s: rendered, its status not written (the database was "
                    "away); storing it",
                    recording_id,
                )
                await self._complete(recording_id, session_id, directory, manifest, recovered)
                return True
            if await asyncio.to_thread((directory / META).is_file):
                log.warning(
                    "recording %s: not finalised, its status not written (the database was "
                    "away); finalising it",
                    recording_id,
                )
                await self._render_and_store(
                    recording_id, session_id, directory, recovered=recovered
                )
                return True
            if fresh["storage"] == "s3" and await self._ready_from_store(
                recording_id, session_id, directory, recovered
            ):
                return True
            if recording_id not in self._nothing_to_resume:  # said once per run
                self._nothing_to_resume.add(recording_id)
                log.warning(
                    "recording %s: still %s, and nothing in %s (nor, with S3, in the "
                    "store, or it did not answer) to finish it from",
                    recording_id,
                    fresh["status"],
                    directory,
                )
            return False
        finally:
            self._finalising.discard(recording_id)

    async def _ready_from_store(
        self, recording_id: str, session_id: str, directory: Path, recovered: bool
    ) -> bool:
        """An S3 recording whose files all went up but whose ready write was lost, and
        whose local copy is gone (an older version removed it before that write): the
        manifest, uploaded last, says the upload finished and what the row lists. False:
        not in the store (or it did not answer: the next pass asks again)."""
        if self.s3 is None:
            return False  # S3 not configured here (any more): nothing to look in
        try:
            data = await self.s3.read(self.s3.key(session_id, recording_id, render.MANIFEST))
            manifest = json.loads(data)
        except (StorageError, ValueError):
            return False
        if not isinstance(manifest, dict) or manifest.get("recording_id") != recording_id:
            return False
        files = _files_listed(manifest, data)
        for f in files:
            f["key"] = self.s3.key(session_id, recording_id, f["name"])
            if not await self.s3.exists(f["key"]):
                return False
        log.warning(
            "recording %s: in the store, its ready status not written; marking it ready",
            recording_id,
        )
        after = await self._mark_ready(
            recording_id,
            manifest,
            files,
            self.s3.location(session_id, recording_id),
            recovered=recovered,
        )
        if after not in ("ready", UNWRITTEN):
            await self._remove_if_gone(after, recording_id, session_id, directory)
        return True

    async def retry_uploads(self) -> int:
        if self.s3 is None:
            return 0
        count = 0
        for row in await self.rows.upload_pending(self.instance_id):
            directory = Path(row["location"] or "")
            manifest_path = directory / render.MANIFEST
            if not await asyncio.to_thread(manifest_path.is_file):
                continue
            manifest = json.loads(await asyncio.to_thread(manifest_path.read_text))
            await self._store_files(
                row["id"], row["session_id"], directory, manifest, bool(row["recovered"])
            )
            count += 1
        return count

    async def apply_retention(self, now: datetime | None = None) -> int:
        """Delete every recording past ``retention_days`` that this instance can (batches
        of RETENTION_BATCH until none is left: an hourly pass keeps up with any rate). A
        recording on a live instance's disk is that instance's to delete (``delete`` says
        so); one whose files could not be removed is logged and tried again at the next
        pass."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.config.retention_days)
        count = 0
        in_object_store = 0
        after: tuple[datetime, str] | None = None
        while True:
            batch = await self.rows.expired(cutoff, after=after, limit=RETENTION_BATCH)
            for row in batch:
                try:
                    await self.delete(row, reason="retention")
                    count += 1
                except NoObjectStore:
                    in_object_store += 1  # a member with S3 configured deletes them
                except (DeletionFailed, RecordingElsewhere, StorageError) as exc:
                    log.warning("recording %s: retention could not delete it: %s", row["id"], exc)
            if len(batch) < RETENTION_BATCH:
                if in_object_store:
                    log.info(
                        "retention: %d recording(s) in the object store left to a member "
                        "with S3 configured",
                        in_object_store,
                    )
                return count
            after = (batch[-1]["created_at"], batch[-1]["id"])

    # ------------------------------------------------------------------ operator API
    async def delete(self, row: asyncpg.Record, *, reason: str) -> None:
        """Remove a recording's files/objects and mark its row deleted: this recording's
        own (a session taken over has a directory per part, and each part is a recording
        of its own). Raises ``RecordingElsewhere`` for files on another instance's disk
        (not reachable from here), ``DeletionFailed`` when files could not be removed
        (the row stays as it was), ``StorageError`` from the object store (``NoObjectStore``
        for objects this instance cannot reach: no S3 configured here)."""
        session_id, recording_id = row["session_id"], row["id"]
        if row["storage"] == "s3" and self.s3 is None:
            # Marking the row deleted here would leave its objects in the bucket for good,
            # with nothing left to find them by.
            raise NoObjectStore("S3 storage is not configured on this instance")
        directory = self.root / part_directory(session_id, row["part"])
        # A local recording's directory, or an S3 one's kept after a failed upload: the
        # location is then a path on its instance's disk, not an object key.
        location = row["location"] or ""
        local = Path(location) if location.startswith("/") else None
        paths = {directory, *([local] if local else [])}
        holder = row["relay_instance"]
        if (
            local is not None
            and holder != self.instance_id
            and not await asyncio.to_thread(lambda: any(p.exists() for p in paths))
            and (self._is_live_member is None or await self._is_live_member(holder))
        ):
            # Only that instance reaches them. One that is gone took them with it (or
            # left them where nobody serves them): the row is marked deleted.
            raise RecordingElsewhere(holder)
        # The local files first: if they cannot be removed, the object store's copy and
        # the row stay as they were.
        for path in paths:
            try:
                await asyncio.to_thread(_remove_tree, path)
            except OSError as exc:
                raise DeletionFailed(f"{path.name}: {exc.strerror or exc}") from exc
        if self.s3 is not None and row["storage"] == "s3":
            await self.s3.delete_prefix(self.s3.key(session_id, recording_id, ""))
        await self.rows.set_status(recording_id, "deleted", reason=reason)

    def local_file(self, row: asyncpg.Record, name: str) -> Path:
        return Path(row["location"] or self.root / row["session_id"]) / name

    async def note_consent(self, session_id: str) -> None:
        """The candidate page showed the recording notice before this session started."""
        try:
            await self.rows.note_consent(session_id, True)
        except DatabaseUnavailable as exc:
            log.warning("session %s: recording notice not noted (%s)", session_id, exc)

    async def summary(self) -> dict[str, Any]:
        """The ``recordings`` block of /api/stats."""
        out: dict[str, Any] = {
            "enabled": self.config.enabled,
            "storage": self.config.storage,
            "format": self.config.format,
            "live": len(self.live),
            "finalising": len(self._finalising),
        }
        try:
            out.update(await self.rows.summary())
            # The newest few, for the dashboard's list (player, transcript, delete).
            latest, _ = await self.rows.page(limit=LATEST_IN_STATS, offset=0)
            out["latest"] = [_masked(rows.to_json(r)) for r in latest]
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            out["database"] = f"unavailable: {type(exc).__name__}"
        return out
