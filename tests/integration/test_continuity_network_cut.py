"""A candidate's network that vanishes without a word (no DTLS close, no SCTP abort: its
UDP dropped with iptables in the test's network namespace), through the whole relay
(real PostgreSQL, the simulator over HTTP, aiortc peers as the page): the time the
candidate was away is not charged, though the relay noticed the loss only later (here:
when the page came back on a new leg before ICE consent failed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.integration.conftest import MakeRelay
from tests.integration.continuity_helpers import SPEECH, Page, go_live, resume
from tests.integration.recording_helpers import OPERATOR
from tests.support.netcut import cut, require_netcut, udp_ports_of

# Longer than the relay's BROWSER_QUIET_S, far shorter than ICE consent's ~30 s.
CUT_S = 6.0


async def test_a_cut_the_relay_did_not_notice_is_not_charged(
    make_relay: MakeRelay, pages: list[Page]
) -> None:
    require_netcut()
    relay = await make_relay()
    live = await go_live(relay, seconds=600)
    pages.append(live.page)
    await live.page.wait_type("relay.session.time_left")
    bridge = relay.services.bridges.get(live.session_id)
    assert bridge is not None
    async with cut(udp_ports_of(live.page.pc)):
        went = time.monotonic()
        await asyncio.sleep(CUT_S)  # the candidate's network is away this long
        # For the relay the leg still looks alive: consent has not failed yet.
        assert bridge.state == "active"
        # The page (a browser notices within seconds) comes back on a new leg.
        page = Page(payloads=SPEECH)
        pages.append(page)
        status, answer = await resume(
            relay, live.session_id, token=live.token, resume_token=live.resume_token, page=page
        )
        assert status == 201, answer
        await page.accept(answer["sdp"])
        await page.wait_connected()
        back = time.monotonic()
    greeting = await page.wait_type("relay.session.reconnected")
    # Away from the cut on, not from when the relay replaced the silent leg.
    assert greeting["gap_ms"] / 1000 == pytest.approx(back - went, abs=1.5)
    time_left = await page.wait_type("relay.session.time_left")
    assert time_left["seconds"] >= 600 - (went - live_since(live)) - 2

    async with relay.client.delete(f"/api/sessions/{live.session_id}", headers=OPERATOR) as r:
        assert r.status == 204
    await relay.wait_session_closed(live.session_id)
    [row] = await relay.sql(
        "SELECT connected_at, ended_at, duration_seconds FROM interview_sessions WHERE id = $1",
        live.session_id,
    )
    wall = (row["ended_at"] - row["connected_at"]).total_seconds()
    assert row["duration_seconds"] == pytest.approx(wall - greeting["gap_ms"] / 1000, abs=1.0)
    assert row["duration_seconds"] < wall - CUT_S + 1.5


def live_since(live: Any) -> float:
    """When the page's first leg came up (its first event: the relay's time left)."""
    at, _ = live.page.arrival_of("relay.session.time_left")
    return float(at)
