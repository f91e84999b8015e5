"""Failed authentications are limited per client address (429 + Retry-After), across
instances with Redis; when Redis stops answering mid-flight, the shared limits fail open
to the in-process ones and say so in a metric."""

from __future__ import annotations

from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness
from tests.support.redis_server import RedisServer

UNKNOWN = "rt_" + "u" * 40


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
    async with relay.client.post("/api/realtime-session", headers=headers) as resp:
        body = await resp.json()
        return resp.status, body["error"]["code"] if resp.status >= 400 else ""


async def test_behind_a_trusted_proxy_one_guesser_does_not_lock_out_the_others(
    make_relay: MakeRelay,
) -> None:
    # The test client connects from 127.0.0.1, as a reverse proxy on this host would.
    relay = await make_relay(
        overrides={
            "limits": {"failed_auth_per_minute": 2},
            "server": {"trusted_proxies": ["127.0.0.0/8"]},
        }
    )
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
