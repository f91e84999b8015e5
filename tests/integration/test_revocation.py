"""Revocation reaches sessions on a single instance: `relay users revoke` ends the user's
live interview (reason ``revoked``) and refuses their pending exchange, within 5 s."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.integration.cluster_helpers import poll, relay_env, revocation_lag
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like

SPEECH = encode_opus(speech_like(1.0))


async def revoke(email: str, dsn: str, cwd: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "users",
        "revoke",
        "--email",
        email,
        env=relay_env(cwd / "state", {"DATABASE_URL": dsn}),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "revoked" in out.decode()


async def test_revoking_ends_the_live_interview_and_refuses_the_pending_one(
    make_relay: MakeRelay, traversable_tmp_path: Path
) -> None:
    relay = await make_relay()
    email = "revoked@example.test"
    token = await relay.add_user(email=email)
    auth = {"Authorization": f"Bearer {token}"}
    status, live, _ = await relay.create_session(token)
    assert status == 201, live
    status, pending, _ = await relay.create_session(token)
    assert status == 201, pending

    browser = BrowserPeer(payloads=SPEECH)
    late = BrowserPeer()
    try:
        body = {"session_id": live["session_id"], "type": "offer", "sdp": await browser.offer()}
        async with relay.client.post("/api/webrtc-exchange", json=body, headers=auth) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        await browser.accept(answer["sdp"])
        await browser.wait_connected()
        entry = relay.services.registry.get(live["session_id"])
        assert entry is not None
        await poll(lambda: asyncio.sleep(0, entry.state == "active"), 10, "active")

        await revoke(email, relay.database_url, traversable_tmp_path)

        async def ended() -> bool:
            rows = await relay.sql(
                "SELECT state, end_reason FROM interview_sessions WHERE id = $1",
                live["session_id"],
            )
            return bool(rows[0]["end_reason"] == "revoked")

        # Generous for the CLI's own start-up on a loaded machine; the bound is below.
        await poll(ended, 20, "the live interview to end as revoked")
        assert 0 <= await revocation_lag(relay.database_url, live["session_id"]) < 5
        await poll(
            lambda: asyncio.sleep(0, browser.pc.connectionState in ("closed", "failed")),
            5,
            "the browser to be hung up",
        )
        assert relay.services.registry.get(live["session_id"]) is None
        assert relay.services.registry.get(pending["session_id"]) is None

        # The pending session cannot be exchanged any more.
        body = {"session_id": pending["session_id"], "type": "offer", "sdp": await late.offer()}
        async with relay.client.post("/api/webrtc-exchange", json=body, headers=auth) as resp:
            refused = await resp.json()
            assert resp.status in (401, 403), refused
        rows = await relay.sql(
            "SELECT state, end_reason FROM interview_sessions WHERE id = $1",
            pending["session_id"],
        )
        assert (rows[0]["state"], rows[0]["end_reason"]) == ("failed", "revoked")
    finally:
        await browser.close()
        await late.close()


async def test_the_exchange_rechecks_that_the_user_is_active(make_relay: MakeRelay) -> None:
    """A user deactivated behind the caches' back (no command) cannot exchange."""
    relay = await make_relay()
    token = await relay.add_user(email="quiet@example.test")
    status, created, _ = await relay.create_session(token)
    assert status == 201
    await relay.sql("UPDATE users SET active = FALSE WHERE email = 'quiet@example.test'")
    browser = BrowserPeer()
    try:
        body = {"session_id": created["session_id"], "type": "offer", "sdp": await browser.offer()}
        async with relay.client.post(
            "/api/webrtc-exchange", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            refused = await resp.json()
            # The cached user is still active: the claim in PostgreSQL is what refuses.
            assert resp.status == 403, refused
            assert refused["error"]["code"] == "user_inactive"
    finally:
        await browser.close()
