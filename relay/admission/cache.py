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

Changes made in PostgreSQL reach the cache through relay.admission.invalidation, which
calls the "database invalidation" methods below. While this process hears them
(``set_listening(True)``) a known user is kept for ``hit_ttl_s``, otherwise for the short
``hit_ttl_without_listener_s``; a record read while its row changed is not kept
(relay.admission.change_log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.admission.breaker import CircuitBreaker
from relay.admission.change_log import ChangeLog
from relay.admission.local_cache import LocalTTLCache
from relay.admission.users import UserRecord
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
        self._changes = ChangeLog()
        # True while this process's listener hears every change made in PostgreSQL.
        self._listening = False
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
        # Whether Redis is configured at all: an alert on relay_cache_redis_up == 0 must not
        # fire for ever on a deployment that runs without Redis on purpose.
        metrics.gauge(
            "relay_cache_redis_configured", "1 when cache.redis_url is set, 0 when Redis is off"
        ).set(1 if self._redis else 0)
        self._latency = metrics.histogram(
            "relay_cache_lookup_duration_seconds",
            "User cache lookup latency (Redis, or the local fallback)",
            buckets=FAST_BUCKETS,
        )
        self._invalidations = metrics.counter(
            "relay_cache_invalidations_total",
            "Token hashes evicted from the user cache, by where the change was seen",
            ["source"],
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

    def cached_locally(self, token_hash: str) -> bool:
        """Whether this process's fallback holds the token, known or unknown (diagnostics)."""
        return self._lookup_local(token_hash)[0]

    def _lookup_local(self, token_hash: str) -> tuple[bool, UserRecord | None]:
        found, user = self._local.lookup(token_hash)
        if found:
            return True, user
        return self._local_unknown.lookup(token_hash)

    def _ttl(self, user: UserRecord | None) -> int:
        if user is None:
            return self._config.miss_ttl_s
        if self._listening:
            return self._config.hit_ttl_s
        # Nothing evicts this entry when the row changes: the TTL is the staleness bound.
        return min(self._config.hit_ttl_s, self._config.hit_ttl_without_listener_s)

    def _remember_locally(self, token_hash: str, user: UserRecord | None) -> None:
        ttl = self._ttl(user)
        local_ttl = min(ttl, self._config.local_ttl_s)
        if user is None:
            self._local.delete(token_hash)
            self._local_unknown.set(token_hash, None, local_ttl)
        else:
            self._local_unknown.delete(token_hash)
            self._local.set(token_hash, user, local_ttl)

    def mark(self) -> int:
        """Taken before reading a user from the database, passed to ``put`` as ``read_mark``."""
        return self._changes.mark()

    async def put(
        self, token_hash: str, user: UserRecord | None, *, read_mark: int | None = None
    ) -> None:
        """Cache what the database said. With ``read_mark`` (``mark()`` before the read),
        nothing is kept if the row changed since: the change's eviction may have gone by."""
        if read_mark is not None and self._changes.changed_since(token_hash, read_mark):
            return
        ttl = self._ttl(user)
        self._remember_locally(token_hash, user)
        payload = json.dumps(user.to_cache() if user else None)
        await self._redis_call("set", lambda r: r.set(self._key(token_hash), payload, ex=ttl))
        if read_mark is not None and self._changes.changed_since(token_hash, read_mark):
            # Changed while the SET was in flight: the eviction may have reached Redis
            # before it, so undo it.
            await self.invalidate(token_hash, source="race")

    async def invalidate(self, token_hash: str, *, source: str = "relay") -> None:
        self._invalidations.inc(source=source)
        self._changes.changed(token_hash)
        self._local.delete(token_hash)
        self._local_unknown.delete(token_hash)
        await self._redis_call("delete", lambda r: r.delete(self._key(token_hash)))

    # ------------------------------------------------------- database invalidation
    def set_listening(self, listening: bool) -> None:
        """Whether every change made in PostgreSQL reaches ``forget_locally`` from now on."""
        self._listening = listening

    def forget_locally(self, token_hashes: Iterable[str]) -> None:
        """Drop these tokens from this process's caches (known and unknown), at once."""
        for token_hash in token_hashes:
            self._invalidations.inc(source="database")
            self._changes.changed(token_hash)
            self._local.delete(token_hash)
            self._local_unknown.delete(token_hash)

    def forget_all_locally(self) -> int:
        """Drop this process's whole cache (changes may have been missed); return how many."""
        self._changes.changed_all()
        return self._local.clear() + self._local_unknown.clear()

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def evict_shared(self, token_hashes: Sequence[str]) -> bool:
        """UNLINK these tokens' Redis entries in one call; False if Redis did not answer."""
        if self._redis is None or not token_hashes:
            return True
        keys = [self._key(h) for h in token_hashes]
        ok, _ = await self._redis_call("unlink", lambda r: r.unlink(*keys))
        return ok

    async def flush_shared(self, batch: int = 500) -> int | None:
        """UNLINK every user entry in Redis (SCAN by the key prefix, ``batch`` keys a call).

        Returns how many were dropped, or None if Redis stopped answering part way (the
        caller retries). SCAN returns every key present for the whole scan, so entries
        written meanwhile by other processes are either dropped or were written after the
        flush began (and are then as fresh as their read, see ``put``'s read mark).
        """
        if self._redis is None:
            return 0
        pattern = _glob_escape(self._config.key_prefix) + "user:*"
        cursor = 0
        dropped = 0
        while True:

            async def scan(r: aioredis.Redis, at: int = cursor) -> Any:
                return await r.scan(cursor=at, match=pattern, count=batch)

            ok, page = await self._redis_call("scan", scan)
            if not ok:
                return None
            cursor, keys = int(page[0]), list(page[1])
            if keys:

                async def unlink(r: aioredis.Redis, names: list[Any] = keys) -> Any:
                    return await r.unlink(*names)

                ok, count = await self._redis_call("unlink", unlink)
                if not ok:
                    return None
                dropped += int(count)
            if cursor == 0:
                return dropped

    async def listeners_present(self) -> list[str] | None:
        """The processes whose announcement (``announce_listener``) that they listen has
        not expired; None if Redis did not answer or is not configured."""
        if self._redis is None:
            return None
        key = self._listeners_key()
        now = time.time()

        async def call(r: aioredis.Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zrange(key, 0, -1)
                result: list[Any] = await pipe.execute()
                return result

        ok, result = await self._redis_call("listeners", call)
        if not ok:
            return None
        return [m.decode() if isinstance(m, bytes) else str(m) for m in result[1]]

    async def announce_listener(self, member: str, ttl_s: float) -> bool:
        key = self._listeners_key()
        expires = time.time() + ttl_s
        ok, _ = await self._redis_call("listeners", lambda r: r.zadd(key, {member: expires}))
        return ok

    async def withdraw_listener(self, member: str) -> None:
        key = self._listeners_key()
        await self._redis_call("listeners", lambda r: r.zrem(key, member))

    def _listeners_key(self) -> str:
        return f"{self._config.key_prefix}cache:listeners"

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


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
