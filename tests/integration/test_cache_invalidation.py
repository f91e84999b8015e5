"""The user cache invalidated by PostgreSQL itself: real PostgreSQL, real Redis, whole relays.

Changes are made straight in the database with asyncpg, as an operator with psql would;
the relay must see them long before the cached entry's TTL (6 h).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from relay.admission.cache import UserCache
from relay.admission.invalidation import (
    APPLICATION_NAME,
    CHANNEL,
    EVERYONE,
    CacheInvalidationListener,
)
from relay.admission.tokens import hash_token, new_token
from relay.config import CacheConfig
from relay.db.migrate import migrate
from relay.observability.metrics import MetricsRegistry
from tests.integration.cluster_helpers import listener_cut_off, poll
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

WITHIN_S = 10.0


@pytest.fixture
async def redis_client(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def user_key(token: str) -> str:
    return f"relay:user:{hash_token(token)}"


async def listening(relay: RelayHarness) -> None:
    """Wait until the relay listens and its start-up check of the shared cache is done."""

    async def ready() -> bool:
        listener = relay.services.cache_invalidation
        assert listener is not None
        return listener.state == "up" and not listener.flush_pending

    await poll(ready, WITHIN_S, "the invalidation listener to be up")


async def listening_relay(make_relay: MakeRelay, redis_url: str) -> RelayHarness:
    """A relay on ``redis_url`` whose users may hold many sessions, once it listens."""
    relay = await make_relay(
        redis_url=redis_url, overrides={"limits": {"per_user_concurrent_sessions": 20}}
    )
    await listening(relay)
    return relay


async def new_user(*relays: RelayHarness, seconds: int = 1800) -> str:
    """A user inserted into PostgreSQL, once each of ``relays`` (listening) has handled the
    insert's notification. It evicts the new token everywhere (it may be cached as
    unknown); arriving after a first admission had cached the user, it would evict that
    entry, which is harmless for the relay but not for a test that checks the cache."""
    before = [r.counter("relay_cache_invalidations_total", source="database") for r in relays]
    token = await relays[0].add_user(seconds=seconds)

    async def handled() -> bool:
        for relay, seen in zip(relays, before, strict=True):
            listener = relay.services.cache_invalidation
            assert listener is not None
            counted = relay.counter("relay_cache_invalidations_total", source="database")
            if counted <= seen or listener.pending:
                return False
        return True

    await poll(handled, WITHIN_S, "the new user's notification to be handled")
    return token


async def evicted(relay: RelayHarness, redis_client: aioredis.Redis, token: str) -> None:
    async def gone() -> bool:
        return not relay.services.cache.cached_locally(hash_token(token)) and not (
            await redis_client.exists(user_key(token))
        )

    await poll(gone, WITHIN_S, "the user's cache entries (Redis and local) to be dropped")


async def test_an_operators_update_is_seen_long_before_the_ttl(
    make_relay: MakeRelay, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    relay = await listening_relay(make_relay, redis_server.url)
    token = await new_user(relay, seconds=600)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    # Cached in Redis for hours (nothing but the database's notifications bounds it) and in
    # this process's fallback.
    ttl = await redis_client.ttl(user_key(token))
    assert ttl > relay.services.settings.cache.hit_ttl_without_listener_s, ttl
    assert relay.services.cache.cached_locally(hash_token(token))
    assert (await cache_stats(relay))["invalidation"] == "up"
    status, body, _ = await relay.create_session(token)
    assert status == 201 and body["max_duration_seconds"] == 600
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 1

    # An operator takes the credit away by hand.
    await relay.sql(
        "UPDATE users SET remaining_seconds = 0 WHERE token_hash = $1", hash_token(token)
    )
    await evicted(relay, redis_client, token)
    status, body, _ = await relay.create_session(token)
    assert status == 403 and body["error"]["code"] == "no_credit", body

    # ... gives some back; the next request is admitted with exactly that.
    await relay.sql(
        "UPDATE users SET remaining_seconds = 120 WHERE token_hash = $1", hash_token(token)
    )
    await evicted(relay, redis_client, token)
    status, body, _ = await relay.create_session(token)
    assert status == 201 and body["max_duration_seconds"] == 120, body

    # ... and deactivates the user.
    await relay.sql("UPDATE users SET active = FALSE WHERE token_hash = $1", hash_token(token))
    await evicted(relay, redis_client, token)
    status, body, _ = await relay.create_session(token)
    assert status == 403 and body["error"]["code"] == "user_inactive", body
    assert relay.counter("relay_cache_invalidations_total", source="database") >= 3
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 4


async def cache_stats(relay: RelayHarness) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with relay.client.get("/api/stats", headers=headers) as resp:
        assert resp.status == 200
        body: dict[str, Any] = (await resp.json())["cache"]
        return body


async def test_switched_off_nothing_listens_and_users_are_cached_briefly(
    make_relay: MakeRelay, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    relay = await make_relay(
        redis_url=redis_server.url, overrides={"cache": {"invalidate_from_database": False}}
    )
    assert relay.services.cache_invalidation is None
    token = await relay.add_user()
    assert (await relay.create_session(token))[0] == 201
    ttl = await redis_client.ttl(user_key(token))
    assert 0 < ttl <= relay.services.settings.cache.hit_ttl_without_listener_s, ttl
    assert (await cache_stats(relay))["invalidation"] == "disabled"
    rows = await relay.sql(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert rows[0][0] == 0


async def test_a_deleted_user_and_a_rotated_token_are_refused_at_once(
    make_relay: MakeRelay, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    relay = await listening_relay(make_relay, redis_server.url)
    rotated = await new_user(relay)
    assert (await relay.create_session(rotated))[0] == 201
    # Refused for its credit, so it has no session rows to delete first, but cached.
    deleted = await new_user(relay, seconds=0)
    assert (await relay.create_session(deleted))[0] == 403
    for token in (rotated, deleted):
        assert await redis_client.exists(user_key(token))
    new = new_token()
    await relay.sql(
        "UPDATE users SET token_hash = $2 WHERE token_hash = $1",
        hash_token(rotated),
        hash_token(new),
    )
    await relay.sql("DELETE FROM users WHERE token_hash = $1", hash_token(deleted))
    for token in (rotated, deleted):
        await evicted(relay, redis_client, token)
        status, body, _ = await relay.create_session(token)
        assert status == 401 and body["error"]["code"] == "invalid_token", body
    assert (await relay.create_session(new))[0] == 201


async def test_a_token_cached_as_unknown_is_admitted_right_after_its_insert(
    make_relay: MakeRelay, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    # An hour's negative cache: only the notification can let this user in within the test.
    relay = await make_relay(redis_url=redis_server.url, overrides={"cache": {"miss_ttl_s": 3600}})
    await listening(relay)
    token = new_token()
    status, body, _ = await relay.create_session(token)
    assert status == 401 and body["error"]["code"] == "invalid_token"
    assert await redis_client.exists(user_key(token))
    assert relay.services.cache.cached_locally(hash_token(token))

    await relay.sql(
        "INSERT INTO users (email, token_hash, remaining_seconds) VALUES ($1, $2, 300)",
        "imported@example.test",
        hash_token(token),
    )
    await evicted(relay, redis_client, token)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body


async def test_a_change_evicts_the_local_fallback_of_every_relay(
    make_relay: MakeRelay, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    first = await make_relay(redis_url=redis_server.url, instance_id="first")
    second = await make_relay(redis_url=redis_server.url, instance_id="second")
    for relay in (first, second):
        await listening(relay)
    token = await new_user(first, second)
    assert (await first.create_session(token))[0] == 201
    assert (await second.create_session(token))[0] == 201  # a Redis hit, kept locally too
    assert second.counter("relay_cache_lookups_total", result="hit", source="redis") == 1
    for relay in (first, second):
        assert relay.services.cache.cached_locally(hash_token(token))

    await first.sql("UPDATE users SET active = FALSE WHERE token_hash = $1", hash_token(token))
    for relay in (first, second):
        await evicted(relay, redis_client, token)
        assert relay.counter("relay_cache_invalidations_total", source="database") >= 1
    # Redis dies: the fallback has nothing stale to serve, so PostgreSQL answers.
    await redis_server.astop()
    status, body, _ = await second.create_session(token)
    assert status == 403 and body["error"]["code"] == "user_inactive", body


async def test_a_relay_starting_beside_a_listening_one_keeps_the_shared_cache(
    make_relay: MakeRelay, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    foreign = "relay:user:" + "f" * 64
    await redis_client.set(foreign, "null", ex=3600)
    # Nobody listened before: the entry may predate changes nobody heard, so it goes.
    first = await make_relay(redis_url=redis_server.url, instance_id="first")
    await listening(first)
    assert first.counter("relay_cache_invalidation_flushes_total", reason="no_listener") == 1
    assert not await redis_client.exists(foreign)

    await redis_client.set(foreign, "null", ex=3600)
    second = await make_relay(redis_url=redis_server.url, instance_id="second")
    await listening(second)
    assert second.counter("relay_cache_invalidation_flushes_total") == 0
    assert await redis_client.exists(foreign)


async def standalone_listener(
    database_url: str, redis_url: str, member: str
) -> tuple[UserCache, CacheInvalidationListener]:
    """A listener of its own on a migrated database, outside any relay (started)."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, timeout_s=60)
    finally:
        await conn.close()
    cache = UserCache(CacheConfig(redis_url=redis_url), MetricsRegistry())

    async def schema_ready() -> None:
        return None

    listener = CacheInvalidationListener(
        database_url,
        cache,
        MetricsRegistry(),
        member=member,
        check_interval_s=0.2,
        connect_timeout_s=2.0,
        schema_ready=schema_ready,
    )
    listener.start()
    return cache, listener


async def test_a_listener_that_stops_cleanly_withdraws_its_announcement(
    redis_server: Any, database_url: str
) -> None:
    cache, listener = await standalone_listener(database_url, redis_server.url, "solo")
    try:

        async def announced() -> bool:
            return "solo" in (await cache.listeners_present() or [])

        await poll(announced, WITHIN_S, "the listener's announcement")
    finally:
        await listener.close()
    assert await cache.listeners_present() == []
    await cache.close()


async def test_a_listener_whose_redis_call_lost_its_cancel_still_stops(
    redis_server: Any, database_url: str
) -> None:
    """redis-py can swallow a cancel on Python 3.11 (its ``wait_for``): the call returns
    as if Redis had not answered, and the task, still marked as cancelling, went round
    again: it slept, retried, and the relay's shut-down waited for it forever."""
    cache, listener = await standalone_listener(database_url, redis_server.url, "swallowed")
    flushing = asyncio.Event()
    calls = 0

    async def flush_that_loses_its_cancel(batch: int = 500) -> int | None:
        # Stands in for the library's call: the first cancel aimed at it is lost, and
        # it reports that Redis did not answer.
        nonlocal calls
        calls += 1
        flushing.set()
        if calls == 1:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)
        else:
            await asyncio.sleep(3600)
        return None

    try:

        async def ready() -> bool:
            return listener.state == "up" and not listener.flush_pending

        await poll(ready, WITHIN_S, "the listener to be up")
        cache.flush_shared = flush_that_loses_its_cancel  # type: ignore[method-assign]
        notify = await asyncpg.connect(database_url)
        try:
            await notify.execute("SELECT pg_notify($1, $2)", CHANNEL, EVERYONE)
        finally:
            await notify.close()
        async with asyncio.timeout(WITHIN_S):
            await flushing.wait()
    finally:
        async with asyncio.timeout(WITHIN_S):
            await listener.close()
        await cache.close()
    assert calls == 1  # it stopped instead of retrying the flush


async def test_postgres_restarted_the_listener_reconnects_and_flushes_after_the_gap(
    make_relay: MakeRelay,
    private_postgres: Any,
    redis_server: Any,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = await make_relay(dsn=private_postgres.dsn(), redis_url=redis_server.url)
    await listening(relay)
    token = await new_user(relay)
    assert (await relay.create_session(token))[0] == 201
    other = "relay:user:" + "e" * 64  # another relay's entry, as stale as any after a gap
    await redis_client.set(other, "null", ex=3600)
    assert relay.counter("relay_cache_invalidation_listener_up") == 1

    await private_postgres.astop()

    async def down() -> bool:
        return relay.counter("relay_cache_invalidation_listener_up") == 0

    await poll(down, WITHIN_S, "the listener to notice the database went away")
    async with relay.client.get("/readyz") as resp:
        assert (await resp.json())["checks"]["cache"]["invalidation"] == "down"

    with caplog.at_level(logging.WARNING, logger="relay.cache"):
        await private_postgres.astart()
        await listening(relay)
    assert relay.counter("relay_cache_invalidation_flushes_total", reason="gap") == 1
    assert not await redis_client.exists(other)
    assert not await redis_client.exists(user_key(token))
    assert not relay.services.cache.cached_locally(hash_token(token))
    assert any("flushed 2 user entries" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    # Listening again: a change now is seen at once.
    assert (await relay.create_session(token))[0] == 201
    await relay.sql("UPDATE users SET active = FALSE WHERE token_hash = $1", hash_token(token))
    await evicted(relay, redis_client, token)
    status, body, _ = await relay.create_session(token)
    assert status == 403 and body["error"]["code"] == "user_inactive", body


async def test_a_change_made_while_the_listener_was_cut_off_is_not_served_stale(
    make_relay: MakeRelay, private_postgres: Any, redis_server: Any, redis_client: aioredis.Redis
) -> None:
    dsn = await private_postgres.acreate_database("relaydb")
    relay = await make_relay(dsn=dsn, redis_url=redis_server.url)
    await listening(relay)
    token = await new_user(relay, seconds=600)
    assert (await relay.create_session(token))[0] == 201
    assert await redis_client.exists(user_key(token))

    # The operator's session is open before the database stops accepting connections; then
    # the listener's connection is cut, so it cannot come back until we allow it.
    async with listener_cut_off(private_postgres.dsn(), dsn, APPLICATION_NAME) as operator:

        async def down() -> bool:
            return relay.counter("relay_cache_invalidation_listener_up") == 0

        await poll(down, WITHIN_S, "the listener to notice its connection was cut")
        # Nobody is listening: this change's notification is lost.
        await operator.execute(
            "UPDATE users SET active = FALSE WHERE token_hash = $1", hash_token(token)
        )
        assert await redis_client.exists(user_key(token))  # still cached, and stale
    await listening(relay)
    assert relay.counter("relay_cache_invalidation_flushes_total", reason="gap") == 1
    status, body, _ = await relay.create_session(token)
    assert status == 403 and body["error"]["code"] == "user_inactive", body


class RolledBack(Exception):
    pass


async def test_the_trigger_notifies_only_changes_to_what_is_cached(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    listener = await asyncpg.connect(database_url)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await migrate(conn, timeout_s=60)
        await listener.add_listener(CHANNEL, lambda *args: received.put_nowait(args[-1]))
        old, new = "1" * 64, "2" * 64

        async def next_payload() -> str:
            return await asyncio.wait_for(received.get(), WITHIN_S)

        await conn.execute(
            "INSERT INTO users (email, token_hash) VALUES ('t@example.test', $1)", old
        )
        assert await next_payload() == old
        # Nothing cached changes: no notification. (Notifications arrive in commit order,
        # so the next one received proves none was sent for these.)
        await conn.execute("UPDATE users SET revoked_at = now() WHERE token_hash = $1", old)
        await conn.execute("UPDATE users SET active = active WHERE token_hash = $1", old)
        await conn.execute(
            "UPDATE users SET remaining_seconds = remaining_seconds - 1 WHERE token_hash = $1",
            old,
        )
        assert await next_payload() == old
        await conn.execute("UPDATE users SET email = 'u@example.test' WHERE token_hash = $1", old)
        assert await next_payload() == old
        # A rotated token: the old hash and the new one.
        await conn.execute("UPDATE users SET token_hash = $2 WHERE token_hash = $1", old, new)
        assert {await next_payload(), await next_payload()} == {old, new}
        # Rolled back: nothing is sent.
        with pytest.raises(RolledBack):
            async with conn.transaction():
                await conn.execute("UPDATE users SET active = FALSE WHERE token_hash = $1", new)
                raise RolledBack
        # Several changes of one row in one transaction: sent once, at commit.
        async with conn.transaction():
            await conn.execute("UPDATE users SET active = FALSE WHERE token_hash = $1", new)
            await conn.execute("UPDATE users SET active = TRUE WHERE token_hash = $1", new)
        assert await next_payload() == new
        await conn.execute("DELETE FROM users WHERE token_hash = $1", new)
        assert await next_payload() == new
        # (Had the rolled-back or the repeated change been sent, this would receive it.)
        await conn.execute("TRUNCATE users CASCADE")
        assert await next_payload() == "*"
        assert received.empty()
    finally:
        await listener.close()
        await conn.close()
