"""Erasing an interview, or a user and everything of theirs (docs/api.md, "Erasure").

The order keeps one promise: no row says a thing is gone while a copy of it is left.

1. ``request_interview`` / ``request_user`` mark it (relay.erasure.rows): gone for the API
   from the commit on, its live sessions told to end wherever they are held, its link or
   token dead.
2. ``erase_interview`` / ``erase_user`` remove each recording's files through the
   recordings' own deletion (``RecordingService.delete``: local files, then the object
   store's, then the row marked deleted), then delete the rows in one transaction, and
   write ``interview.deleted``. Whatever is not possible yet is left for the next try: a
   session still live, a recording still being recorded or rendered by a live member,
   files on another live member's disk (that member's own pass removes them), an object
   store that does not answer.
3. ``erase_due`` is that next try: the request makes the first at once, and every
   member's housekeeping (every few seconds) goes on until nothing is marked.

Every step can run twice, on two members at once, or again after a failure: removing
files that are gone is fine, a recording marked deleted twice is one, and the rows'
deletion re-checks under the row's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from relay.db import DatabaseUnavailable, Store
from relay.erasure.rows import ErasureRows, Pending
from relay.interviews.rows import Notify
from relay.recording.s3 import StorageError
from relay.recording.service import DeletionFailed, RecordingElsewhere, RecordingService

log = logging.getLogger("relay.erasure")

# Why a recording's row is marked deleted (its status_reason, until the row goes).
REASON = "erased"
IsLiveMember = Callable[[str], Awaitable[bool]]
# Drops a token hash from this member's user caches and Redis (Admission.forget).
Forget = Callable[[str], Awaitable[None]]


class Erasure:
    def __init__(
        self,
        store: Store,
        recordings: RecordingService,
        notify: Notify,
        *,
        instance_id: str,
        is_live_member: IsLiveMember,
        forget: Forget | None = None,
    ) -> None:
        self.rows = ErasureRows(store)
        self._forget = forget
        self._recordings = recordings
        self._notify = notify
        self._instance_id = instance_id
        self._is_live_member = is_live_member

    # ------------------------------------------------------------------ requests
    async def request_interview(self, interview_id: str) -> bool:
        """Mark it and try to finish at once; False: no such interview (or being erased)."""
        if not await self.rows.mark_interview(interview_id, self._notify):
            return False
        log.info("interview %s: erasure requested", interview_id)
        await self._try(self.erase_interview(interview_id), f"interview {interview_id}")
        return True

    async def request_user(self, user_id: int) -> bool:
        """Mark the user and its interviews, try to finish at once; False: no such user."""
        token_hash = await self.rows.mark_user(user_id, self._notify)
        if token_hash is None:
            return False
        if self._forget is not None:
            # At once, as a deactivation does: the database's notification and the
            # revoke_user command reach the caches a moment later, and until then the
            # cached token would still open a session (of a user whose row may be gone).
            await self._forget(token_hash)
        log.info("user %s: erasure requested", user_id)
        await self._try(self.erase_user(user_id), f"user {user_id}")
        return True

    async def _try(self, work: Awaitable[bool], what: str) -> None:
        # The request's answer does not depend on this first try: it is marked, and
        # housekeeping finishes what this one could not (a database hiccup included).
        try:
            await work
        except Exception:
            log.exception("%s: erasure not finished yet; housekeeping goes on", what)

    # ------------------------------------------------------------------ the work
    async def erase_due(self) -> int:
        """Housekeeping: go on with every marked interview and user; how many finished."""
        marked = await self.rows.marked()
        done = 0
        for interview_id in marked.interviews:
            done += await self._isolated(self.erase_interview(interview_id), interview_id)
        for user_id in marked.users:
            done += await self._isolated(self.erase_user(user_id), f"user {user_id}")
        return done

    async def _isolated(self, work: Awaitable[bool], what: str) -> bool:
        # One erasure that fails in a way nobody foresaw must not hold up every other one
        # (nor the rest of housekeeping's round) round after round: it is logged and
        # tried again at the next round. An outage is everyone's: it ends the round.
        try:
            return await work
        except DatabaseUnavailable:
            raise
        except Exception:
            log.exception("%s: erasure failed; retried at the next round", what)
            return False

    async def erase_interview(self, interview_id: str) -> bool:
        """True once the interview's rows are gone."""
        if not await self._remove_files(await self.rows.pending(interview_id=interview_id)):
            return False
        if not await self.rows.finish_interview(interview_id):
            return False
        log.info("interview %s: erased", interview_id)
        return True

    async def erase_user(self, user_id: int) -> bool:
        """True once the user's row is gone (its interviews first: each one that can be is
        erased here, so a request erasing a candidate finishes what it can at once, not at
        housekeeping's next round)."""
        for interview_id in await self.rows.interviews_of(user_id):
            await self.erase_interview(interview_id)
        if not await self._remove_files(await self.rows.pending(user_id=user_id)):
            return False
        if not await self.rows.finish_user(user_id, self._notify):
            return False
        log.info("user %s: erased", user_id)
        return True

    async def _remove_files(self, pending: Pending) -> bool:
        """Remove what can be removed from here; True when nothing is left in the way."""
        clear = pending.live_sessions == 0
        for row in pending.recordings:
            clear = await self._remove_recording(row) and clear
        return clear

    async def _busy(self, row: asyncpg.Record) -> bool:
        """Whether a recording not finished yet is still being worked on: here, by its
        recorder or its finalisation; elsewhere, by a member that is alive (one that died
        finishes it at its next start, and then finds it erased: relay.recording.service)."""
        holder = row["relay_instance"]
        if holder == self._instance_id:
            return self._recordings.busy(row["id"])
        return await self._is_live_member(holder)

    async def _remove_recording(self, row: asyncpg.Record) -> bool:
        """One recording's files removed and its row marked deleted; False: not now."""
        if row["status"] in ("recording", "rendering") and await self._busy(row):
            return False  # its live member finishes it first (then it is ready or failed)
        if row["storage"] == "s3" and self._recordings.s3 is None:
            return False  # a member configured with the object store removes it
        try:
            await self._recordings.delete(row, reason=REASON)
        except RecordingElsewhere:
            return False  # on a live member's disk: that member's pass removes them
        except (DeletionFailed, StorageError) as exc:
            log.warning("recording %s: files not removed yet (%s); retried", row["id"], exc)
            return False
        return True
