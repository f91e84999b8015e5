"""Sliding one-minute windows of event times per key (a user id, a client address), bounded."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable


class SlidingWindowLimiter:
    def __init__(
        self,
        per_minute: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = per_minute
        self._window = 60.0
        self._max_keys = max_keys
        self._clock = clock
        self._hits: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def _current(self, key: Hashable, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        self._hits.move_to_end(key)
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        return hits

    def _trim(self) -> None:
        while len(self._hits) > self._max_keys:
            self._hits.popitem(last=False)

    def acquire(self, key: Hashable) -> float | None:
        """Count one request; None if allowed, else seconds until the next is allowed."""
        now = self._clock()
        hits = self._current(key, now)
        if len(hits) >= self._limit:
            return hits[0] + self._window - now
        hits.append(now)
        self._trim()
        return None

    def peek(self, key: Hashable) -> float | None:
        """Like ``acquire`` without counting: None if under the limit, else the wait."""
        if key not in self._hits:
            return None
        now = self._clock()
        hits = self._current(key, now)
        if len(hits) >= self._limit:
            return hits[0] + self._window - now
        return None

    def record(self, key: Hashable) -> None:
        """Count one event whatever the limit (e.g. a failed authentication)."""
        now = self._clock()
        self._current(key, now).append(now)
        self._trim()
