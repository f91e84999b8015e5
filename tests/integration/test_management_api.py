"""The management API's common parts against a whole relay (real PostgreSQL): API keys
and their scopes, Idempotency-Key on POSTs, the users resource (credit, status, the
lost-token recovery), and the OpenAPI document covering every /api/ route."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    OPERATOR,
    bearer,
    call,
    create_interview,
    create_key,
    invite_of,
)
from tests.integration.live_session import live_session
from tests.integration.relay_harness import NOTICE_CONFIRMED

SPEC: dict[str, Any] = {
    "candidate": {"email": "idem@example.test"},
    "instructions": "Ask about retries.",
}


async def test_keys_open_what_their_scope_allows_until_revoked(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    admin = await create_key(relay, "admin", "backend")
    reader = await create_key(relay, "read", "dashboard")
    assert admin.startswith("rk_") and reader.startswith("rk_")
    # Stored hashed: the key itself is nowhere in the database.
    rows = await relay.sql("SELECT key_hash FROM api_keys")
    assert len(rows) == 2 and all(admin not in r["key_hash"] for r in rows)

    status, body, _ = await call(relay, "POST", "/api/interviews", bearer(admin), json=SPEC)
    assert status == 201 and body["created_by"].startswith("key_"), body
    status, body, _ = await call(relay, "GET", "/api/interviews", bearer(reader))
    assert status == 200 and len(body["items"]) == 1
    status, body, _ = await call(relay, "POST", "/api/interviews", bearer(reader), json=SPEC)
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    # Operator-only routes are not an API key's: refused as a valid key (not a guess).
    status, body, _ = await call(relay, "GET", "/api/stats", bearer(admin))
    assert status == 403 and body["error"]["code"] == "insufficient_scope", body

    status, listed, _ = await call(relay, "GET", "/api/keys")
    assert status == 200 and [k["name"] for k in listed["items"]] == ["dashboard", "backend"]
    assert "key" not in listed["items"][0]
    reader_id = listed["items"][0]["id"]
    status, body, _ = await call(relay, "DELETE", f"/api/keys/{reader_id}", bearer(admin))
    assert status == 200 and body["revoked_at"] is not None
    status, body, _ = await call(relay, "GET", "/api/interviews", bearer(reader))
    assert status == 401 and body["error"]["code"] == "invalid_token"
    status, listed, _ = await call(relay, "GET", "/api/keys?include_revoked=true")
    assert len(listed["items"]) == 2
    status, listed, _ = await call(relay, "GET", "/api/keys")
    assert [k["name"] for k in listed["items"]] == ["backend"]


async def test_a_key_revokes_itself_through_keys_current(make_relay: MakeRelay) -> None:
    # Whoever holds a key that may have leaked ends it, a read key too, without an admin.
    relay = await make_relay()
    admin = await create_key(relay, "admin", "backend")
    reader = await create_key(relay, "read", "dashboard")
    status, me, _ = await call(relay, "GET", "/api/keys/current", bearer(reader))
    assert status == 200 and me["name"] == "dashboard", me
    status, body, _ = await call(relay, "DELETE", "/api/keys/current", bearer(reader))
    assert (status, body) == (204, None), body
    status, body, _ = await call(relay, "GET", "/api/keys/current", bearer(reader))
    assert status == 401 and body["error"]["code"] == "invalid_token", body
    status, listed, _ = await call(relay, "GET", "/api/keys?include_revoked=true")
    revoked = {k["name"]: k["revoked_at"] is not None for k in listed["items"]}
    assert revoked == {"dashboard": True, "backend": False}
    # Only the caller's own key: the other one still works.
    status, body, _ = await call(relay, "GET", "/api/interviews", bearer(admin))
    assert status == 200, body
    # The operator token is no key: said so, and it keeps working.
    status, body, _ = await call(relay, "DELETE", "/api/keys/current", OPERATOR)
    assert status == 403 and body["error"]["code"] == "insufficient_scope", body
    assert body["error"]["credential"] == "operator" and "request_id" in body, body
    status, body, _ = await call(relay, "GET", "/api/keys/current", OPERATOR)
    assert status == 200 and body["kind"] == "operator", body
    status, body, _ = await call(relay, "DELETE", "/api/keys/current", bearer(admin))
    assert status == 204, body
    status, body, _ = await call(relay, "GET", "/api/interviews", bearer(admin))
    assert status == 401 and body["error"]["code"] == "invalid_token", body


async def test_wrong_api_keys_count_as_failed_authentications(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"limits": {"failed_auth_per_minute": 3}})
    key = await create_key(relay)
    for i in range(3):
        status, body, _ = await call(relay, "GET", "/api/interviews", bearer(f"rk_{'x' * 40}{i}"))
        assert status == 401, body
    status, body, headers = await call(relay, "GET", "/api/interviews", bearer(key))
    assert status == 429 and body["error"]["code"] == "too_many_failed_authentications"
    assert int(headers["Retry-After"]) >= 1


async def test_a_repeated_post_with_its_idempotency_key_runs_once(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    headers = {**OPERATOR, "Idempotency-Key": "create-ana-1"}
    status, first, h1 = await call(relay, "POST", "/api/interviews", headers, json=SPEC)
    assert status == 201 and "Idempotent-Replayed" not in h1
    # The same request again (a client retrying after a timeout): the stored answer, with
    # the same candidate link, and nothing created twice.
    status, again, h2 = await call(relay, "POST", "/api/interviews", headers, json=dict(SPEC))
    assert status == 201 and h2["Idempotent-Replayed"] == "true"
    assert again == first and again["candidate_url"] == first["candidate_url"]
    assert h2["X-Request-ID"] != h1["X-Request-ID"]
    assert len(await relay.sql("SELECT id FROM interviews")) == 1
    # The stored answer holds the candidate link: it is sealed, never readable at rest.
    stored = await relay.sql("SELECT response_sealed FROM idempotency_keys")
    assert invite_of(first).encode() not in bytes(stored[0]["response_sealed"])
    # Another body with the same key is a client bug: refused, nothing created.
    other = {**SPEC, "instructions": "Something else."}
    status, body, _ = await call(relay, "POST", "/api/interviews", headers, json=other)
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"
    # Keys are the sender's own: another principal's same key is another key.
    key = await create_key(relay)
    status, body, _ = await call(
        relay,
        "POST",
        "/api/interviews",
        {**bearer(key), "Idempotency-Key": "create-ana-1"},
        json=SPEC,
    )
    assert status == 201 and body["id"] != first["id"]
    status, body, _ = await call(
        relay, "POST", "/api/interviews", {**OPERATOR, "Idempotency-Key": "a b"}, json=SPEC
    )
    assert status == 400 and body["error"]["code"] == "invalid_idempotency_key"


async def test_concurrent_duplicates_never_both_run(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    headers = {**OPERATOR, "Idempotency-Key": "burst-7"}
    results = await asyncio.gather(
        *(call(relay, "POST", "/api/interviews", headers, json=SPEC) for _ in range(8))
    )
    statuses = sorted(status for status, _, _ in results)
    created = {body["id"] for status, body, _ in results if status == 201}
    assert len(created) == 1, results
    assert set(statuses) <= {201, 409}, statuses
    in_use = [body for status, body, _ in results if status == 409]
    assert all(b["error"]["code"] == "idempotency_key_in_use" for b in in_use)
    assert all(b["error"]["retryable"] for b in in_use)
    assert len(await relay.sql("SELECT id FROM interviews")) == 1


async def test_an_error_gives_the_key_back_for_a_retry(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    key = await create_key(relay)
    headers = {**OPERATOR, "Idempotency-Key": "retry-after-fix"}
    # Refused: the candidate's user is deactivated. Not stored: the key stays usable.
    await create_interview(relay, key)
    [ana] = (await call(relay, "GET", "/api/users?email=ana@example.test"))[1]["items"]
    status, _, _ = await call(relay, "PATCH", f"/api/users/{ana['id']}", json={"active": False})
    assert status == 200
    spec = {**SPEC, "candidate": {"email": "ana@example.test"}}
    status, body, _ = await call(relay, "POST", "/api/interviews", headers, json=spec)
    assert status == 409 and body["error"]["code"] == "user_inactive", body
    status, _, _ = await call(relay, "PATCH", f"/api/users/{ana['id']}", json={"active": True})
    status, body, replayed = await call(relay, "POST", "/api/interviews", headers, json=spec)
    assert status == 201 and "Idempotent-Replayed" not in replayed, body


async def test_a_candidate_retrying_its_session_request_gets_the_same_session(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    invite = invite_of(await create_interview(relay))
    headers = {**bearer(invite), "Idempotency-Key": "page-load-1"}
    answers = [
        await call(relay, "POST", "/api/realtime-session", headers, json=NOTICE_CONFIRMED)
        for _ in range(2)
    ]
    assert [a[0] for a in answers] == [201, 201]
    assert answers[0][1]["session_id"] == answers[1][1]["session_id"]
    assert answers[1][2]["Idempotent-Replayed"] == "true"
    assert len(await relay.sql("SELECT id FROM interview_sessions")) == 1


async def test_reissue_is_the_recovery_of_a_lost_token(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    old = await relay.add_user(seconds=300, email="lost@example.test")
    [user] = (await call(relay, "GET", "/api/users?email=lost@example.test"))[1]["items"]
    status, body, _ = await call(relay, "POST", f"/api/users/{user['id']}/token")
    assert status == 201 and body["token"].startswith("rt_"), body
    new = body["token"]
    assert body["user"]["remaining_seconds"] == 300  # nothing else changes
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(old), json=NOTICE_CONFIRMED
    )
    assert status == 401
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(new), json=NOTICE_CONFIRMED
    )
    assert status == 201, body


async def test_posts_that_take_no_fields_refuse_one_and_do_nothing(make_relay: MakeRelay) -> None:
    # A new link, a new token, a redelivery and a test take no body: a field sent with one (a
    # reason, say) is refused as every route refuses a field it does not know, before
    # anything is done, so a client never believes it was kept.
    relay = await make_relay()
    old = await relay.add_user(seconds=300, email="fields@example.test")
    [user] = (await call(relay, "GET", "/api/users?email=fields@example.test"))[1]["items"]
    interview = await create_interview(relay)
    posts = [
        f"/api/users/{user['id']}/token",
        f"/api/interviews/{interview['id']}/invite",
        "/api/webhooks/wh_00000000000000000000000000000000/deliveries/1/redeliver",
        # A test takes no event type: one sent must not look like it was the one sent.
        "/api/webhooks/wh_00000000000000000000000000000000/test",
    ]
    for path in posts:
        status, body, _ = await call(relay, "POST", path, json={"reason": "lost it"})
        assert status == 400 and body["error"]["code"] == "invalid_request", (path, body)
        assert body["error"]["errors"][0]["field"] == "reason" and body["request_id"], body
    # Nothing was replaced: the old token and the old link still open.
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(old), json=NOTICE_CONFIRMED
    )
    assert status == 201, body
    status, body, _ = await call(
        relay, "GET", "/api/recording-notice", bearer(invite_of(interview))
    )
    assert status == 200 and body["recording"] is True, body
    # No body, or {}, as before.
    status, body, _ = await call(relay, "POST", posts[0])
    assert status == 201 and body["token"].startswith("rt_"), body
    status, body, _ = await call(relay, "POST", posts[1], json={})
    assert status == 200 and body["candidate_url"], body


async def test_credit_and_deactivation_through_the_users_resource(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    async with live_session(relay, email="jo@example.test") as live:
        [user] = (await call(relay, "GET", "/api/users?email=jo@example.test"))[1]["items"]
        path = f"/api/users/{user['id']}"
        status, body, _ = await call(relay, "PATCH", path, json={"add_seconds": 60})
        assert status == 200 and body["remaining_seconds"] == 1860
        # Past the most a user may hold: capped there, twice (not an integer overflow).
        for _ in range(2):
            status, body, _ = await call(relay, "PATCH", path, json={"add_seconds": 2**31 - 1})
            assert status == 200 and body["remaining_seconds"] == 2**31 - 1, body
        status, body, _ = await call(relay, "PATCH", path, json={"remaining_seconds": 1860})
        assert status == 200 and body["remaining_seconds"] == 1860
        status, body, _ = await call(
            relay, "PATCH", path, json={"add_seconds": 1, "remaining_seconds": 5}
        )
        assert status == 400 and body["error"]["code"] == "invalid_request"
        status, body, _ = await call(relay, "PATCH", path, json={"active": False})
        assert status == 200 and body["active"] is False and body["revoked_at"]
        # The live interview ends, as with `relay users revoke`.
        bridge = relay.services.bridges.get(live.session_id)
        assert bridge is not None
        await bridge.wait_closed()
        assert bridge.end_reason == "revoked"
        status, body, _ = await call(relay, "PATCH", path, json={"active": True})
        assert status == 200 and body["active"] is True and body["revoked_at"] is None
        status, body, _ = await call(
            relay, "POST", "/api/realtime-session", bearer(live.token), json=NOTICE_CONFIRMED
        )
        assert status == 201, body
    status, body, _ = await call(relay, "GET", "/api/users/999999")
    assert status == 404 and body["error"]["code"] == "user_not_found"
    status, body, _ = await call(relay, "GET", "/api/users/12ab")
    assert status == 404


async def test_the_openapi_document_covers_every_api_route(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    status, document, _ = await call(relay, "GET", "/api/openapi.json", headers={})
    assert status == 200 and document["openapi"] == "3.1.0"
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    # The OpenAI-compatible /v1 routes are operations too; OPTIONS answers CORS preflights
    # (relay.web.cors), a protocol of its own, not an operation.
    routed = {
        (route.method, route.resource.canonical)
        for route in relay.client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(("/api/", "/v1/"))
        and route.method not in ("HEAD", "OPTIONS")
    }
    assert routed == documented
    assert ("POST", "/v1/realtime/calls") in documented
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], (method, path)
            if method == "post":
                names = [p["name"] for p in operation.get("parameters", [])]
                assert "Idempotency-Key" in names, path
    create = document["paths"]["/api/interviews"]["post"]
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert {"candidate", "instructions"} <= set(schema["required"])
    assert "400" in create["responses"] and "422" in create["responses"]
