"""Sliding one-minute windows of event times per key (a user id, a client address), bounded."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

# Retry-After when an address's budget is taken by lookups still under way: they settle
# within a request's time, so a second is enough.
PENDING_RETRY_S = 1.0


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


@dataclass
class _Attempts:
    failures: deque[float] = field(default_factory=deque)
    # Tokens being looked up now (a key per token, not per request) and how many
    # requests of this address wait on each.
    pending: dict[str, int] = field(default_factory=dict)


class FailedAuthLimiter:
    """Failed authentications per client address over a sliding minute, reserved before
    the lookup and settled after it.

    A check followed by a record after the (awaited) lookup lets every request that
    arrives meanwhile pass the check: N parallel guesses are N lookups. Here ``reserve``
    checks and takes a place in one synchronous call (nothing else runs on the event loop
    in between): failures plus tokens under lookup stay within the limit, so at most
    ``per_minute`` guesses of an address are ever being looked up or have failed in the
    window. ``settle`` turns a reservation into a failure or gives it back. Parallel
    requests with one token (a page, a retry) share one reservation, so the limit
    counts guesses, not requests.
    """

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
        self._addresses: OrderedDict[str, _Attempts] = OrderedDict()

    def _attempts(self, address: str, now: float) -> _Attempts:
        attempts = self._addresses.get(address)
        if attempts is None:
            attempts = self._addresses[address] = _Attempts()
            while len(self._addresses) > self._max_keys:
                self._addresses.popitem(last=False)
        self._addresses.move_to_end(address)
        failures = attempts.failures
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        return attempts

    def _forget_if_idle(self, address: str, attempts: _Attempts) -> None:
        if not attempts.failures and not attempts.pending:
            self._addresses.pop(address, None)

    def reserve(self, address: str, token: str | None) -> float | None:
        """None: go ahead (``token``, if any, now counts as under lookup); else the
        seconds to wait. Without a token only the failures so far are checked."""
        now = self._clock()
        attempts = self._attempts(address, now)
        pending = attempts.pending
        if len(attempts.failures) >= self._limit:
            return attempts.failures[0] + self._window - now
        if token is None:
            self._forget_if_idle(address, attempts)
            return None
        if token in pending:
            pending[token] += 1
            return None
        if len(attempts.failures) + len(pending) >= self._limit:
            return PENDING_RETRY_S
        pending[token] = 1
        return None

    def settle(self, address: str, token: str | None, *, failed: bool) -> None:
        """The lookup of ``token`` is over: a failure counts, anything else is given back."""
        now = self._clock()
        attempts = self._attempts(address, now)
        pending = attempts.pending
        if token is not None and token in pending:
            if pending[token] > 1:
                pending[token] -= 1
            else:
                del pending[token]
        if failed:
            attempts.failures.append(now)
        self._forget_if_idle(address, attempts)

    def __len__(self) -> int:
        return len(self._addresses)

    def __contains__(self, address: object) -> bool:
        return address in self._addresses
