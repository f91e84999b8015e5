"""Who may read a session, and what a valid credential of the wrong kind gets, against a
whole relay (real PostgreSQL).

A hiring backend learns a session's id from ``interview.started`` and reads it with its API
key or the operator token, as it ends one (GET and DELETE /api/sessions/{id}). A credential
that is valid but not one a route takes (an API key on an operator-only route, the operator
token on a candidate route, a candidate's credential on the management API) gets 403
``insufficient_scope`` and is not a failed authentication: it never locks its address out.
Unknown tokens still do (relay.web.caller)."""

from __future__ import annotations

from typing import Any

from relay.admission.tokens import hash_token
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    OPERATOR,
    bearer,
    call,
    create_interview,
    create_key,
    invite_of,
    join,
)
from tests.integration.relay_harness import NOTICE_CONFIRMED, OPERATOR_TOKEN

GUESS_LIMIT = 5
CALLS = 25


def _without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


async def test_the_operator_and_any_api_key_read_a_session(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    admin = await create_key(relay, "admin", "backend")
    reader = await create_key(relay, "read", "dashboard")
    interview = await create_interview(relay, admin)
    invite = invite_of(interview)
    managers = {"operator": OPERATOR, "admin": bearer(admin), "read": bearer(reader)}
    async with join(relay, invite) as joined:
        path = f"/api/sessions/{joined.session_id}"
        # Live: what the interview.started webhook's session_id reads.
        for who, headers in managers.items():
            status, body, _ = await call(relay, "GET", path, headers)
            assert status == 200, (who, body)
            assert body["session_id"] == joined.session_id and body["state"] == "active", body
            assert "media" in body, body
            # No credential of the candidate's in it: not the invite, its hash, the resume
            # token.
            text = str(body)
            assert joined.resume_token and joined.resume_token not in text
            assert invite not in text and hash_token(invite) not in text
            assert "resume_token" not in body and "token" not in body
        # The candidate still reads its own.
        status, own, _ = await call(relay, "GET", path, bearer(invite))
        assert status == 200 and own["state"] == "active", own
        status, _, _ = await call(relay, "DELETE", path, bearer(invite))
        assert status == 204
    await relay.wait_session_closed(joined.session_id)
    # Ended: its row, the same body for the candidate and the management API.
    status, own, _ = await call(relay, "GET", path, bearer(invite))
    assert status == 200 and own["state"] == "ended", own
    for who, headers in managers.items():
        status, body, _ = await call(relay, "GET", path, headers)
        assert status == 200, (who, body)
        assert _without_request_id(body) == _without_request_id(own), who
        assert body["end_reason"] == "hangup" and body["interview_id"] == interview["id"]
    # Unknown to a key as to anyone; another candidate's credential still reads none.
    status, body, _ = await call(relay, "GET", f"/api/sessions/is_{'0' * 32}", bearer(reader))
    assert status == 404 and body["error"]["code"] == "session_not_found", body
    stranger = await relay.add_user()
    status, body, _ = await call(relay, "GET", path, bearer(stranger))
    assert status == 404 and body["error"]["code"] == "session_not_found", body


async def test_valid_credentials_of_another_kind_get_403_and_lock_nobody_out(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"limits": {"failed_auth_per_minute": GUESS_LIMIT}})
    admin = await create_key(relay, "admin", "backend")
    reader = await create_key(relay, "read", "dashboard")
    candidate = await relay.add_user()
    invite = invite_of(await create_interview(relay, admin))
    session = f"/api/sessions/is_{'0' * 32}"
    cases = [
        # (method, path, token, what the token is)
        ("GET", "/api/stats", admin, "api_key"),  # operator-only
        ("GET", "/metrics", reader, "api_key"),  # operator-only
        ("POST", "/api/realtime-session", OPERATOR_TOKEN, "operator"),  # candidate-only
        ("POST", "/api/webrtc-exchange", admin, "api_key"),  # candidate-only
        ("GET", "/api/interviews", candidate, "candidate"),  # management
        ("GET", "/api/keys/current", invite, "candidate"),  # management
        ("GET", "/api/stats", invite, "candidate"),  # operator-only
        ("POST", "/v1/realtime/calls", candidate, "candidate"),  # client secret only
    ]
    for method, path, token, kind in cases:
        for _ in range(CALLS):
            status, body, _ = await call(relay, method, path, bearer(token), json={})
            assert status == 403, (method, path, body)
            assert body["error"]["code"] == "insufficient_scope", (method, path, body)
        if not path.startswith("/v1/"):
            assert body["error"]["credential"] == kind, body
    # Not one of them counted: every credential still works from this address.
    status, body, _ = await call(relay, "GET", "/api/stats", OPERATOR)
    assert status == 200, body
    status, body, _ = await call(relay, "GET", "/api/interviews", bearer(reader))
    assert status == 200, body
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(candidate), json=NOTICE_CONFIRMED
    )
    assert status == 201, body
    status, body, _ = await call(relay, "GET", session, bearer(admin))
    assert status == 404, body
    # Unknown and revoked tokens still count, on any route, and then lock the address out,
    # valid keys included (only what is known without the database passes a lockout).
    gone = await create_key(relay, "admin", "gone")
    status, listed, _ = await call(relay, "GET", "/api/keys")
    gone_id = next(k["id"] for k in listed["items"] if k["name"] == "gone")
    assert (await call(relay, "DELETE", f"/api/keys/{gone_id}"))[0] == 200
    guesses = [
        ("GET", "/api/stats", gone),
        ("POST", "/api/realtime-session", gone),
        *(("GET", "/api/stats", f"rk_{'x' * 40}{i}") for i in range(GUESS_LIMIT - 2)),
    ]
    for method, path, token in guesses:
        status, body, _ = await call(relay, method, path, bearer(token), json={})
        assert (status, body["error"]["code"]) == (401, "invalid_token"), (path, body)
    status, body, _ = await call(relay, "GET", "/api/interviews", bearer(reader))
    assert (status, body["error"]["code"]) == (429, "too_many_failed_authentications"), body
