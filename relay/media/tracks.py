"""A bounded audio track fed by the relay: what one leg receives, the other leg sends."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError


class BoundedQueueTrack(MediaStreamTrack):
    """An audio track whose ``recv()`` yields what ``put()`` was given, in order.

    Items are ``av.Packet`` (encoded Opus, sent as is by aiortc's sender) or
    ``av.AudioFrame`` (encoded by the sender). At most ``max_items`` wait; when full,
    the oldest is dropped and counted, so a stalled sender costs bounded memory and
    bounded latency instead of growing without limit (aiortc's own queues do not).

    Nothing is queued until the consumer first calls ``recv()``: aiortc's sender starts
    reading once its leg is connected, and audio from before that moment is stale (it
    would reach the listener as a one-second burst). Such items are counted apart,
    except the newest one if it is still fresh (``held_max_age_s``, about one frame):
    the first ``recv()`` returns it at once instead of waiting for the next frame.
    """

    kind = "audio"

    def __init__(self, max_items: int, *, held_max_age_s: float = 0.03) -> None:
        super().__init__()
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._items: deque[Any] = deque()
        self._max = max_items
        self._waiter: asyncio.Future[None] | None = None
        self._stopped = False
        self._consuming = False
        self._held: tuple[Any, float] | None = None
        self.held_max_age_s = held_max_age_s
        self.dropped = 0
        self.dropped_before_start = 0
        self.max_depth = 0

    def count_on_from(self, previous: BoundedQueueTrack) -> None:
        """Keep counting where ``previous`` stopped: this queue replaces it for a resumed
        browser leg (aiortc stops a sender's track when its peer closes), and its counters
        are published as the direction's running totals."""
        self.dropped = previous.dropped
        self.dropped_before_start = previous.dropped_before_start
        self.max_depth = previous.max_depth

    @property
    def depth(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        """Queue ``item`` without blocking; drop the oldest if full (no-op once stopped)."""
        if self._stopped:
            return
        if not self._consuming:
            self.dropped_before_start += 1
            self._held = (item, time.monotonic())
            return
        items = self._items
        if len(items) >= self._max:
            items.popleft()
            self.dropped += 1
        items.append(item)
        if len(items) > self.max_depth:
            self.max_depth = len(items)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> Any:
        if not self._consuming:
            self._consuming = True
            held, self._held = self._held, None
            if held is not None and time.monotonic() - held[1] <= self.held_max_age_s:
                self.dropped_before_start -= 1  # sent after all
                return held[0]
        while not self._items:
            if self.readyState != "live":
                raise MediaStreamError
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def stop(self) -> None:
        """End the track: a pending ``recv()`` raises ``MediaStreamError``."""
        self._stopped = True
        self._items.clear()
        self._held = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        super().stop()
