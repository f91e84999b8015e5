"""A heal of the upstream leg cut short (real aiortc peers on loopback): the session ends
while a new upstream leg is being opened; what the heal created (its peer, its upstream
call) is released, once, and the bridge ends cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.media.bridge.base import ResumeRefused
from relay.media.peers import open_peer_count
from relay.upstream.base import MintedSession, SdpAnswer
from tests.integration.media_helpers import LoopbackUpstream, encode_opus, speech_like, wait_until
from tests.unit.test_bridge_heal import healing, state_of
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)

SPEECH = encode_opus(speech_like(1.0))


class SilentSecondCall(LoopbackUpstream):
    """Answers every call, but from the second one on its side goes away at once (an
    upstream that answered and never came up): the new leg stays ``connecting``."""

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        answer = await super().exchange_sdp(minted, offer_sdp, request_id=request_id)
        if len(self.calls) > 1:
            await self.calls[-1].pc.close()
        return answer


class HeldSecondExchange(LoopbackUpstream):
    """From the second call on, the call exists on the upstream's side before its answer
    comes back, and the answer waits for ``release`` (a slow POST /calls)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        answer = await super().exchange_sdp(minted, offer_sdp, request_id=request_id)
        if len(self.calls) > 1:
            self.held.set()
            await self.release.wait()
        return answer


async def test_a_hang_up_while_the_new_upstream_leg_connects_releases_it(
    rig: Rig,  # noqa: F811
) -> None:
    rig.upstream = SilentSecondCall()
    peers_before = open_peer_count()

    async def mint(request_id: str) -> MintedSession:
        return await rig.upstream.mint(request_id=request_id)

    bridge = rig.bridge(session=healing(), mint_upstream=mint)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    first = rig.upstream.calls[0]
    await first.pc.close()
    await wait_until(lambda: len(rig.upstream.calls) == 2, 10, "the new call")
    second = rig.upstream.calls[1]
    await wait_until(lambda: bridge.upstream_call_id == second.call_id, 10, "its call known")
    new_pc = bridge.upstream_pc
    assert new_pc is not None and bridge.state == "upstream_lost"

    await asyncio.wait_for(bridge.close("hangup"), 10)
    assert state_of(bridge) == "closed"
    assert rig.hooks.finished == [("ended", "hangup", rig.hooks.finished[0][2])]
    assert new_pc.connectionState == "closed"
    assert sorted(rig.upstream.hangups) == sorted([first.call_id, second.call_id])
    assert open_peer_count() == peers_before


async def test_a_hang_up_while_the_new_call_is_being_answered_hangs_that_call_up(
    rig: Rig,  # noqa: F811
) -> None:
    upstream = HeldSecondExchange()
    rig.upstream = upstream
    peers_before = open_peer_count()

    async def mint(request_id: str) -> MintedSession:
        return await upstream.mint(request_id=request_id)

    bridge = rig.bridge(session=healing(), mint_upstream=mint)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    first = upstream.calls[0]
    await first.pc.close()
    await asyncio.wait_for(upstream.held.wait(), 10)
    second = upstream.calls[1]

    # The session ends while the upstream is answering: the heal is cut short.
    await asyncio.wait_for(bridge.close("hangup"), 10)
    assert second.call_id not in upstream.hangups
    upstream.release.set()  # the answer comes back after all, naming a call now useless
    assert state_of(bridge) == "closed"
    assert rig.hooks.finished[0][:2] == ("ended", "hangup")
    # The call the upstream opened for the heal is not left up on its side.
    await wait_until(lambda: second.call_id in upstream.hangups, 5, "the new call hung up")
    assert open_peer_count() == peers_before


async def test_a_resume_while_the_upstream_is_replaced_is_refused_for_now_not_for_good(
    rig: Rig,  # noqa: F811
) -> None:
    held = asyncio.Event()

    async def slow(request_id: str) -> MintedSession:
        await held.wait()
        return await rig.upstream.mint(request_id=request_id)

    bridge = rig.bridge(session=healing(), mint_upstream=slow)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await rig.upstream.calls[0].pc.close()
    await wait_until(lambda: bridge.state == "upstream_lost", 10, "upstream lost")

    # The page's own leg was cut too and it asks to resume before the relay noticed: the
    # page tries again on a retryable refusal (page-interview.js refusedForGood), and
    # gives the interview up on a 409 session_not_resumable.
    page = rig.browser(payloads=SPEECH)
    with pytest.raises(ResumeRefused) as refused:
        await bridge.resume(await page.offer())
    assert refused.value.code == "resume_unavailable"
    assert state_of(bridge) == "upstream_lost"

    held.set()  # the heal goes on; the page's next attempt takes the leg over
    await wait_until(lambda: bridge.state == "active", 15, "healed")
    answer = await bridge.resume(await page.offer())
    await page.accept(answer)
    await page.wait_connected()
    await wait_until(lambda: bridge.state == "active", 10, "resumed")


async def test_a_slow_session_row_write_does_not_hold_up_the_new_sessions_seed(
    rig: Rig,  # noqa: F811
) -> None:
    """The row's note of the new call waits for the database (slow, or retrying): the new
    upstream session, which hears the candidate already, gets the conversation first."""
    database = asyncio.Event()
    noted: list[str | None] = []

    async def mint(request_id: str) -> MintedSession:
        return await rig.upstream.mint(request_id=request_id)

    async def slow_row(call_id: str | None, upstream_session_id: str | None) -> None:
        await database.wait()
        noted.append(call_id)

    bridge = rig.bridge(session=healing(), mint_upstream=mint)
    bridge._on_upstream_replaced = slow_row  # the session layer's hook (the manager's)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await rig.upstream.calls[0].pc.close()
    await browser.wait_type("relay.upstream.reconnected", 15)
    second = rig.upstream.calls[1]
    try:
        await wait_until(lambda: len(second.events) >= 1, 5, "the seed, the database still slow")
        assert noted == []
    finally:
        database.set()  # (the teardown waits for the seeding)
    await wait_until(lambda: noted == [second.call_id], 5, "the row's note of the new call")
