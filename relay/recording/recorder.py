"""Per-session recorders and the one writer thread that puts their packets on disk.

The forwarders call ``LegTap.on_packet`` on the event loop for every received packet: it
appends the packet to a bounded deque (O(1), no lock, no I/O) or counts a drop. The
writer thread wakes every ``FLUSH_INTERVAL_S``, drains every recorder's deques into its
packet logs (``relay.recording.packetlog``) and ``events.jsonl``, and flushes, so what
was received is in the files within about a second; ``fsync`` runs once a second per
recorder so a machine crash loses about as much as a process crash.

A session directory holds ``meta.json`` (ids, clock origin), ``candidate.rlog`` and
``interviewer.rlog`` and ``events.jsonl`` (transcript events, the clock marks ``active``
and ``end``, drop counts). Offsets are seconds on the session clock: ``time.monotonic()``
minus the recorder's origin, taken when the bridge was created.

Any exception while writing (an ``OSError``: disk full, an unwritable directory; or
anything else: a packet no log can hold, a bug) fails that recorder only, at once and for
good: its files are closed, its queues emptied, later packets are ignored, the writer
thread lets go of it, and ``on_failed`` then ``on_closed`` run on the event loop with the
reason. Nothing is retried (a write that failed for a reason other than the disk would
fail the same way on every pass). The interview never notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from relay.fields import iso_utc
from relay.media.tap import TappedPacket
from relay.private_files import open_private, private_dir, write_private
from relay.recording import packetlog, transcript

log = logging.getLogger("relay.recording")

FLUSH_INTERVAL_S = 0.5
FSYNC_INTERVAL_S = 1.0
# Packets held per leg between writer passes (10 s at 50 packets/s); beyond, drops count.
QUEUE_MAX_PACKETS = 500
EVENTS_MAX = 1000
LEGS = ("candidate", "interviewer")
META = "meta.json"
EVENTS = "events.jsonl"


def leg_file(leg: str) -> str:
    return f"{leg}.rlog"


def error_name(exc: BaseException) -> str:
    """``ValueError``, ``struct.error``: the module too unless it is a built-in."""
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class LegTap:
    """The ``PacketTap`` of one direction of one session."""

    __slots__ = ("_closed", "_limit", "dropped", "leg", "queue", "received")

    def __init__(self, leg: str, limit: int = QUEUE_MAX_PACKETS) -> None:
        self.leg = leg
        self.queue: deque[TappedPacket] = deque()
        self._limit = limit
        self._closed = False
        self.received = 0
        self.dropped = 0

    def on_packet(self, packet: TappedPacket) -> None:
        if self._closed:
            return
        self.received += 1
        if len(self.queue) >= self._limit:
            self.dropped += 1
            return
        self.queue.append(packet)

    def close(self) -> None:
        self._closed = True


class SessionRecorder:
    """Recording state of one session; the event loop feeds it, the writer thread writes it."""

    def __init__(
        self,
        *,
        recording_id: str,
        session_id: str,
        directory: Path,
        instance_id: str,
        audio_format: str,
        on_failed: Callable[[SessionRecorder], None],
        on_closed: Callable[[SessionRecorder], None],
        loop: asyncio.AbstractEventLoop,
        part: int = 1,
    ) -> None:
        self.recording_id = recording_id
        # Which part of the session's recording (a session taken over by another member
        # continues in part 2, ...).
        self.part = part
        self.session_id = session_id
        self.directory = directory
        self.instance_id = instance_id
        self.audio_format = audio_format
        self.origin = time.monotonic()
        self.origin_wall = time.time()
        self.taps = {leg: LegTap(leg) for leg in LEGS}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_MAX)
        self.failure: str | None = None
        self.stopping = False
        self.closed = False
        self.packets_written = dict.fromkeys(LEGS, 0)
        self._on_failed = on_failed
        self._on_closed = on_closed
        self._loop = loop
        # Writer-thread state.
        self._files: dict[str, IO[bytes]] = {}
        self._opened = False
        self._dropped_written = dict.fromkeys(LEGS, 0)
        self._fsync_at = 0.0
        # Files written since the last flush / since the last fdatasync.
        self._dirty: set[str] = set()
        self._unsynced: set[str] = set()

    # ------------------------------------------------------------------ event loop side
    def tap(self, leg: str) -> LegTap:
        return self.taps[leg]

    def on_upstream_event(self, message: str | bytes) -> None:
        """The event relay hands every upstream server event here (transcript source)."""
        if self.stopping or not transcript.might_matter(message):
            return
        assert isinstance(message, str)
        record = transcript.extract(message, time.monotonic() - self.origin)
        if record is not None:
            self.events.append(record)

    def mark(self, event: str, at: float | None) -> None:
        """A clock mark (``active``, ``end``, ``browser_lost``, ``browser_resumed``,
        ``upstream_lost``, ``upstream_resumed``) at
        monotonic time ``at``."""
        if at is not None:
            self.events.append({"kind": "clock", "event": event, "offset": at - self.origin})

    def stop(self, active_at: float | None, ended_at: float | None) -> None:
        """The session ended: write what is queued, close the files, then ``on_closed``."""
        if self.stopping:
            return
        self.mark("active", active_at)
        self.mark("end", ended_at if ended_at is not None else time.monotonic())
        self.stopping = True
        for tap in self.taps.values():
            tap.close()

    @property
    def dropped(self) -> dict[str, int]:
        return {leg: tap.dropped for leg, tap in self.taps.items()}

    # ------------------------------------------------------------------ writer side
    def write_pending(self, now: float) -> bool:
        """Drain the queues to disk; True once the recorder is finished (closed)."""
        if self.closed:
            return True
        stopping = self.stopping  # read first: whatever was queued before it is written
        try:
            self._write(now, force_sync=stopping)
        except OSError as exc:
            self.fail(f"{type(exc).__name__}: {exc.strerror or exc}")
            return True
        except Exception as exc:
            # Not the disk: a bug, or a packet the log cannot hold. The traceback matters.
            log.exception("recording %s: writing failed", self.recording_id)
            self.fail(f"{error_name(exc)}: {exc}")
            return True
        if stopping:
            self._close_files()
            self.closed = True
            self._loop.call_soon_threadsafe(self._on_closed, self)
            return True
        return False

    def _open(self) -> None:
        # Readable by the relay's user only (relay.private_files): the recordings directory,
        # this session's, and every file in them.
        private_dir(self.directory.parent)
        private_dir(self.directory)
        meta = {
            "recording_id": self.recording_id,
            "session_id": self.session_id,
            "instance_id": self.instance_id,
            "format": self.audio_format,
            "part": self.part,
            "created_at": iso_utc(datetime.fromtimestamp(self.origin_wall, UTC)),
            "origin_wall": self.origin_wall,
        }
        write_private(self.directory / META, json.dumps(meta))
        for leg in LEGS:
            f = open_private(self.directory / leg_file(leg), "ab")
            if f.tell() == 0:
                f.write(packetlog.MAGIC)
            self._files[leg] = f
        self._files["events"] = open_private(self.directory / EVENTS, "ab")
        self._opened = True

    def _write(self, now: float, *, force_sync: bool) -> None:
        if not self._opened:
            self._open()
        origin = self.origin
        for leg, tap in self.taps.items():
            queue = tap.queue
            if not queue:
                continue
            chunks: list[bytes] = []
            while queue:
                p = queue.popleft()
                codec = packetlog.codec_id(p.codec)
                if codec is None:
                    continue
                chunks.append(
                    packetlog.encode(
                        p.arrival - origin,
                        p.sequence_number,
                        p.timestamp,
                        p.ssrc,
                        codec,
                        p.clock_rate,
                        p.payload,
                    )
                )
            self._files[leg].write(b"".join(chunks))
            self.packets_written[leg] += len(chunks)
            self._dirty.add(leg)
            self._unsynced.add(leg)
        lines: list[bytes] = []
        while self.events:
            lines.append(json.dumps(self.events.popleft()).encode() + b"\n")
        dropped = self.dropped
        if dropped != self._dropped_written:
            self._dropped_written = dropped
            lines.append(json.dumps({"kind": "dropped", "dropped": dropped}).encode() + b"\n")
        if lines:
            self._files["events"].write(b"".join(lines))
            self._dirty.add("events")
            self._unsynced.add("events")
        for name in self._dirty:
            self._files[name].flush()  # in the kernel: a crash of this process loses no more
        self._dirty.clear()
        if force_sync or now - self._fsync_at >= FSYNC_INTERVAL_S:
            # On the device too (a machine crash); fdatasync, and only files that changed.
            self._fsync_at = now
            for name in self._unsynced:
                os.fdatasync(self._files[name].fileno())
            self._unsynced.clear()

    def fail(self, reason: str) -> None:
        """Fail this recorder for good and let go of it (writer thread; see the module
        docstring). Never raises: it is the last resort of the writer's own error path."""
        if self.closed:
            return
        self.failure = reason
        for tap in self.taps.values():
            tap.close()
            tap.queue.clear()
        self.events.clear()
        self._close_files()
        self.closed = True
        log.warning("recording %s failed: %s", self.recording_id, reason)
        try:
            self._loop.call_soon_threadsafe(self._on_failed, self)
            self._loop.call_soon_threadsafe(self._on_closed, self)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.warning("recording %s: failure not reported (event loop closed)", self.recording_id)

    def _close_files(self) -> None:
        for f in self._files.values():
            # A file that cannot be closed (its last flush failed) is given up all the same.
            with contextlib.suppress(Exception):
                f.close()
        self._files.clear()


class RecordingWriter:
    """One thread writing every live recorder of the process."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._interval = interval_s
        self._recorders: list[SessionRecorder] = []
        # Added from the event loop without a lock (deque appends are atomic), so adding
        # never waits for the writer thread.
        self._incoming: deque[SessionRecorder] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    @property
    def recorders(self) -> int:
        """How many recorders the thread holds (added, not yet closed or failed)."""
        return len(self._recorders) + len(self._incoming)

    def add(self, recorder: SessionRecorder) -> None:
        # No wake-up: Event.set takes a lock the writer may hold; it polls soon enough.
        self._incoming.append(recorder)

    def close(self) -> None:
        """Write what is left and end the thread (blocking: run it off the loop)."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            stop = self._stop
            while self._incoming:
                self._recorders.append(self._incoming.popleft())
            done: list[SessionRecorder] = []
            for recorder in self._recorders:
                try:
                    finished = recorder.write_pending(time.monotonic())
                except Exception as exc:  # one recorder's bug must not stop the others
                    log.exception("recording %s: writer error", recorder.recording_id)
                    # Failed and let go of, never retried on the next pass.
                    recorder.fail(f"{error_name(exc)}: {exc}")
                    finished = True
                if finished:
                    done.append(recorder)
            if done:
                self._recorders = [r for r in self._recorders if r not in done]
            if stop:
                return
