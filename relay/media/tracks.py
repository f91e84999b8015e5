"""A bounded audio track fed by the relay: what one leg receives, the other leg sends."""

from __future__ import annotations

import asyncio
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

    Nothing is kept until the consumer first calls ``recv()``: aiortc's sender starts
    reading once its leg is connected, and audio from before that moment is stale (it
    would reach the listener as a one-second burst). Such items are counted apart.
    """

    kind = "audio"

    def __init__(self, max_items: int) -> None:
        super().__init__()
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._items: deque[Any] = deque()
        self._max = max_items
        self._waiter: asyncio.Future[None] | None = None
        self._stopped = False
        self._consuming = False
        self.dropped = 0
        self.dropped_before_start = 0
        self.max_depth = 0

    @property
    def depth(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        """Queue ``item`` without blocking; drop the oldest if full (no-op once stopped)."""
        if self._stopped:
            return
        if not self._consuming:
            self.dropped_before_start += 1
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
        self._consuming = True
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
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        super().stop()
