"""Failed authentications are limited per client address (429 + Retry-After), across
instances with Redis; when Redis stops answering mid-flight, the shared limits fail open
to the in-process ones and say so in a metric. A member's heartbeat renews only the
session leases that exist, so it never lets a session past the shared cap."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from relay.admission.tokens import hash_token
from relay.cluster.limits import USER_CAP
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import create_key
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED, OPERATOR_TOKEN, RelayHarness
from tests.support.redis_server import RedisServer

UNKNOWN = "rt_" + "u" * 40
GUESS_LIMIT = 4
# Lookups wait on a locked table for as long as the test holds it (no timeout, no retry).
SLOW_LOOKUPS = {
    "limits": {"failed_auth_per_minute": GUESS_LIMIT},
    "database": {"query_timeout_s": 30.0, "retries": 0},
}


async def attempt(relay: RelayHarness, token: str) -> tuple[int, str, dict[str, str]]:
    status, body, headers = await relay.create_session(token)
    return status, body["error"]["code"] if status >= 400 else "", headers


async def test_failed_authentications_are_limited_per_address(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"limits": {"failed_auth_per_minute": 3}})
    good = await relay.add_user()
    for _ in range(3):
        assert (await attempt(relay, UNKNOWN))[:2] == (401, "invalid_token")
    status, code, headers = await attempt(relay, UNKNOWN)
    assert (status, code) == (429, "too_many_failed_authentications")
    assert 1 <= int(headers["Retry-After"]) <= 60
    # The address is refused before any token is looked at, a valid one included.
    status, code, _ = await attempt(relay, good)
    assert (status, code) == (429, "too_many_failed_authentications")
    # A missing token is not a guess: it does not count (and is still answered 401).
    fresh = await make_relay(overrides={"limits": {"failed_auth_per_minute": 1}})
    for _ in range(3):
        async with fresh.client.post("/api/realtime-session") as resp:
            assert resp.status == 401


async def test_failed_authentications_count_across_instances(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    overrides = {"limits": {"failed_auth_per_minute": 2}}
    a = await make_relay(redis_url=redis_server.url, overrides=overrides)
    b = await make_relay(redis_url=redis_server.url, overrides=overrides)
    assert (await attempt(a, UNKNOWN))[0] == 401
    assert (await attempt(b, UNKNOWN))[0] == 401
    # Neither instance saw two failures itself; together they did.
    for relay in (a, b):
        status, code, headers = await attempt(relay, UNKNOWN)
        assert (status, code) == (429, "too_many_failed_authentications")
        assert "Retry-After" in headers


async def test_redis_failing_mid_flight_fails_open_to_in_process_limits(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    relay = await make_relay(redis_url=redis_server.url)
    token = await relay.add_user(seconds=36000)  # credit is not what refuses here
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    assert relay.counter("relay_limits_redis_fallback_total") == 0
    redis_server.pause()  # accepts connections, never answers
    try:
        status, body, _ = await relay.create_session(token)
        assert status == 201, body  # fail open: decided in-process
        assert relay.counter("relay_limits_redis_fallback_total", limit="request_rate") >= 1
        # The in-process per-user cap (2) still holds while Redis is away (both sessions
        # taken into use, so a new request cannot supersede them as a page reload would).
        for entry in relay.services.registry.live():
            relay.services.registry.claim_for_exchange(entry.session_id, entry.user_id)
        status, body, _ = await relay.create_session(token)
        assert status == 429 and body["error"]["code"] == "too_many_sessions"
    finally:
        redis_server.resume()


async def post_from(relay: RelayHarness, forwarded_for: str, token: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": forwarded_for}
    async with relay.client.post(
        "/api/realtime-session", headers=headers, json=NOTICE_CONFIRMED
    ) as resp:
        body = await resp.json()
        return resp.status, body["error"]["code"] if resp.status >= 400 else ""


async def relay_behind_a_proxy(make_relay: MakeRelay) -> RelayHarness:
    """A relay that believes X-Forwarded-For from loopback (the test client connects from
    127.0.0.1, as a reverse proxy on this host would), two failed logins a minute."""
    return await make_relay(
        overrides={
            "limits": {"failed_auth_per_minute": 2},
            "server": {"trusted_proxies": ["127.0.0.0/8"]},
        }
    )


async def test_behind_a_trusted_proxy_one_guesser_does_not_lock_out_the_others(
    make_relay: MakeRelay,
) -> None:
    relay = await relay_behind_a_proxy(make_relay)
    good = await relay.add_user()
    for _ in range(2):
        assert await post_from(relay, "203.0.113.9", UNKNOWN) == (401, "invalid_token")
    assert await post_from(relay, "203.0.113.9", UNKNOWN) == (
        429,
        "too_many_failed_authentications",
    )
    # Another candidate behind the same proxy is not the guesser.
    assert (await post_from(relay, "203.0.113.10", good))[0] == 201
    # A guesser cannot step around the limit by writing its own hop in front.
    assert await post_from(relay, "198.51.100.1, 203.0.113.9", UNKNOWN) == (
        429,
        "too_many_failed_authentications",
    )


async def test_without_trusted_proxies_the_forwarded_header_is_not_believed(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"limits": {"failed_auth_per_minute": 2}})
    good = await relay.add_user()
    for hop in ("203.0.113.1", "203.0.113.2"):
        assert await post_from(relay, hop, UNKNOWN) == (401, "invalid_token")
    # Every request came from 127.0.0.1 whatever the header said: the address is blocked.
    assert await post_from(relay, "203.0.113.3", good) == (
        429,
        "too_many_failed_authentications",
    )


def guesses(count: int) -> list[str]:
    """Distinct well-formed tokens nobody holds."""
    return ["rt_" + secrets.token_urlsafe(32) for _ in range(count)]


@asynccontextmanager
async def users_locked(database_url: str) -> AsyncIterator[None]:
    """Every token lookup waits until the block ends (the table is locked meanwhile)."""
    conn = await asyncpg.connect(database_url)
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await lock.rollback()
    finally:
        await conn.close()


async def _parallel_guesses(relays: list[RelayHarness]) -> None:
    """Three times the limit's worth of distinct guesses at once, spread over ``relays``:
    while the first lookups wait on the database, every guess beyond the limit is refused
    without one; in the end exactly the limit's worth reached the lookup."""
    tokens = guesses(3 * GUESS_LIMIT)
    async with users_locked(relays[0].database_url):
        tasks = [
            asyncio.create_task(attempt(relays[i % len(relays)], token))
            for i, token in enumerate(tokens)
        ]
        await wait_until(
            lambda: sum(t.done() for t in tasks) == len(tokens) - GUESS_LIMIT,
            15.0,
            "the guesses beyond the limit to be refused while the others wait",
        )
        refused = [t.result() for t in tasks if t.done()]
        assert {(status, code) for status, code, _ in refused} == {
            (429, "too_many_failed_authentications")
        }
        assert all(int(headers["Retry-After"]) >= 1 for _, _, headers in refused)
    looked_up = [r[:2] for r in await asyncio.gather(*tasks) if r[0] != 429]
    assert looked_up == [(401, "invalid_token")] * GUESS_LIMIT
    lookups = sum(r.counter("relay_db_queries_total", query="user_by_token") for r in relays)
    assert lookups == GUESS_LIMIT
    # Those failures count: the address is now refused everywhere, a valid token included.
    good = await relays[0].add_user()
    for relay in relays:
        assert (await attempt(relay, good))[:2] == (429, "too_many_failed_authentications")


async def test_parallel_guesses_reach_the_lookup_at_most_the_limit(make_relay: MakeRelay) -> None:
    await _parallel_guesses([await make_relay(overrides=SLOW_LOOKUPS)])


async def test_parallel_guesses_across_instances_reach_the_lookup_at_most_the_limit(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    relays = [
        await make_relay(redis_url=redis_server.url, overrides=SLOW_LOOKUPS) for _ in range(2)
    ]
    await _parallel_guesses(relays)


async def test_parallel_requests_with_one_valid_token_are_not_taken_for_guesses(
    make_relay: MakeRelay,
) -> None:
    # A page (or a test) sending many requests with the same token at once: one lookup in
    # flight per token counts against the address's budget, not one per request.
    relay = await make_relay(
        overrides={
            "limits": {"failed_auth_per_minute": 2},
            "database": {"query_timeout_s": 30.0, "retries": 0},
        }
    )
    token = await relay.add_user()
    async with users_locked(relay.database_url):
        tasks = [asyncio.create_task(get_unknown_session(relay, token)) for _ in range(8)]
        await wait_until(
            lambda: relay.counter("relay_db_queries_total", query="user_by_token") == 8,
            15.0,
            "every request's lookup under way",
        )
        assert not any(t.done() for t in tasks)
    assert await asyncio.gather(*tasks) == [404] * 8


async def get_unknown_session(relay: RelayHarness, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with relay.client.get(f"/api/sessions/is_{'0' * 32}", headers=headers) as resp:
        return resp.status


# -- operator endpoints ------------------------------------------------------------------

OPERATOR_ROUTES = [
    ("GET", "/api/stats"),
    ("GET", "/api/stats?scope=cluster"),
    ("GET", "/metrics"),
    ("GET", "/api/recordings"),
    ("GET", "/api/recordings/rec_0123456789abcdef/audio"),
    ("POST", "/api/cluster/drain"),
    ("DELETE", f"/api/sessions/is_{'0' * 32}"),
]


async def operator_call(
    relay: RelayHarness, method: str, path: str, token: str
) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"member": "nobody"} if method == "POST" else None
    async with relay.client.request(method, path, headers=headers, json=body) as resp:
        payload = await resp.json() if resp.content_type == "application/json" else {}
        code = payload["error"]["code"] if resp.status >= 400 else ""
        return resp.status, code, dict(resp.headers)


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
async def test_wrong_operator_tokens_are_limited_per_address(
    make_relay: MakeRelay, method: str, path: str
) -> None:
    relay = await make_relay(overrides={"limits": {"failed_auth_per_minute": 3}})
    wrong = "not-the-operator-token-" + "w" * 20
    for _ in range(3):
        assert (await operator_call(relay, method, path, wrong))[:2] == (401, "invalid_token")
    status, code, headers = await operator_call(relay, method, path, wrong)
    assert (status, code) == (429, "too_many_failed_authentications")
    assert 1 <= int(headers["Retry-After"]) <= 60
    # The right token passes the lockout (test_credentials_known_without_the_database_…).
    status, code, _ = await operator_call(relay, method, path, OPERATOR_TOKEN)
    assert code != "too_many_failed_authentications"


async def test_operator_and_candidate_guesses_share_one_budget(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    overrides = {"limits": {"failed_auth_per_minute": 3}}
    a = await make_relay(redis_url=redis_server.url, overrides=overrides)
    b = await make_relay(redis_url=redis_server.url, overrides=overrides)
    assert (await attempt(a, UNKNOWN))[:2] == (401, "invalid_token")
    assert (await operator_call(b, "GET", "/api/stats", "w" * 40))[:2] == (401, "invalid_token")
    assert (await attempt(b, guesses(1)[0]))[:2] == (401, "invalid_token")
    for relay in (a, b):
        status, code, _ = await operator_call(relay, "GET", "/metrics", "w" * 40)
        assert (status, code) == (429, "too_many_failed_authentications")


CAP_ONE = {"limits": {"per_user_concurrent_sessions": 1, "per_user_requests_per_minute": 100}}


async def test_a_heartbeat_gives_no_lease_to_a_session_not_yet_past_the_cap(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    a = await make_relay(redis_url=redis_server.url, overrides=CAP_ONE, instance_id="a")
    b = await make_relay(redis_url=redis_server.url, overrides=CAP_ONE, instance_id="b")
    token = await a.add_user()
    status, body, _ = await a.create_session(token)
    assert status == 201, body
    [first] = a.services.registry.live()
    async with asyncio.timeout(10):
        await b.services.store.wait_schema_ready()

    # A request on b has reserved its slot (in-process) and not asked the shared cap yet
    # when b's heartbeat runs.
    reserved = b.services.registry.reserve(
        user_id=first.user_id,
        token_hash=first.token_hash,
        request_id="req_reserved",
        max_duration_s=600,
        credit_s=1800,
        pending_ttl_s=60,
    )
    assert b.services.cluster is not None and b.services.sessions.limits is not None
    await b.services.cluster.beat_once()
    # Its turn at the cap: a's session holds the user's only slot.
    outcome = await b.services.sessions.limits.acquire_session(
        reserved.session_id, reserved.user_id
    )
    assert outcome == USER_CAP


async def test_a_renewal_sent_before_a_release_does_not_bring_the_lease_back(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    relay = await make_relay(redis_url=redis_server.url, overrides=CAP_ONE)
    token = await relay.add_user()
    status, first, _ = await relay.create_session(token)
    assert status == 201, first
    # The heartbeat's view of what this member holds, taken before the hang-up...
    held = [(e.session_id, e.user_id) for e in relay.services.registry.live()]
    async with relay.client.delete(
        f"/api/sessions/{first['session_id']}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 204
    # ...and its renewal reaching Redis after the release.
    assert relay.services.sessions.limits is not None
    await relay.services.sessions.limits.renew(held)

    status, second, _ = await relay.create_session(token)
    assert status == 201, second  # no lease of the ended session counts against the cap


async def test_an_ipv6_guesser_cannot_step_around_the_limit_within_its_64(
    make_relay: MakeRelay,
) -> None:
    # One IPv6 host usually holds a whole /64: its failures are counted together.
    relay = await relay_behind_a_proxy(make_relay)
    good = await relay.add_user()
    for host in ("2001:db8:1:2::a", "2001:db8:1:2:ffff::b"):
        assert await post_from(relay, host, UNKNOWN) == (401, "invalid_token")
    assert await post_from(relay, "2001:db8:1:2:1234:5678:9abc:def0", UNKNOWN) == (
        429,
        "too_many_failed_authentications",
    )
    # The next /64 is someone else.
    assert (await post_from(relay, "2001:db8:1:3::a", good))[0] == 201


# -- what passes a lockout ---------------------------------------------------------------


async def _lock_out(relay: RelayHarness) -> None:
    for _ in range(2):
        assert (await attempt(relay, UNKNOWN))[:2] == (401, "invalid_token")
    assert (await attempt(relay, UNKNOWN))[:2] == (429, "too_many_failed_authentications")


def _token_lookups(relay: RelayHarness) -> float:
    return relay.counter("relay_db_queries_total", query="user_by_token") + relay.counter(
        "relay_db_queries_total", query="api_key_authenticate"
    )


async def test_credentials_known_without_the_database_pass_a_lockout(
    make_relay: MakeRelay,
) -> None:
    # Behind a shared NAT one guesser locks its address out: the operator and a candidate
    # whose token the cache holds (seen lately) still get in, without a database lookup;
    # any token the relay would have to look up in PostgreSQL still waits.
    relay = await make_relay(overrides={"limits": {"failed_auth_per_minute": 2}})
    seen = await relay.add_user()
    unseen = await relay.add_user()
    key = await create_key(relay)
    assert await get_unknown_session(relay, seen) == 404  # now in the cache
    await _lock_out(relay)
    lookups = _token_lookups(relay)

    status, code, _ = await operator_call(relay, "GET", "/api/stats", OPERATOR_TOKEN)
    assert (status, code) == (200, "")
    assert await get_unknown_session(relay, seen) == 404
    status, body, _ = await relay.create_session(seen)
    assert status == 201, body
    # A valid credential of another kind is still told so (no lookup: the cache knows it).
    status, code, _ = await operator_call(relay, "GET", "/api/stats", seen)
    assert (status, code) == (403, "insufficient_scope")
    for token in (unseen, key, UNKNOWN, "w" * 40):
        status, code, headers = await attempt(relay, token)
        assert (status, code) == (429, "too_many_failed_authentications"), token
        assert int(headers["Retry-After"]) >= 1
    assert _token_lookups(relay) == lookups
    # The passes freed nothing: the guesser still waits.
    assert (await attempt(relay, UNKNOWN))[:2] == (429, "too_many_failed_authentications")


async def test_a_token_cached_in_redis_passes_a_lockout_at_another_member(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    overrides = {"limits": {"failed_auth_per_minute": 2}}
    a = await make_relay(redis_url=redis_server.url, overrides=overrides)
    b = await make_relay(redis_url=redis_server.url, overrides=overrides)
    seen = await a.add_user()
    assert await get_unknown_session(a, seen) == 404  # cached in Redis by a
    await _lock_out(a)
    assert (await attempt(b, UNKNOWN))[:2] == (429, "too_many_failed_authentications")
    assert not b.services.cache.cached_locally(hash_token(seen))
    assert await get_unknown_session(b, seen) == 404
    assert _token_lookups(b) == 0
