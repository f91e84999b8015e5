"""The user cache, invalidated by PostgreSQL itself (``cache.invalidate_from_database``).

A trigger on ``users`` (migration 004) NOTIFies the channel ``relay_user_cache`` with the
token hash of every row whose cached columns changed, was inserted or deleted, whoever
made the change (the relay, ``relay users ...`` or an operator with psql). Each relay
process keeps one dedicated connection (not from the pool: a pooled connection would
lose its LISTEN when returned) listening on it; each token hash is dropped at once from
this process's local caches (in the notification callback: dict operations only) and,
in batches by a separate task, from Redis. Every process evicts from Redis: the calls are
idempotent and cheap, and no process has to be elected.

A notification sent while nobody listened is lost, so:

* after a **gap** (the connection was lost and is back) this process's local caches and
  every user entry in Redis are dropped (SCAN by the key prefix + UNLINK in batches),
  logged at WARNING with the count;
* on the **first connect** at start-up the local caches are empty; Redis is flushed only
  if no other process has announced (in Redis, ``<prefix>cache:listeners``, refreshed
  every check) that it is listening: if one is, every change made before this process
  started was heard by it and Redis is current. If none is, changes may have been made
  while no relay listened (the whole fleet was stopped), so Redis is flushed once.
  A process that stops cleanly withdraws its announcement; one that crashed leaves it for
  at most ``presence_ttl_s``: the one case a change can be missed is a change made in that
  window, after the last listener crashed, before another relay started (docs/operations.md).

While this process does not listen, the cache keeps known users only for
``cache.hit_ttl_without_listener_s``; a record read from the database while its row changed
is not kept (relay.admission.change_log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg

from relay.admission.cache import UserCache
from relay.observability.metrics import MetricsRegistry
from relay.tasks import TaskGroup, idle, raise_if_cancelling

log = logging.getLogger("relay.cache")

CHANNEL = "relay_user_cache"
# How the listening connection shows in pg_stat_activity.
APPLICATION_NAME = "relay-cache-invalidation"
# The payload for "every user" (TRUNCATE users; or NOTIFY by hand to force a flush).
EVERYONE = "*"
# Redis keys per UNLINK, for single tokens and for the flush's SCAN pages.
BATCH = 500
# Tokens waiting for their Redis eviction beyond this: drop them and flush instead.
MAX_PENDING = 100_000
RECONNECT_INITIAL_S = 0.2
RECONNECT_MAX_S = 10.0
MIN_PRESENCE_TTL_S = 10.0

_TOKEN_HASH = re.compile(r"[0-9a-f]{64}")
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

ListenerState = Literal["connecting", "up", "down"]
FlushReason = Literal["gap", "no_listener", "overflow", "everyone"]


class ConnectionLost(Exception):
    """The listening connection was closed underneath us."""


_LISTEN_ERRORS: tuple[type[Exception], ...] = (*_CONNECTION_ERRORS, ConnectionLost)


def parse_payload(payload: str) -> list[str] | None:
    """The token hashes a notification names; None for "every user"; [] if malformed.

    The trigger sends one hash per notification; several separated by spaces or commas
    (a NOTIFY typed by hand) are accepted too.
    """
    text = payload.strip()
    if text == EVERYONE:
        return None
    parts = [p for p in re.split(r"[\s,]+", text.lower()) if p]
    if not parts or not all(_TOKEN_HASH.fullmatch(p) for p in parts):
        return []
    return parts


def first_connect_flush(present: list[str], me: str) -> bool:
    """Flush Redis on the first connect unless another process is listening already."""
    return not [member for member in present if member != me]


class CacheInvalidationListener:
    def __init__(
        self,
        dsn: str,
        cache: UserCache,
        metrics: MetricsRegistry,
        *,
        member: str,
        check_interval_s: float,
        connect_timeout_s: float,
        schema_ready: Callable[[], Awaitable[None]],
    ) -> None:
        self._dsn = dsn
        self._cache = cache
        self._member = member
        self._check_interval_s = check_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._schema_ready = schema_ready
        self.presence_ttl_s = max(MIN_PRESENCE_TTL_S, 3 * check_interval_s)
        self._state: ListenerState = "connecting"
        self._pending: set[str] = set()
        # Of those, how many are being evicted right now (taken out of _pending first: a
        # token notified again meanwhile must be evicted again, after this call).
        self._evicting = 0
        self._flush_reason: FlushReason | None = None
        self._first_check = False
        self._announced = False
        self._wake = asyncio.Event()
        self._tasks = TaskGroup("cache-invalidation", log=log, metrics=metrics)
        self._up = metrics.gauge(
            "relay_cache_invalidation_listener_up",
            "1 while this process listens to the database's user changes",
        )
        self._up.set(0)
        self._flushes = metrics.counter(
            "relay_cache_invalidation_flushes_total",
            "Whole user-cache flushes: after a gap in listening (gap), at a start with no "
            "other listener (no_listener), too many evictions pending (overflow), or asked "
            "for by the database (everyone)",
            ["reason"],
        )
        self._malformed = metrics.counter(
            "relay_cache_invalidation_malformed_total", "Notifications that named no token hash"
        )

    @property
    def state(self) -> ListenerState:
        return self._state

    @property
    def pending(self) -> int:
        """Tokens dropped locally whose Redis eviction has not been done yet (including
        the ones whose eviction is on its way)."""
        return len(self._pending) + self._evicting

    @property
    def flush_pending(self) -> bool:
        return self._flush_reason is not None or self._first_check

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._tasks.spawn(self._run(), name="cache-invalidation-listen")
        self._tasks.spawn(self._drain(), name="cache-invalidation-evict")

    async def close(self) -> None:
        await self._tasks.close()
        self._set_down()
        if self._announced:
            # Bounded by cache.redis_timeout_s; a crash instead leaves it to expire.
            await self._cache.withdraw_listener(self._member)

    # ------------------------------------------------------------------ notifications
    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        hashes = parse_payload(payload)
        if hashes is None:
            self._cache.forget_all_locally()
            self._request_flush("everyone")
            return
        if not hashes:
            self._malformed.inc()
            log.warning("ignoring a notification on %s that names no token hash", CHANNEL)
            return
        self._cache.forget_locally(hashes)
        if not self._cache.shared:
            return
        self._pending.update(hashes)
        if len(self._pending) > MAX_PENDING:
            self._request_flush("overflow")
        self._wake.set()

    def _request_flush(self, reason: FlushReason) -> None:
        if self._flush_reason is None:
            self._flush_reason = reason
        self._pending.clear()
        self._wake.set()

    # ------------------------------------------------------------------ connection
    async def _run(self) -> None:
        # LISTEN is useful only once the trigger exists (all migrations apply together).
        await self._schema_ready()
        delay = RECONNECT_INITIAL_S
        first = True
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout_s,
                    server_settings={"application_name": APPLICATION_NAME},
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._connected(first=first)
                first = False
                delay = RECONNECT_INITIAL_S
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except _LISTEN_ERRORS as exc:
                if self._state == "up":
                    log.warning(
                        "cache invalidation: the listening connection was lost (%s); reconnecting",
                        type(exc).__name__,
                    )
                self._set_down()
            except Exception:  # unexpected: log it, keep listening
                log.exception("cache invalidation: listener failed; reconnecting")
                self._set_down()
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2):
                            await conn.close()
            # Jittered so that the relays of a fleet do not reconnect in step.
            await idle(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _connected(self, *, first: bool) -> None:
        self._state = "up"
        self._up.set(1)
        # Reads in flight began before LISTEN: their records must not be kept for long.
        dropped = self._cache.forget_all_locally()
        self._cache.set_listening(True)
        if first:
            log.info("cache invalidation: listening on %s", CHANNEL)
            if self._cache.shared:
                self._first_check = True
                self._wake.set()
            return
        log.warning(
            "cache invalidation: listening again after a gap; dropped %d local entries, "
            "flushing the shared cache",
            dropped,
        )
        self._request_flush("gap")

    def _set_down(self) -> None:
        self._state = "down"
        self._up.set(0)
        self._cache.set_listening(False)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while True:
            raise_if_cancelling()  # the last round's probe may have swallowed a cancel
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval_s):
                    await lost.wait()
            if lost.is_set() or conn.is_closed():
                raise ConnectionLost()
            # A half-dead connection delivers nothing and says nothing: probe it.
            await conn.fetchval("SELECT 1", timeout=self._check_interval_s + 1)
            if self._cache.shared:
                self._announced = (
                    await self._cache.announce_listener(self._member, self.presence_ttl_s)
                    or self._announced
                )

    # ------------------------------------------------------------------ Redis work
    async def _drain(self) -> None:
        while True:
            # A Redis call of the last round may have swallowed a cancel (redis-py's
            # wait_for on Python 3.11): end here, not wait for more work.
            raise_if_cancelling()
            await self._wake.wait()
            self._wake.clear()
            try:
                done = await self._work()
            except Exception:  # must never die: retried below
                log.exception("cache invalidation: evicting from Redis failed")
                done = False
            if not done:
                # Redis did not answer: the breaker decides when it is tried again.
                await idle(self._check_interval_s)
                self._wake.set()

    async def _work(self) -> bool:
        """Do what is due; False if Redis did not answer (the rest stays due)."""
        if self._first_check and self._flush_reason is None:
            present = await self._cache.listeners_present()
            if present is None:
                return False
            self._first_check = False
            if first_connect_flush(present, self._member):
                self._request_flush("no_listener")
            else:
                log.info(
                    "cache invalidation: %d other relay(s) listening; the shared cache is kept",
                    len(present) - (self._member in present),
                )
            # Announced now, not at the first check, so a relay starting next sees this one.
            self._announced = (
                await self._cache.announce_listener(self._member, self.presence_ttl_s)
                or self._announced
            )
        if self._flush_reason is not None:
            reason = self._flush_reason
            self._first_check = False
            # Every token pending is covered by the flush; newer ones arrive after it began.
            self._pending.clear()
            dropped = await self._cache.flush_shared(BATCH)
            if dropped is None:
                return False
            self._flush_reason = None
            self._flushes.inc(reason=reason)
            # A start with nobody else listening is routine; a gap or an overflow is not.
            log.log(
                logging.INFO if reason in ("no_listener", "everyone") else logging.WARNING,
                "cache invalidation: flushed %d user entries from the shared cache (%s)",
                dropped,
                reason,
            )
        while self._pending:
            batch = [self._pending.pop() for _ in range(min(BATCH, len(self._pending)))]
            self._evicting = len(batch)
            try:
                evicted = await self._cache.evict_shared(batch)
            finally:
                self._evicting = 0
            if not evicted:
                self._pending.update(batch)
                return False
        return True
