"""Per-type rate limit of the browser's allowed events (a token bucket per type).

An allowed event is still a request to the model: a page (or a script) sending 300
``response.cancel`` at once had all 300 reach the upstream. Each allowed type gets its own
bucket: ``burst`` events at once, refilled at ``rate_per_s``; an event finding its bucket
empty is refused (``rate_limited``) like any other refused event, so a sender that keeps
going hits the refused-events flood limit too. Types are the allow-list's, so the number
of buckets is bounded by configuration, never by what a browser sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TypeRateLimiter:
    __slots__ = ("_buckets", "_burst", "_clock", "_rate")

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        # type -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, kind: str) -> bool:
        """Take one token from ``kind``'s bucket; False when there is none."""
        now = self._clock()
        tokens, counted_at = self._buckets.get(kind, (self._burst, now))
        tokens = min(self._burst, tokens + (now - counted_at) * self._rate)
        if tokens < 1.0:
            self._buckets[kind] = (tokens, now)
            return False
        self._buckets[kind] = (tokens - 1.0, now)
        return True
