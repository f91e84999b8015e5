"""The recording notice is enforced, not only stored: while recording is on, a session
whose client did not confirm it showed the notice is refused (409
``recording_notice_required``) before anything is taken for it; ``recording.require_notice
= false`` lets API-only deployments opt out, and with recording off nothing is asked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness


async def notice_row(relay: RelayHarness, session_id: str) -> bool:
    rows = await relay.sql(
        "SELECT recording_notice_shown FROM interview_sessions WHERE id = $1", session_id
    )
    return bool(rows[0]["recording_notice_shown"])


@pytest.mark.parametrize(
    "body", [None, {}, {"recording_notice_shown": False}, {"other": True}], ids=str
)
async def test_a_recorded_session_needs_the_notice_confirmed(
    make_relay: MakeRelay, body: dict[str, Any] | None
) -> None:
    relay = await make_relay()
    token = await relay.add_user()
    kwargs = {} if body is None else {"json": body}
    status, payload, headers = await relay.create_session(token, confirm_notice=False, **kwargs)
    assert status == 409, payload
    assert payload["error"]["code"] == "recording_notice_required"
    assert "/api/recording-notice" in payload["error"]["message"]
    assert payload["request_id"] == headers["X-Request-ID"]
    # Refused before anything was taken: no admission, no row, no slot, no upstream mint.
    assert relay.counter("relay_admission_total", outcome="admitted") == 0
    assert (await relay.sql("SELECT count(*) AS n FROM interview_sessions"))[0]["n"] == 0
    assert relay.services.registry.live() == []
    status, payload, _ = await relay.create_session(token)  # as the page sends it
    assert status == 201, payload
    assert await notice_row(relay, payload["session_id"]) is True


async def test_an_unknown_caller_is_told_about_its_token_not_the_notice(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()
    status, payload, _ = await relay.create_session("rt_" + "u" * 40, confirm_notice=False)
    assert (status, payload["error"]["code"]) == (401, "invalid_token")


async def test_api_only_deployments_can_opt_out(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"recording": {"require_notice": False}})
    token = await relay.add_user()
    status, payload, _ = await relay.create_session(token, confirm_notice=False)
    assert status == 201, payload
    # What the client said is still what is stored.
    assert await notice_row(relay, payload["session_id"]) is False


async def test_without_recording_no_notice_is_asked_for(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"recording": {"enabled": False}})
    async with relay.client.get("/api/recording-notice") as resp:
        assert await resp.json() == {"recording": False, "notice": "", "simulated": False}
    token = await relay.add_user()
    status, payload, _ = await relay.create_session(token, confirm_notice=False)
    assert status == 201, payload
