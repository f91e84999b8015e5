"""Limits shared by every member, enforced atomically in Redis by Lua scripts.

- per-user concurrent sessions and the cluster-wide session cap: one sorted set per
  user and one for the cluster, members are session ids scored by a lease deadline.
  A member's heartbeat renews the leases of the sessions it holds, so the sessions of a
  member that died stop counting within one lease (3 heartbeats, at least 15 s). The
  renewal only refreshes leases that exist (``ZADD XX``, one script): a session whose
  acquire has not run yet, or whose lease was released while the renewal was on its
  way, is never added by it. (The acquire script lets a session already in the set
  through without counting it, so a lease added by anything but the acquire would let
  that session past both caps.)
- per-user request rate and failed authentications per client address: sliding logs
  (sorted sets of timestamps) over one minute. Failed authentications are reserved
  before the token is looked up and settled after (relay.web.caller): a second sorted
  set per address holds the tokens under lookup, and one script checks both and
  reserves, so parallel guesses on any members never pass a check together.

Each check is one script, so two members can never both take the last slot.

The in-process limits (relay.sessions.registry, relay.admission.rate_limit) always run
as well: with no Redis they are the limits (one instance), and with Redis they can
only be stricter. When Redis fails mid-flight (error, timeout, breaker open) every
shared limit fails OPEN to the in-process one and ``relay_limits_redis_fallback_total``
counts it: an interview service that refuses every candidate because its cache blinked
is worse than, for the outage, each member enforcing the caps on its own (at most
members x the per-user cap). Leases and logs expire by themselves, so nothing has to be
repaired when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.admission.breaker import CircuitBreaker
from relay.admission.rate_limit import PENDING_RETRY_S
from relay.config import Settings
from relay.observability.metrics import MetricsRegistry

log = logging.getLogger("relay.limits")

WINDOW_MS = 60_000
# A lease survives 3 heartbeats without renewal, and never less than the floor: under
# load a heartbeat can be late, and a lease that lapses while its session lives would
# free a slot that is not free.
LEASE_HEARTBEATS = 3
LEASE_FLOOR_S = 15.0

_ACQUIRE_SESSION = """
local now, lease, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local user_cap, cluster_cap, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], member) then
  if cluster_cap > 0 and redis.call('ZCARD', KEYS[2]) >= cluster_cap then return 2 end
  if redis.call('ZCARD', KEYS[1]) >= user_cap then return 1 end
end
redis.call('ZADD', KEYS[1], lease, member)
redis.call('ZADD', KEYS[2], lease, member)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 0
"""

# KEYS: the cluster set, then one user set per session; ARGV: lease deadline, key TTL,
# then the session ids in the order of their user sets. XX: refresh, never add.
_RENEW_SESSIONS = """
local lease, ttl = ARGV[1], tonumber(ARGV[2])
for i = 2, #KEYS do
  local member = ARGV[i + 1]
  redis.call('ZADD', KEYS[i], 'XX', lease, member)
  redis.call('ZADD', KEYS[1], 'XX', lease, member)
  redis.call('PEXPIRE', KEYS[i], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""

# mode "acquire": count this event if under the limit; "peek": only look; "add": count.
# Returns -1 when under the limit, else milliseconds until the oldest event leaves.
_SLIDING_LOG = """
local now, window, limit, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if mode ~= 'add' and redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
end
if mode ~= 'peek' then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window)
end
return -1
"""

# KEYS: the address's failures (a sliding log), the tokens of that address under lookup
# (member: a key per token, scored by when it was reserved). ARGV: now, window, limit,
# token key ('' for none). The failures so far, plus the tokens under lookup unless this
# token is one of them, must stay under the limit; then the token is reserved.
# Returns -1 when reserved (or nothing to reserve), else milliseconds to wait.
_AUTH_RESERVE = """
local now, window, limit, token = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local failed = redis.call('ZCARD', KEYS[1])
if failed >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil(tonumber(oldest[2]) + window - now))
end
if token == '' then return -1 end
if not redis.call('ZSCORE', KEYS[2], token) then
  if failed + redis.call('ZCARD', KEYS[2]) >= limit then return tonumber(ARGV[5]) end
end
redis.call('ZADD', KEYS[2], now, token)
redis.call('PEXPIRE', KEYS[2], window)
return -1
"""

# The lookup of a reserved token is over: the reservation goes; a failure is logged.
# ARGV: now, window, token key, failed ('1' or '0'), a unique member for the failure.
_AUTH_SETTLE = """
redis.call('ZREM', KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), ARGV[5])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""

ACQUIRED, USER_CAP, CLUSTER_CAP = 0, 1, 2


def _now_ms() -> int:
    return int(time.time() * 1000)


# The limits shared through Redis (relay_limits_redis_fallback_total{limit}).
SHARED_LIMITS = ("sessions", "request_rate", "failed_auth")


class SharedLimits:
    """Redis-backed limits; every method answers None when Redis could not decide."""

    def __init__(self, settings: Settings, metrics: MetricsRegistry) -> None:
        self._limits = settings.limits
        self._config = settings.cache
        self._prefix = settings.cache.key_prefix + "limits:"
        lease_s = max(settings.cluster.heartbeat_interval_s * LEASE_HEARTBEATS, LEASE_FLOOR_S)
        self._lease_ms = int(lease_s * 1000)
        self._breaker = CircuitBreaker(
            settings.cache.breaker_failure_threshold, settings.cache.breaker_open_s
        )
        self._redis: aioredis.Redis | None = None
        if settings.cache.redis_url:
            self._redis = aioredis.from_url(
                settings.cache.redis_url,
                socket_timeout=settings.cache.redis_timeout_s,
                socket_connect_timeout=settings.cache.redis_timeout_s,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        self._fallback = metrics.counter(
            "relay_limits_redis_fallback_total",
            "Shared-limit checks decided in-process because Redis failed (fail open)",
            ["limit"],
        )
        if self._redis is not None:
            self._fallback.declare(limit=SHARED_LIMITS)  # for RelayLimitsRedisFallback

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    # ------------------------------------------------------------------ sessions
    def _user_key(self, user_id: int) -> str:
        return f"{self._prefix}user:{user_id}:sessions"

    @property
    def _cluster_key(self) -> str:
        return f"{self._prefix}sessions"

    async def acquire_session(self, session_id: str, user_id: int) -> int | None:
        """ACQUIRED, USER_CAP or CLUSTER_CAP; None when Redis could not decide."""
        now = _now_ms()
        result = await self._call(
            "sessions",
            lambda r: r.eval(
                _ACQUIRE_SESSION,
                2,
                self._user_key(user_id),
                self._cluster_key,
                now,
                now + self._lease_ms,
                session_id,
                self._limits.per_user_concurrent_sessions,
                self._limits.cluster_max_sessions,
                self._lease_ms * 2,
            ),
        )
        return None if result is None else int(result)

    async def release_session(self, session_id: str, user_id: int) -> None:
        async def call(r: aioredis.Redis) -> Any:
            async with r.pipeline(transaction=True) as pipe:
                pipe.zrem(self._user_key(user_id), session_id)
                pipe.zrem(self._cluster_key, session_id)
                return await pipe.execute()

        await self._call("sessions", call)

    async def renew(self, held: Iterable[tuple[str, int]]) -> None:
        """Refresh the leases of the sessions this member holds (its heartbeat).

        Only leases still in Redis are refreshed: ``held`` is a snapshot taken before
        the call, and a session released since then (its ZREM landed first) stays
        released.
        """
        items = list(held)
        if not items or self._redis is None:
            return
        lease = _now_ms() + self._lease_ms
        keys = [self._cluster_key, *(self._user_key(user_id) for _, user_id in items)]
        args: list[str | int] = [lease, self._lease_ms * 2, *(sid for sid, _ in items)]
        await self._call("sessions", lambda r: r.eval(_RENEW_SESSIONS, len(keys), *keys, *args))

    # ------------------------------------------------------------------ sliding logs
    async def _sliding(self, limit_name: str, key: str, limit: int, mode: str) -> float | None:
        """Seconds to wait (> 0) when over the limit, 0.0 when under, None if undecided."""
        member = f"{_now_ms()}-{secrets.token_hex(4)}"
        result = await self._call(
            limit_name,
            lambda r: r.eval(
                _SLIDING_LOG, 1, self._prefix + key, _now_ms(), WINDOW_MS, limit, mode, member
            ),
        )
        if result is None:
            return None
        wait_ms = int(result)
        return 0.0 if wait_ms < 0 else wait_ms / 1000

    async def request_rate(self, user_id: int) -> float | None:
        return await self._sliding(
            "request_rate",
            f"rate:user:{user_id}",
            self._limits.per_user_requests_per_minute,
            "acquire",
        )

    # ------------------------------------------------------------------ failed authentications
    def _auth_keys(self, address: str) -> tuple[str, str]:
        return f"{self._prefix}authfail:{address}", f"{self._prefix}authpending:{address}"

    async def auth_reserve(self, address: str, token_key: str) -> float | None:
        """Before looking ``token_key`` up (``""``: no token, only check): seconds to wait
        (> 0) when this address may not try now, 0.0 when reserved, None if undecided."""
        result = await self._call(
            "failed_auth",
            lambda r: r.eval(
                _AUTH_RESERVE,
                2,
                *self._auth_keys(address),
                _now_ms(),
                WINDOW_MS,
                self._limits.failed_auth_per_minute,
                token_key,
                int(PENDING_RETRY_S * 1000),
            ),
        )
        if result is None:
            return None
        wait_ms = int(result)
        return 0.0 if wait_ms < 0 else wait_ms / 1000

    async def auth_settle(self, address: str, token_key: str, *, failed: bool) -> None:
        """After the lookup: give the reservation back, or log a failure in its place. (A
        reservation never settled, its member gone, lapses with the window.)"""
        await self._call(
            "failed_auth",
            lambda r: r.eval(
                _AUTH_SETTLE,
                2,
                *self._auth_keys(address),
                _now_ms(),
                WINDOW_MS,
                token_key,
                "1" if failed else "0",
                f"{_now_ms()}-{secrets.token_hex(4)}",
            ),
        )

    # ------------------------------------------------------------------ plumbing
    async def _call(self, limit: str, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        if self._redis is None:
            return None
        if not self._breaker.allow():
            self._fallback.inc(limit=limit)
            return None
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can drop a cancellation.
            async with asyncio.timeout(self._config.redis_timeout_s):
                result = await call(self._redis)
        except asyncio.CancelledError:
            self._breaker.abandon_trial()
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._fallback.inc(limit=limit)
            if self._breaker.state == "closed":
                log.warning(
                    "Redis failed for the %s limit (%s): in-process limits only",
                    limit,
                    type(exc).__name__,
                )
            self._breaker.record_failure()
            return None
        self._breaker.record_success()
        return result


def wait_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
