"""Helpers of the interview tests: the management API called as a hiring backend would,
and a candidate joining through the invite of a candidate link (a real aiortc browser)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED, OPERATOR_TOKEN, RelayHarness

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
SPEECH = encode_opus(speech_like(1.6))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    relay: RelayHarness,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, dict[str, str]]:
    """One request: (status, JSON body or None, headers)."""
    async with relay.client.request(
        method, path, headers=OPERATOR if headers is None else headers, **kwargs
    ) as resp:
        raw = await resp.read()
        body = json.loads(raw) if raw and resp.content_type == "application/json" else None
        return resp.status, body, dict(resp.headers)


async def create_key(relay: RelayHarness, scope: str = "admin", name: str = "backend") -> str:
    status, body, _ = await call(relay, "POST", "/api/keys", json={"name": name, "scope": scope})
    assert status == 201, body
    return str(body["key"])


async def create_interview(
    relay: RelayHarness, key: str | None = None, **fields: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "candidate": {"email": "ana@example.test", "name": "Ana"},
        "instructions": "You interview for the backend role.",
        **fields,
    }
    headers = bearer(key) if key else OPERATOR
    status, body, _ = await call(relay, "POST", "/api/interviews", headers, json=spec)
    assert status == 201, body
    return dict(body)


def invite_of(interview: dict[str, Any]) -> str:
    url = str(interview["candidate_url"])
    assert "#invite=ri_" in url, url
    return url.split("#invite=", 1)[1]


async def interview_status(relay: RelayHarness, interview_id: str) -> dict[str, Any]:
    status, body, _ = await call(relay, "GET", f"/api/interviews/{interview_id}")
    assert status == 200, body
    return dict(body)


async def sim_control(sim_root: str, control_token: str, path: str) -> Any:
    """The simulator's /_sim/* control API over HTTP (what it has seen)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(sim_root + path, headers=bearer(control_token)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


@dataclass
class Joined:
    session_id: str
    browser: BrowserPeer
    session: dict[str, Any]
    # The exchange's answer's: what the page resumes the session with.
    resume_token: str | None = None


@asynccontextmanager
async def join(relay: RelayHarness, invite: str, *, within: float = 15.0) -> AsyncIterator[Joined]:
    """The candidate page's flow with an invite: session, exchange, media up."""
    status, body, _ = await call(
        relay, "POST", "/api/realtime-session", bearer(invite), json=NOTICE_CONFIRMED
    )
    assert status == 201, body
    session_id = str(body["session_id"])
    browser = BrowserPeer(payloads=SPEECH)
    try:
        offer = {"session_id": session_id, "type": "offer", "sdp": await browser.offer()}
        status, answer, _ = await call(
            relay, "POST", "/api/webrtc-exchange", bearer(invite), json=offer
        )
        assert status == 201, answer
        await browser.accept(answer["sdp"])
        await browser.wait_connected(within)
        bridges = relay.services.bridges
        await wait_until(
            lambda: (b := bridges.get(session_id)) is not None and b.state == "active",
            within,
            "bridge active",
        )
        yield Joined(session_id, browser, body, answer.get("resume_token"))
    finally:
        await browser.close()


async def events_of(relay: RelayHarness, interview_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The outbox's events of one interview, in delivery order."""
    rows = await relay.sql(
        "SELECT type, data FROM webhook_events WHERE interview_id = $1 ORDER BY seq",
        interview_id,
    )
    return [(r["type"], json.loads(r["data"])) for r in rows]
