"""The user cache: Redis with TTLs, an in-process fallback, and a breaker on Redis.

Keys are the token's SHA-256 (never the token). A known user is cached for
``hit_ttl_s``; an unknown token for the short ``miss_ttl_s`` so repeated bad tokens do
not reach PostgreSQL. Every write and every Redis hit also goes to the bounded local
cache, so when Redis dies the process still serves the users it has seen lately.
Unknown tokens live in a separate, smaller local cache: a stream of made-up tokens can
fill that one, never evict known users.
Each Redis call is bounded by ``redis_timeout_s``; consecutive failures open the breaker
and Redis is skipped entirely until it is retried, so a dead or hung Redis adds no
latency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.admission.breaker import CircuitBreaker
from relay.admission.local_cache import LocalTTLCache
from relay.admission.store import UserRecord
from relay.config import CacheConfig
from relay.observability.metrics import FAST_BUCKETS, MetricsRegistry
from relay.observability.request_context import record_stage

log = logging.getLogger("relay.cache")

CacheSource = Literal["redis", "local"]
RedisState = Literal["disabled", "up", "down"]


@dataclass(frozen=True)
class CachedUser:
    """A cache hit: ``user`` is None for a token cached as unknown."""

    user: UserRecord | None
    source: CacheSource


class UserCache:
    def __init__(self, config: CacheConfig, metrics: MetricsRegistry) -> None:
        self._config = config
        self._local: LocalTTLCache[UserRecord] = LocalTTLCache(config.local_max_entries)
        self._local_unknown: LocalTTLCache[None] = LocalTTLCache(config.local_negative_max_entries)
        self._breaker = CircuitBreaker(config.breaker_failure_threshold, config.breaker_open_s)
        self._redis: aioredis.Redis | None = None
        if config.redis_url:
            self._redis = aioredis.from_url(
                config.redis_url,
                socket_timeout=config.redis_timeout_s,
                socket_connect_timeout=config.redis_timeout_s,
                # redis-py retries by default; our breaker and the local cache are the
                # retry policy, so one attempt per call.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        self._lookups = metrics.counter(
            "relay_cache_lookups_total", "User cache lookups", ["result", "source"]
        )
        self._redis_errors = metrics.counter(
            "relay_cache_redis_errors_total", "Redis calls that failed or timed out", ["op"]
        )
        self._redis_skipped = metrics.counter(
            "relay_cache_redis_skipped_total", "Redis calls skipped while the breaker is open"
        )
        self._redis_up = metrics.gauge(
            "relay_cache_redis_up", "1 when Redis is in use, 0 when down or disabled"
        )
        self._redis_up.set(1 if self._redis else 0)
        self._latency = metrics.histogram(
            "relay_cache_lookup_duration_seconds",
            "User cache lookup latency (Redis, or the local fallback)",
            buckets=FAST_BUCKETS,
        )

    @property
    def redis_state(self) -> RedisState:
        if self._redis is None:
            return "disabled"
        return "up" if self._breaker.state == "closed" else "down"

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def _key(self, token_hash: str) -> str:
        return f"{self._config.key_prefix}user:{token_hash}"

    # ------------------------------------------------------------------ API
    async def get(self, token_hash: str) -> CachedUser | None:
        started = time.perf_counter()
        try:
            ok, raw = await self._redis_call("get", lambda r: r.get(self._key(token_hash)))
            if ok and raw is not None:
                user = _decode(raw)
                self._lookups.inc(result="hit" if user else "negative_hit", source="redis")
                # Kept in the local fallback too, so that if Redis dies the users active
                # now (not only the last minute's misses) are still served without the
                # database; as stale as a copy made on a miss, at most local_ttl_s.
                self._remember_locally(token_hash, user)
                return CachedUser(user, "redis")
            # The local cache stands in only when Redis did not answer: when it did, its
            # "miss" is authoritative (another instance or the CLI may have evicted it).
            found, value = (False, None) if ok else self._lookup_local(token_hash)
            if found:
                self._lookups.inc(result="hit" if value else "negative_hit", source="local")
                return CachedUser(value, "local")
            self._lookups.inc(result="miss", source="redis" if ok else "local")
            return None
        finally:
            elapsed = time.perf_counter() - started
            self._latency.observe(elapsed)
            record_stage("cache", elapsed * 1000)

    def _lookup_local(self, token_hash: str) -> tuple[bool, UserRecord | None]:
        found, user = self._local.lookup(token_hash)
        if found:
            return True, user
        return self._local_unknown.lookup(token_hash)

    def _remember_locally(self, token_hash: str, user: UserRecord | None) -> None:
        ttl = self._config.hit_ttl_s if user else self._config.miss_ttl_s
        local_ttl = min(ttl, self._config.local_ttl_s)
        if user is None:
            self._local.delete(token_hash)
            self._local_unknown.set(token_hash, None, local_ttl)
        else:
            self._local_unknown.delete(token_hash)
            self._local.set(token_hash, user, local_ttl)

    async def put(self, token_hash: str, user: UserRecord | None) -> None:
        ttl = self._config.hit_ttl_s if user else self._config.miss_ttl_s
        self._remember_locally(token_hash, user)
        payload = json.dumps(user.to_cache() if user else None)
        await self._redis_call("set", lambda r: r.set(self._key(token_hash), payload, ex=ttl))

    async def invalidate(self, token_hash: str) -> None:
        self._local.delete(token_hash)
        self._local_unknown.delete(token_hash)
        await self._redis_call("delete", lambda r: r.delete(self._key(token_hash)))

    async def _redis_call(
        self, op: str, call: Callable[[aioredis.Redis], Awaitable[Any]]
    ) -> tuple[bool, Any]:
        """One bounded Redis call through the breaker: (answered, result).

        Not answered when Redis is disabled, the breaker is open, or the call failed.
        """
        if self._redis is None:
            return False, None
        if not self._breaker.allow():
            self._redis_skipped.inc()
            return False, None
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can drop a cancellation.
            async with asyncio.timeout(self._config.redis_timeout_s):
                result = await call(self._redis)
        except asyncio.CancelledError:
            # Our caller went away; free a half-open trial so the breaker cannot stick open.
            self._breaker.abandon_trial()
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_errors.inc(op=op)
            was_closed = self._breaker.state == "closed"
            self._breaker.record_failure()
            if was_closed and self._breaker.state != "closed":
                log.warning(
                    "Redis unavailable (%s): breaker open, using the local cache",
                    type(exc).__name__,
                )
                self._redis_up.set(0)
            return False, None
        if self._redis_up.value() == 0:
            log.info("Redis available again: breaker closed")
        self._breaker.record_success()
        self._redis_up.set(1)
        return True, result


def _decode(raw: bytes | str) -> UserRecord | None:
    data = json.loads(raw)
    return UserRecord.from_cache(data) if data else None
