"""What the console's credentials may do: each learns its own scope (GET
/api/keys/current), and an admin API key ends any session as the operator token does (the
console signed in with a key has the same End button); a read key may not."""

from __future__ import annotations

from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import OPERATOR, bearer, call, create_key
from tests.integration.live_session import live_session
from tests.integration.media_helpers import wait_until


async def test_an_admin_key_ends_a_live_session_and_a_read_key_is_refused(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    admin = await create_key(relay, "admin", name="console")
    read = await create_key(relay, "read", name="reports")
    async with live_session(relay, email="jane.doe@example.com") as live:
        path = f"/api/sessions/{live.session_id}"
        status, body, _ = await call(relay, "DELETE", path, bearer(read))
        assert status == 403 and body["error"]["code"] == "insufficient_scope", body
        assert relay.services.registry.get(live.session_id) is not None

        status, _, _ = await call(relay, "DELETE", path, bearer(admin))
        assert status == 204
        await wait_until(
            lambda: relay.services.registry.get(live.session_id) is None, 10, "session ended"
        )
    rows = await relay.sql(
        "SELECT state, end_reason FROM interview_sessions WHERE id = $1", live.session_id
    )
    assert [tuple(r) for r in rows] == [("ended", "operator_hangup")]
    # An unknown key is still a failed authentication, not an operator.
    status, body, _ = await call(relay, "DELETE", path, bearer("rk_" + "x" * 43))
    assert status == 401 and body["error"]["code"] == "invalid_token", body


async def test_a_credential_learns_what_it_may_do(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    admin = await create_key(relay, "admin", name="console")
    read = await create_key(relay, "read", name="reports")
    status, body, _ = await call(relay, "GET", "/api/keys/current", OPERATOR)
    assert status == 200, body
    assert body == {"kind": "operator", "id": "operator", "name": "operator", "scope": "admin"}
    for key, name, scope in ((admin, "console", "admin"), (read, "reports", "read")):
        status, body, _ = await call(relay, "GET", "/api/keys/current", bearer(key))
        assert status == 200, body
        assert (body["kind"], body["name"], body["scope"]) == ("api_key", name, scope)
        assert body["id"].startswith("key_")
    # A wrong key is told nothing; a candidate's credential, that it is not a key.
    status, body, _ = await call(relay, "GET", "/api/keys/current", bearer("rk_" + "x" * 43))
    assert status == 401 and body["error"]["code"] == "invalid_token", body
    token = await relay.add_user(email="someone@example.com")
    status, body, _ = await call(relay, "GET", "/api/keys/current", bearer(token))
    assert status == 403 and body["error"]["code"] == "insufficient_scope", body
    assert set(body["error"]) == {"code", "message", "retryable", "credential"}, body
