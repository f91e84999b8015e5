"""POST /api/realtime-session end to end: real PostgreSQL, real Redis, the simulator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import relay.app as relay_app
from relay.admission.tokens import hash_token
from relay.db.migrate import MIGRATION_LOCK_ID
from relay.errors import ApiError
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN

REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def assert_error(body: dict[str, Any], headers: dict[str, str], code: str) -> None:
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["request_id"] == headers["X-Request-ID"]


async def test_happy_path_creates_session_and_row(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    # The pool was warmed during start-up, before the first request.
    assert relay.counter("relay_db_pool_warm_connections") == 1
    token = await relay.add_user(seconds=600)
    status, body, headers = await relay.create_session(token)
    assert status == 201, body
    assert set(body) >= {
        "session_id",
        "expires_at",
        "model",
        "ice_servers",
        "request_id",
        "processing_time_ms",
    }
    assert REQUEST_ID.match(body["request_id"]) and body["request_id"] == headers["X-Request-ID"]
    assert body["model"] == "gpt-realtime-2.1"
    assert body["max_duration_seconds"] == 600
    assert isinstance(body["processing_time_ms"], float) and body["processing_time_ms"] > 0
    assert "db;dur=" in headers["Server-Timing"] and "upstream;dur=" in headers["Server-Timing"]
    assert "ek_" not in str(body) and "secret" not in str(body)
    rows = await relay.sql(
        "SELECT state, request_id, model, dialect, relay_instance FROM interview_sessions"
        " WHERE id = $1",
        body["session_id"],
    )
    assert [dict(r) for r in rows] == [
        {
            "state": "pending",
            "request_id": body["request_id"],
            "model": "gpt-realtime-2.1",
            "dialect": "ga",
            "relay_instance": "test-instance",
        }
    ]


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_token"),
        ("Basic dXNlcjpwYXNz", "missing_token"),
        ("Bearer rt_unknownunknownunknownunknown", "invalid_token"),
        ("Bearer not a token", "invalid_token"),
    ],
)
async def test_missing_or_unknown_token_is_401(
    make_relay: MakeRelay, authorization: str | None, code: str
) -> None:
    relay = await make_relay()
    headers = {"Authorization": authorization} if authorization else {}
    status, body, resp_headers = await relay.create_session(None, headers=headers)
    assert status == 401
    assert_error(body, resp_headers, code)


async def test_inactive_and_out_of_credit_users_are_403(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    revoked = await relay.add_user(active=False)
    broke = await relay.add_user(seconds=0)
    status, body, headers = await relay.create_session(revoked)
    assert status == 403
    assert_error(body, headers, "user_inactive")
    status, body, headers = await relay.create_session(broke)
    assert status == 403
    assert_error(body, headers, "no_credit")
    assert relay.counter("relay_sessions_live") == 0


@pytest.mark.parametrize("with_redis", [True, False])
async def test_cached_user_is_admitted_without_postgres(
    make_relay: MakeRelay, redis_server: Any, with_redis: bool
) -> None:
    relay = await make_relay(
        redis_url=redis_server.url if with_redis else "",
        overrides={"limits": {"per_user_concurrent_sessions": 5}},
    )
    token = await relay.add_user()
    for _ in range(3):
        status, body, _ = await relay.create_session(token)
        assert status == 201, body
    # One credential lookup reached PostgreSQL; the next two were cache hits.
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 1
    source = "redis" if with_redis else "local"
    assert relay.counter("relay_cache_lookups_total", result="hit", source=source) == 2
    # Redis's gauges say whether it is in use and whether it is configured at all (the
    # RelayRedisDown alert fires only where it is).
    assert relay.counter("relay_cache_redis_up") == int(with_redis)
    assert relay.counter("relay_cache_redis_configured") == int(with_redis)


async def test_a_session_ended_unused_keeps_the_user_cached_a_debit_drops_it(
    make_relay: MakeRelay, redis_server: Any
) -> None:
    relay = await make_relay(
        redis_url=redis_server.url,
        overrides={"limits": {"per_user_concurrent_sessions": 1}},
    )
    token = await relay.add_user(seconds=600)
    status, first, _ = await relay.create_session(token)
    assert status == 201, first
    # The second supersedes the first (never exchanged): its row is closed, no debit.
    status, second, _ = await relay.create_session(token)
    assert status == 201, second
    deadline = asyncio.get_running_loop().time() + 10
    while [tuple(r) for r in await relay.sql(
        "SELECT state, end_reason, debited_seconds FROM interview_sessions WHERE id = $1",
        first["session_id"],
    )] != [("ended", "superseded", 0)]:  # fmt: skip
        assert asyncio.get_running_loop().time() < deadline, "superseded row never closed"
        await asyncio.sleep(0.02)
    status, third, _ = await relay.create_session(token)
    assert status == 201, third
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 1
    assert relay.counter("relay_cache_lookups_total", result="hit", source="redis") == 2

    # A session that used time debits it: the cached record is stale and dropped, and the
    # next request sees the new credit.
    entry = relay.services.registry.get(third["session_id"])
    assert entry is not None
    remaining = await relay.services.sessions.finish(
        entry, state="ended", reason="hangup", duration_s=2.5
    )
    assert remaining == 597
    status, fourth, _ = await relay.create_session(token)
    assert status == 201, fourth
    assert fourth["max_duration_seconds"] == 597
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 2


async def test_redis_stopped_falls_back_and_breaker_skips_it(
    make_relay: MakeRelay, redis_server: Any
) -> None:
    relay = await make_relay(
        redis_url=redis_server.url,
        overrides={"limits": {"per_user_concurrent_sessions": 20}},
    )
    seen = await relay.add_user()
    assert (await relay.create_session(seen))[0] == 201
    await redis_server.astop()

    # A user seen before: served by the local cache, PostgreSQL untouched.
    status, body, _ = await relay.create_session(seen)
    assert status == 201, body
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 1
    # A new user: PostgreSQL answers.
    fresh = await relay.add_user()
    assert (await relay.create_session(fresh))[0] == 201
    assert relay.counter("relay_db_queries_total", query="user_by_token") == 2

    # Failures open the breaker; after that Redis is not called at all.
    threshold = relay.services.settings.cache.breaker_failure_threshold
    assert relay.counter("relay_cache_redis_errors_total") >= threshold
    assert relay.services.cache.redis_state == "down"
    errors_before = relay.counter("relay_cache_redis_errors_total")
    skipped_before = relay.counter("relay_cache_redis_skipped_total")
    for _ in range(3):
        assert (await relay.create_session(seen))[0] == 201
    assert relay.counter("relay_cache_redis_errors_total") == errors_before
    assert relay.counter("relay_cache_redis_skipped_total") > skipped_before


async def test_a_user_found_in_redis_is_kept_for_the_fallback_too(
    make_relay: MakeRelay, redis_server: Any
) -> None:
    # One relay looks the user up (a miss: PostgreSQL, then Redis); the other finds it in
    # Redis. When Redis dies, the second still serves it without PostgreSQL.
    first = await make_relay(redis_url=redis_server.url, instance_id="first")
    second = await make_relay(redis_url=redis_server.url, instance_id="second")
    token = await first.add_user()
    assert (await first.create_session(token))[0] == 201
    assert (await second.create_session(token))[0] == 201
    assert second.counter("relay_cache_lookups_total", result="hit", source="redis") == 1
    assert second.counter("relay_db_queries_total", query="user_by_token") == 0
    await redis_server.astop()
    status, body, _ = await second.create_session(token)
    assert status == 201, body
    assert second.counter("relay_cache_lookups_total", result="hit", source="local") == 1
    assert second.counter("relay_db_queries_total", query="user_by_token") == 0


async def test_hung_redis_is_bounded_by_its_timeout_then_skipped(
    make_relay: MakeRelay, redis_server: Any
) -> None:
    relay = await make_relay(
        redis_url=redis_server.url,
        overrides={"limits": {"per_user_concurrent_sessions": 10}},
    )
    token = await relay.add_user()
    redis_server.pause()  # accepts connections, never answers
    try:
        # Each Redis call gives up after cache.redis_timeout_s; the breaker opens after
        # breaker_failure_threshold of them (a GET and a SET per cache miss).
        threshold = relay.services.settings.cache.breaker_failure_threshold
        while relay.services.cache.redis_state == "up":
            status, body, _ = await relay.create_session(token)
            assert status == 201, body
        # (The cache-invalidation listener's own Redis calls share the breaker: one of
        # them may fail beside the requests' before it opens.)
        errors = relay.counter("relay_cache_redis_errors_total")
        assert threshold <= errors <= threshold + 1
        # From now on Redis is not even tried: no new errors, only skips.
        for _ in range(3):
            status, body, _ = await relay.create_session(token)
            assert status == 201, body
        assert relay.counter("relay_cache_redis_errors_total") == errors
        assert relay.counter("relay_cache_redis_skipped_total") >= 3
        assert relay.counter("relay_db_queries_total", query="user_by_token") == 1
    finally:
        redis_server.resume()


async def test_concurrent_sessions_cannot_spend_the_same_credit_twice(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"limits": {"per_user_concurrent_sessions": 3}})
    token = await relay.add_user(seconds=100)
    user_id = (await relay.sql("SELECT id FROM users"))[0]["id"]
    ids = []
    for _ in range(2):  # pending sessions promise nothing yet (a page reload is fine)
        status, body, _ = await relay.create_session(token)
        assert status == 201 and body["max_duration_seconds"] == 100
        ids.append(body["session_id"])
    registry = relay.services.registry
    first = registry.claim_for_exchange(ids[0], user_id)
    assert first.max_duration_s == 100
    # The first interview holds all 100 s: the second cannot start, nor can a new one. The
    # credit is there, held by a running interview (another tab or window?): 409, worth
    # retrying once that one has ended, not the final 403 no_credit.
    with pytest.raises(ApiError) as refused:
        registry.claim_for_exchange(ids[1], user_id)
    assert (refused.value.status, refused.value.code) == (409, "credit_in_use")
    assert refused.value.retryable
    # Waited out every Retry-After (the page does, for up to 90 s), the refusals spend none
    # of the per-user request rate: more of them than it allows a minute are all 409s.
    for _ in range(relay.services.settings.limits.per_user_requests_per_minute + 2):
        status, body, headers = await relay.create_session(token)
        assert status == 409 and headers["Retry-After"] == "5", body
        assert_error(body, headers, "credit_in_use")
        assert body["error"]["retryable"] is True
    # Once it has ended, the seconds it did not use are free again.
    registry.release(ids[0])
    status, body, _ = await relay.create_session(token)
    assert status == 201, body


async def test_postgres_stopped_gives_503_after_three_attempts_then_recovers(
    make_relay: MakeRelay, private_postgres: Any
) -> None:
    relay = await make_relay(dsn=private_postgres.dsn())
    token = await relay.add_user()
    await private_postgres.astop()

    status, body, headers = await relay.create_session(token)
    assert status == 503
    assert_error(body, headers, "database_unavailable")
    assert body["error"]["retryable"] is True
    assert int(headers["Retry-After"]) == relay.services.settings.database.retry_after_s
    attempts = relay.counter("relay_db_attempts_total", query="user_by_token")
    assert attempts == 1 + 2
    assert relay.counter("relay_db_retries_total", query="user_by_token") == 2

    async with relay.client.get("/readyz") as resp:
        ready = await resp.json()
        assert resp.status == 503
        assert ready["checks"]["database"]["ok"] is False
        assert "database" in ready["error"]["message"]

    await private_postgres.astart()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    async with relay.client.get("/readyz") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "path",
    ["/api/users", "/api/interviews", "/api/sessions", "/api/keys", "/api/stats?scope=cluster"],
)
async def test_postgres_stopped_gives_every_operator_route_the_same_503(
    make_relay: MakeRelay, private_postgres: Any, path: str
) -> None:
    relay = await make_relay(dsn=private_postgres.dsn())
    await private_postgres.astop()
    async with relay.client.get(
        path, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        body, headers = await resp.json(), dict(resp.headers)
        assert resp.status == 503, body
    assert_error(body, headers, "database_unavailable")
    assert body["error"]["retryable"] is True
    assert int(headers["Retry-After"]) == relay.services.settings.database.retry_after_s


async def test_slow_postgres_past_the_timeout_gives_503(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"database": {"query_timeout_s": 0.3}})
    token = await relay.add_user()
    locker = await asyncpg.connect(relay.database_url)
    try:
        tx = locker.transaction()
        await tx.start()
        # The relay's user lookup now waits on this lock: a database slower than the timeout.
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        status, body, headers = await relay.create_session(token)
        assert status == 503
        assert_error(body, headers, "database_timeout")
        assert "Retry-After" in headers
        assert (
            relay.counter("relay_db_attempts_total", query="user_by_token", outcome="timeout") == 3
        )
        await tx.rollback()
    finally:
        await locker.close()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body


async def test_malformed_and_oversized_bodies(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"server": {"max_body_bytes": 1024}})
    token = await relay.add_user()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for payload in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        status, body, headers = await relay.create_session(None, headers=auth, data=payload)
        assert status == 400
        assert_error(body, headers, "invalid_json")
    status, body, headers = await relay.create_session(
        None, headers=auth, data=b"{" + b" " * 4096 + b"}"
    )
    assert status == 413
    assert_error(body, headers, "body_too_large")
    # The token was checked first (bodies are read only after that); none was admitted.
    assert relay.counter("relay_admission_total", outcome="admitted") == 0
    assert relay.counter("relay_admission_total") == 0


async def test_request_id_is_the_relays_own_with_a_valid_client_id_as_suffix(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    ids = []
    for _ in range(2):
        status, body, headers = await relay.create_session(
            token, headers={"X-Request-ID": "lb-42.a_b"}
        )
        assert status == 201
        assert re.fullmatch(r"req_[0-9a-f]{32}\.lb-42\.a_b", headers["X-Request-ID"])
        assert headers["X-Request-ID"] == body["request_id"]
        ids.append(body["request_id"])
    # The same client id twice: never the same request id, in the response or the rows.
    assert ids[0] != ids[1]
    rows = await relay.sql("SELECT request_id FROM interview_sessions ORDER BY created_at")
    assert [r["request_id"] for r in rows] == ids
    status, body, headers = await relay.create_session(
        None, headers={"X-Request-ID": "bad id with spaces"}
    )
    assert (
        REQUEST_ID.match(headers["X-Request-ID"]) and body["request_id"] == headers["X-Request-ID"]
    )
    async with relay.client.get("/no/such/route") as resp:
        assert resp.status == 404
        err = await resp.json()
        assert (
            err["error"]["code"] == "not_found"
            and err["request_id"] == resp.headers["X-Request-ID"]
        )


async def test_rate_and_concurrency_limits(make_relay: MakeRelay) -> None:
    relay = await make_relay(
        overrides={"limits": {"per_user_concurrent_sessions": 1, "per_user_requests_per_minute": 3}}
    )
    token = await relay.add_user(seconds=36000)
    status, first, _ = await relay.create_session(token)
    assert status == 201
    # Claimed (a pending one would be superseded by the next request: test_supersede.py).
    relay.services.registry.claim_for_exchange(
        first["session_id"], relay.services.registry.live()[0].user_id
    )
    status, body, headers = await relay.create_session(token)
    assert status == 429
    assert_error(body, headers, "too_many_sessions")
    assert int(headers["Retry-After"]) > 0
    # Refused requests count against the rate too: the limit is on attempts.
    status, body, headers = await relay.create_session(token)
    assert status == 429
    assert_error(body, headers, "too_many_sessions")
    status, body, headers = await relay.create_session(token)
    assert status == 429
    assert_error(body, headers, "rate_limited")


async def test_no_secret_reaches_the_logs(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    relay = await make_relay()
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201
    await relay.create_session("rt_" + "x" * 40)
    entry = relay.services.registry.get(body["session_id"])
    assert entry is not None and entry.minted is not None
    text = caplog.text
    assert "REALTIME SESSION REQUEST START" in text and "OPENAI_SESSION_COMPLETE" in text
    for secret in (token, hash_token(token), entry.minted.secret, "sk-sim-local", "x" * 40):
        assert secret not in text
    assert "ek_" not in text
    assert token not in repr(entry)


async def test_upstream_failures_map_to_502_and_504_and_leave_nothing_open(
    make_relay: MakeRelay, simulator: Any
) -> None:
    relay = await make_relay(
        overrides={"upstream": {"mint_timeout_s": 0.5, "mint_retries": 1, "backoff_base_s": 0.01}}
    )
    token = await relay.add_user()

    await simulator.state.update_faults({"mint": {"status": 401, "code": "invalid_api_key"}})
    status, body, headers = await relay.create_session(token)
    assert status == 502
    assert_error(body, headers, "upstream_error")
    assert body["error"]["upstream_status"] == 401
    assert body["error"]["upstream_code"] == "invalid_api_key"
    assert body["error"]["retryable"] is False
    assert simulator.state.requests["mint"] == 1  # a 401 is never retried

    await simulator.state.update_faults(
        {"mint": {"status": 503, "code": "server_error", "retry_after_s": 0.05}}
    )
    status, body, headers = await relay.create_session(token)
    assert status == 502 and body["error"]["upstream_status"] == 503
    assert body["error"]["retryable"] is True
    assert simulator.state.requests["mint"] == 1 + 2  # one attempt + one retry

    await simulator.state.update_faults({"mint": {"status": None, "code": None, "latency_s": 5.0}})
    status, body, headers = await relay.create_session(token)
    assert status == 504
    assert_error(body, headers, "upstream_timeout")

    rows = await relay.sql("SELECT state, end_reason FROM interview_sessions ORDER BY created_at")
    assert [tuple(r) for r in rows] == [
        ("failed", "upstream_error"),
        ("failed", "upstream_error"),
        ("failed", "upstream_timeout"),
    ]
    assert len(relay.services.registry) == 0


async def test_shutdown_closes_sessions_never_exchanged(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201
    await relay.client.close()  # runs the app's shut-down sequence
    rows = await relay.sql(
        "SELECT state, end_reason, debited_seconds FROM interview_sessions WHERE id = $1",
        body["session_id"],
    )
    assert [tuple(r) for r in rows] == [("failed", "relay_shutdown", 0)]


@pytest.mark.parametrize("grace_s", [30.0, 0.0], ids=["grace", "no-grace"])
async def test_restart_recovers_rows_left_live_by_a_crash(
    make_relay: MakeRelay, grace_s: float
) -> None:
    """A crash, then a start under the same instance id: what cannot be resumed (pending,
    never connected, no resume token, or any when there is no grace) is closed
    relay_restarted; a connected interview with a resume token is handed over (marked
    holder_lost_at) for the page's resume to take it over."""
    overrides = {"session": {"reconnect_grace_s": grace_s}}
    relay = await make_relay(overrides=overrides)
    ids: dict[str, str] = {}
    for kind in ("pending", "never_connected", "resumable"):
        status, body, _ = await relay.create_session(await relay.add_user())
        assert status == 201
        ids[kind] = body["session_id"]
        # A crash: nothing runs the shut-down sequence for them.
        relay.services.registry.release(ids[kind])
    await relay.client.close()
    await relay.sql(
        "UPDATE interview_sessions SET state = 'pending', end_reason = NULL, ended_at = NULL"
        " WHERE id = $1",
        ids["pending"],
    )
    await relay.sql(
        "UPDATE interview_sessions SET state = 'active', end_reason = NULL, ended_at = NULL"
        " WHERE id = $1",
        ids["never_connected"],
    )
    await relay.sql(
        "UPDATE interview_sessions SET state = 'active', end_reason = NULL, ended_at = NULL,"
        " connected_at = now(), resume_token_hash = $2 WHERE id = $1",
        ids["resumable"],
        hashlib.sha256(b"a resume token").hexdigest(),
    )
    again = await make_relay(overrides=overrides)  # same instance id, same database
    assert again.services.store.schema_ready
    rows = await again.sql(
        "SELECT id, state, end_reason, holder_lost_at IS NOT NULL AS handed_over"
        " FROM interview_sessions WHERE id = ANY($1::text[])",
        list(ids.values()),
    )
    found = {r["id"]: (r["state"], r["end_reason"], r["handed_over"]) for r in rows}
    restarted = ("failed", "relay_restarted", False)
    assert found[ids["pending"]] == restarted
    assert found[ids["never_connected"]] == restarted
    assert found[ids["resumable"]] == (("active", None, True) if grace_s else restarted)


async def test_unmigrated_database_answers_503_until_migrations_ran(
    make_relay: MakeRelay, database_url: str
) -> None:
    # Another process holds the migration lock, so this relay starts without its schema.
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        relay = await make_relay()
        assert not relay.services.store.schema_ready
        status, body, headers = await relay.create_session("rt_" + "a" * 40)
        assert status == 503
        assert_error(body, headers, "database_unavailable")
        assert "Retry-After" in headers
        async with relay.client.get("/readyz") as resp:
            ready = await resp.json()
            assert resp.status == 503
            assert ready["checks"]["database"] == {"ok": False, "error": "migrations_pending"}
        await blocker.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        async with asyncio.timeout(10):
            await relay.services.store.wait_schema_ready()
    finally:
        await blocker.close()
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201, body


async def test_finishes_the_database_refused_are_written_later(
    make_relay: MakeRelay, private_postgres: Any
) -> None:
    relay = await make_relay(dsn=private_postgres.dsn())
    token = await relay.add_user(seconds=100)
    status, body, _ = await relay.create_session(token)
    assert status == 201
    entry = relay.services.registry.get(body["session_id"])
    assert entry is not None
    await private_postgres.astop()
    sessions = relay.services.sessions
    await sessions.finish(entry, state="ended", reason="hangup", duration_s=12.3)
    assert await sessions.retry_unwritten() == 1  # still down
    await private_postgres.astart()
    assert await sessions.retry_unwritten() == 0
    rows = await relay.sql(
        "SELECT s.state, s.end_reason, s.debited_seconds, u.remaining_seconds"
        " FROM interview_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        body["session_id"],
    )
    assert [tuple(r) for r in rows] == [("ended", "hangup", 13, 87)]


async def test_draining_refuses_new_sessions_and_says_so(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    status, created, _ = await relay.create_session(token)
    assert status == 201
    relay.services.drain.start()
    status, body, headers = await relay.create_session(token)
    assert status == 503
    assert_error(body, headers, "draining")
    assert int(headers["Retry-After"]) == relay.services.settings.server.drain_retry_after_s
    exchange = {"session_id": created["session_id"], "type": "offer", "sdp": "v=0\r\n"}
    async with relay.client.post(
        "/api/webrtc-exchange", json=exchange, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "draining"
        assert "Retry-After" in resp.headers
    async with relay.client.get("/readyz") as resp:
        ready = await resp.json()
        assert resp.status == 503 and ready["checks"]["draining"] == {"ok": False}
        assert "draining" in ready["error"]["message"]


async def test_a_non_retryable_start_up_failure_is_logged_and_turns_readyz_red(
    make_relay: MakeRelay, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A role that may connect but not create anything: migrations fail with a
    # permission error, which no retry can fix.
    role = "limited_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await admin.close()
    url = urlsplit(database_url)
    limited = urlunsplit(url._replace(netloc=f"{role}@{url.hostname}:{url.port}"))
    try:
        relay = await make_relay(dsn=limited)

        async def readiness() -> dict[str, Any]:
            async with relay.client.get("/readyz") as resp:
                assert resp.status == 503
                body: dict[str, Any] = await resp.json()
                return body

        deadline = asyncio.get_running_loop().time() + 10
        ready = await readiness()
        while "startup" not in ready["checks"]:
            assert asyncio.get_running_loop().time() < deadline, ready
            await asyncio.sleep(0.05)  # polling for a condition, with a deadline
            ready = await readiness()
        assert ready["checks"]["startup"] == {
            "ok": False,
            "error": "database_bootstrap: InsufficientPrivilegeError",
        }
        assert ready["error"]["retryable"] is False
        assert any(
            r.levelno == logging.ERROR
            and "database-bootstrap" in r.getMessage()
            and r.exc_info is not None
            for r in caplog.records
        )
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f"DROP OWNED BY {role}")
        finally:
            await admin.close()


async def test_a_deprecated_model_is_flagged_in_readyz_and_stats(make_relay: MakeRelay) -> None:
    relay = await make_relay(
        overrides={"upstream": {"model": "gpt-realtime", "transcription_model": "whisper-1"}}
    )
    async with relay.client.get("/readyz") as resp:
        ready = await resp.json()
        # Still ready: a date from a table never takes a working deployment down.
        assert resp.status == 200
    warning = ready["checks"]["upstream"]["warning"]
    assert warning["shutdown"] == "2027-01-20"
    assert warning["level"] in ("notice", "warning", "error")
    assert warning["code"] == (
        "model_shut_down" if warning["level"] == "error" else "model_deprecated"
    )
    assert "gpt-realtime" not in json.dumps(ready)  # the public probe names no model
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with relay.client.get("/api/stats", headers=operator) as resp:
        stats = await resp.json()
    currency = stats["upstream"]["model_currency"]
    assert [(c["setting"], c["model"], c["shutdown"]) for c in currency] == [
        ("upstream.model", "gpt-realtime", "2027-01-20"),
        ("upstream.transcription_model", "whisper-1", "2027-02-26"),
    ]
    assert currency[0]["replacement"] == "gpt-realtime-2.1"


async def test_current_models_raise_no_warning(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    async with relay.client.get("/readyz") as resp:
        ready = await resp.json()
    assert resp.status == 200 and "warning" not in ready["checks"]["upstream"]
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with relay.client.get("/api/stats", headers=operator) as resp:
        assert (await resp.json())["upstream"]["model_currency"] == []


async def test_housekeeping_logs_a_database_outage_as_one_warning_line(
    make_relay: MakeRelay,
    private_postgres: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage is expected and handled (the store's retries, /readyz): housekeeping's
    rounds say so in one WARNING line each, not an ERROR with a traceback per round (which
    error tracking would turn into an event per outage)."""
    monkeypatch.setattr(relay_app, "HOUSEKEEPING_INTERVAL_S", 0.1)
    relay = await make_relay(dsn=private_postgres.dsn())
    caplog.set_level(logging.INFO, logger="relay")
    await private_postgres.astop()
    try:
        await wait_until(
            lambda: any(r.getMessage().startswith("housekeeping: ") for r in caplog.records),
            20,
            "a housekeeping round during the outage",
        )
    finally:
        await private_postgres.astart()
    rounds = [r for r in caplog.records if r.getMessage().startswith("housekeeping")]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in rounds), [
        (r.levelname, r.getMessage()) for r in rounds
    ]
    assert "database_unavailable" in rounds[0].getMessage()
    assert relay.services.store.schema_ready
