"""Pure admission logic: breaker, local TTL cache, rate limiter, tokens, request ids."""

from __future__ import annotations

import re

import pytest

from relay.admission.breaker import BreakerState, CircuitBreaker
from relay.admission.cache import UserCache
from relay.admission.local_cache import LocalTTLCache
from relay.admission.rate_limit import PENDING_RETRY_S, FailedAuthLimiter, SlidingWindowLimiter
from relay.admission.tokens import (
    bearer_token,
    hash_token,
    new_token,
    plausible_token,
)
from relay.admission.users import UserRecord
from relay.config import CacheConfig
from relay.observability.metrics import MetricsRegistry
from relay.web.middleware import request_id_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(b: CircuitBreaker) -> BreakerState:
    # A call, not an attribute: the state changes under mypy's narrowing of b.state.
    return b.state


def test_breaker_opens_after_threshold_and_half_opens_one_trial() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, open_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert state(b) == "closed"
    b.record_failure()
    assert state(b) == "open" and not b.allow()
    clock.now += 10
    assert state(b) == "half_open"
    assert b.allow()  # the one trial
    assert not b.allow()  # no second trial while the first is in flight
    b.record_failure()
    assert state(b) == "open"
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert state(b) == "closed" and b.allow()
    assert b.opened_count == 1


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2, open_s=10, clock=FakeClock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert state(b) == "closed"


def test_cancelled_half_open_trial_frees_the_breaker() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, open_s=10, clock=clock)
    b.record_failure()
    clock.now += 10
    assert b.allow()
    b.abandon_trial()
    assert b.allow()


def test_local_cache_ttl_lru_and_stored_none() -> None:
    clock = FakeClock()
    c: LocalTTLCache[str | None] = LocalTTLCache(max_entries=2, clock=clock)
    c.set("a", "A", 5)
    c.set("unknown", None, 5)
    assert c.lookup("unknown") == (True, None)
    assert c.lookup("missing") == (False, None)
    c.lookup("a")  # a is now most recent; adding c evicts "unknown"
    c.set("c", "C", 5)
    assert c.lookup("unknown") == (False, None)
    assert c.lookup("a") == (True, "A")
    clock.now += 5
    assert c.lookup("a") == (False, None)
    assert len(c) == 1


def test_sliding_window_rate_limit() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(per_minute=2, clock=clock)
    assert limiter.acquire(1) is None
    clock.now += 10
    assert limiter.acquire(1) is None
    wait = limiter.acquire(1)
    assert wait is not None and abs(wait - 50) < 1e-6
    assert limiter.acquire(2) is None  # other users unaffected
    clock.now += 50
    assert limiter.acquire(1) is None


def test_tokens() -> None:
    token = new_token()
    assert plausible_token(token)
    assert len(hash_token(token)) == 64 and hash_token(token) != token
    assert not plausible_token("short")
    assert not plausible_token("x" * 20 + "'; drop table users; --")
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_request_ids() -> None:
    first, second = request_id_for("client-req.1_A"), request_id_for("client-req.1_A")
    assert first != second
    assert re.fullmatch(r"req_[0-9a-f]{32}\.client-req\.1_A", first)
    for bad in (None, "", "x" * 65, "has space", "inject\nheader", "ok\n", "é"):
        rid = request_id_for(bad)
        assert rid.startswith("req_") and len(rid) == 36


async def test_unknown_tokens_cannot_evict_known_users_from_the_local_cache() -> None:
    config = CacheConfig(local_max_entries=10, local_negative_max_entries=5)
    cache = UserCache(config, MetricsRegistry())
    known = UserRecord(id=1, email="a@example.test", active=True, remaining_seconds=60)
    await cache.put("known", known)
    # A brute force of made-up tokens, far more than either bound.
    for i in range(100):
        await cache.put(f"unknown-{i}", None)
    hit = await cache.get("known")
    assert hit is not None and hit.user == known and hit.source == "local"
    # The negative cache is bounded on its own: only the latest few misses are kept.
    assert await cache.get("unknown-0") is None
    latest = await cache.get("unknown-99")
    assert latest is not None and latest.user is None
    # A token that becomes known leaves the negative cache (and the other way round).
    await cache.put("unknown-99", known)
    again = await cache.get("unknown-99")
    assert again is not None and again.user == known
    await cache.close()


def test_failed_auth_reservations_check_and_reserve_in_one_step() -> None:
    now = [0.0]
    limiter = FailedAuthLimiter(2, clock=lambda: now[0])
    # Two different tokens under lookup take the address's whole budget...
    assert limiter.reserve("10.0.0.1", "a") is None
    assert limiter.reserve("10.0.0.1", "b") is None
    assert limiter.reserve("10.0.0.1", "c") == pytest.approx(PENDING_RETRY_S)
    # ...but more requests with a token already under lookup share its place.
    assert limiter.reserve("10.0.0.1", "a") is None
    assert limiter.reserve("10.0.0.2", "c") is None  # other addresses are not affected
    # A lookup that succeeds gives its place back (once every request with it is done).
    limiter.settle("10.0.0.1", "a", failed=False)
    assert limiter.reserve("10.0.0.1", "c") == pytest.approx(PENDING_RETRY_S)
    limiter.settle("10.0.0.1", "a", failed=False)
    assert limiter.reserve("10.0.0.1", "c") is None
    # Failures stay for the window; without a token only they are checked.
    limiter.settle("10.0.0.1", "b", failed=True)
    limiter.settle("10.0.0.1", "c", failed=True)
    assert limiter.reserve("10.0.0.1", None) == pytest.approx(60.0)
    assert limiter.reserve("10.0.0.1", "d") == pytest.approx(60.0)
    now[0] = 30.0
    assert limiter.reserve("10.0.0.1", "d") == pytest.approx(30.0)
    now[0] = 60.5
    assert limiter.reserve("10.0.0.1", None) is None
    assert limiter.reserve("10.0.0.1", "d") is None


def test_failed_auth_limiter_forgets_quiet_addresses_and_stays_bounded() -> None:
    limiter = FailedAuthLimiter(3, max_keys=10, clock=lambda: 0.0)
    for i in range(100):
        address = f"10.0.0.{i}"
        assert limiter.reserve(address, "t") is None
        limiter.settle(address, "t", failed=i % 2 == 0)
    assert len(limiter) <= 10
    limiter.reserve("10.1.0.1", None)
    limiter.reserve("10.1.0.2", "t")
    limiter.settle("10.1.0.2", "t", failed=False)
    assert "10.1.0.1" not in limiter and "10.1.0.2" not in limiter
