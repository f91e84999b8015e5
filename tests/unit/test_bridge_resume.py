"""Continuity on one bridge, with real aiortc peers on loopback: a lost browser leg keeps the
upstream leg (browser_lost), a resumed leg takes its place on the same upstream call
(resuming → active), the time away is not charged, the page is told what it missed, and
the relay's own events (time left, wrap-up, ending) reach the page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc.rtp import RtpPacket

from relay.config import EventsConfig, IceConfig, MediaConfig, SessionConfig
from relay.media.bridge import Bridge, BridgeClosed, BridgeSettings, ResumeRefused
from relay.media.metrics import MediaMetrics
from relay.media.sdp import InvalidOffer
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import MintedSession
from tests.integration.media_helpers import (
    BrowserPeer,
    LoopbackUpstream,
    UpstreamCall,
    encode_opus,
    speech_like,
    wait_until,
)
from tests.unit.test_media_bridge import RecordingHooks

SPEECH = encode_opus(speech_like(1.0))
REPLY = encode_opus(speech_like(1.0, f0=220.0))


@dataclass
class Rig:
    upstream: LoopbackUpstream = field(default_factory=lambda: LoopbackUpstream(reply_opus=()))
    hooks: RecordingHooks = field(default_factory=RecordingHooks)
    metrics: MetricsRegistry = field(default_factory=MetricsRegistry)
    bridges: list[Bridge] = field(default_factory=list)
    browsers: list[BrowserPeer] = field(default_factory=list)

    def bridge(
        self, *, max_duration_s: float = 60, fast_path: bool = True, **session: Any
    ) -> Bridge:
        config = {"connect_timeout_s": 5.0, "idle_media_timeout_s": 10.0, **session}
        bridge = Bridge(
            session_id=f"is_resume{len(self.bridges)}",
            request_id="req_test",
            settings=BridgeSettings(
                session=SessionConfig(**config),
                media=MediaConfig(queue_max_frames=50, fast_path=fast_path),
                events=EventsConfig(),
                ice=IceConfig(),
            ),
            upstream=self.upstream,
            minted=MintedSession(secret="ek_test", expires_at=0, model="m"),
            max_duration_s=max_duration_s,
            metrics=MediaMetrics(self.metrics),
            hooks=self.hooks,
        )
        self.bridges.append(bridge)
        return bridge

    def browser(self, **kwargs: Any) -> BrowserPeer:
        peer = BrowserPeer(**kwargs)
        self.browsers.append(peer)
        return peer

    async def connect(self, bridge: Bridge, **browser: Any) -> BrowserPeer:
        peer = self.browser(**browser)
        await peer.accept(await bridge.start(await peer.offer()))
        await peer.wait_connected()
        await wait_until(lambda: bridge.state == "active", 10, "bridge active")
        return peer

    async def resume(self, bridge: Bridge, **browser: Any) -> BrowserPeer:
        peer = self.browser(**browser)
        await peer.accept(await bridge.resume(await peer.offer()))
        await peer.wait_connected()
        await wait_until(lambda: bridge.state == "active", 10, "bridge active again")
        return peer

    @property
    def call(self) -> UpstreamCall:
        assert len(self.upstream.calls) == 1
        return self.upstream.calls[0]

    def to_browser(self, event: dict[str, Any]) -> None:
        """The upstream sends ``event`` on its events channel."""
        self.call.channel.send(json.dumps(event))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    for browser in r.browsers:
        await browser.close()
    for bridge in r.bridges:
        await bridge.close("test_over")
    await r.upstream.close()


def state_of(bridge: Bridge) -> str:
    # A call, not an attribute: mypy would keep ``bridge.state`` narrowed across awaits.
    return bridge.state


async def lose_browser(bridge: Bridge, browser: BrowserPeer) -> float:
    """Close the page's peer without a word (a crash, a reload); return when it was lost."""
    await browser.pc.close()
    await wait_until(lambda: bridge.state == "browser_lost", 10, "browser leg lost")
    return time.monotonic()


def _steps(packets: list[RtpPacket]) -> tuple[list[int], list[int]]:
    pairs = list(zip(packets, packets[1:], strict=False))
    seq = [(b.sequence_number - a.sequence_number) & 0xFFFF for a, b in pairs]
    ts = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in pairs]
    return seq, ts


def _contiguous(received: list[bytes], sent: list[bytes]) -> bool:
    return sent[0] in received and received[received.index(sent[0]) :][: len(sent)] == sent


# ---------------------------------------------------------------------- lost, then gone
async def test_a_lost_browser_leg_keeps_the_upstream_then_ends_browser_gone(rig: Rig) -> None:
    bridge = rig.bridge(reconnect_grace_s=1.0)
    browser = await rig.connect(bridge, payloads=SPEECH)
    connected = time.monotonic()
    await wait_until(lambda: bridge.browser_to_upstream.forwarded > 25, 10, "audio up")
    lost = await lose_browser(bridge, browser)

    # The upstream call stays up, nobody hung it up, and the clock stopped.
    assert rig.upstream.hangups == [] and rig.call.pc.connectionState == "connected"
    assert rig.hooks.finished == []
    charged = bridge.active_seconds(time.monotonic())
    await asyncio.sleep(0.3)  # time passing away from the browser is not charged
    assert bridge.active_seconds(time.monotonic()) == pytest.approx(charged, abs=0.02)

    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    state, reason, duration = rig.hooks.finished[0]
    assert (state, reason) == ("ended", "browser_gone")
    ended = bridge.ended_at
    assert ended is not None and 0.9 <= ended - lost < 2.5  # the grace, with slack
    # Debited for the time with the browser, not for the grace.
    assert bridge.connected_at is not None
    assert duration <= lost - bridge.connected_at + 0.05
    assert duration >= connected - bridge.connected_at
    assert rig.upstream.hangups == [rig.call.call_id]


async def test_without_a_grace_a_lost_browser_ends_the_interview_at_once(rig: Rig) -> None:
    bridge = rig.bridge(reconnect_grace_s=0)
    browser = await rig.connect(bridge)
    await browser.pc.close()
    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    assert rig.hooks.finished[0][1] in ("browser_disconnected", "browser_channel_closed")
    with pytest.raises(BridgeClosed):
        await bridge.resume(await rig.browser().offer())


# ---------------------------------------------------------------------- resumed
async def test_a_resumed_leg_carries_audio_both_ways_on_the_same_upstream_call(
    rig: Rig, media_path: str
) -> None:
    """On the fast path, on both forwarding paths: on the compiled loop the resumed leg's
    directions are handed to it as the first leg's were, their streams continuing."""
    await _resumed_leg_carries_audio_both_ways(rig, media_path=media_path)


async def test_a_resumed_leg_carries_audio_both_ways_on_aiortc_s_path(rig: Rig) -> None:
    await _resumed_leg_carries_audio_both_ways(rig, media_path=None)


async def _resumed_leg_carries_audio_both_ways(rig: Rig, *, media_path: str | None) -> None:
    """``media_path``: the fast path's forwarding path; None: aiortc's path."""
    bridge = rig.bridge(reconnect_grace_s=10.0, fast_path=media_path is not None)
    first = await rig.connect(bridge, payloads=SPEECH)
    call = rig.call
    await wait_until(lambda: _contiguous(call.payloads, SPEECH), 10, "first leg's speech up")
    lost = await lose_browser(bridge, first)
    before = len(call.payloads)
    await asyncio.sleep(0.5)
    assert len(call.payloads) <= before + 2  # nothing from the lost leg any more

    again = await rig.resume(bridge, payloads=SPEECH)
    resumed = time.monotonic()
    assert len(rig.upstream.calls) == 1 and rig.upstream.hangups == []
    # The resumed leg's speech reaches the same upstream call, byte for byte ...
    await wait_until(lambda: _contiguous(call.payloads[before:], SPEECH), 10, "speech again")
    # ... as one stream: the relay's sender, sequence numbers and timestamps going on
    # from the first leg's (a far end's SRTP would refuse a sequence going back).
    assert len({p.ssrc for p in call.packets}) == 1
    seq, ts = _steps(call.packets)
    assert all(1 <= step <= 3 for step in seq), seq
    assert all(0 < step < 0x80000000 for step in ts)
    # The interviewer's voice reaches the resumed page.
    assert call.mouth is not None
    call.mouth.play(REPLY)
    await wait_until(lambda: again.speaker.loud_frames() > 20, 10, "reply at the resumed page")
    if media_path is not None:
        for direction in (bridge.browser_to_upstream, bridge.upstream_to_browser):
            assert direction.fast_path and direction.compiled is (media_path != "python")

    # The page is told it is back, what was said, and the time left, before anything else.
    greeting = [e["type"] for e in again.events[:3]]
    assert greeting == ["relay.session.reconnected", "relay.transcript", "relay.session.time_left"]
    gap_ms = again.events[0]["gap_ms"]
    assert (resumed - lost) * 1000 - 300 <= gap_ms <= (resumed - lost) * 1000 + 300

    await bridge.close("hangup")
    _, reason, duration = rig.hooks.finished[0]
    assert reason == "hangup"
    assert bridge.ended_at is not None and bridge.connected_at is not None
    wall = bridge.ended_at - bridge.connected_at
    assert duration == pytest.approx(wall - gap_ms / 1000, abs=0.35)


async def test_the_reply_in_progress_is_cancelled_and_nothing_forwarded_while_away(
    rig: Rig,
) -> None:
    bridge = rig.bridge(reconnect_grace_s=10.0)
    first = await rig.connect(bridge)
    await first.wait_type("session.created")
    # What was said so far, as the upstream reports it; then a reply starts.
    rig.to_browser(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_1",
            "content_index": 0,
            "transcript": "I built a compiler.",
        }
    )
    rig.to_browser(
        {
            "type": "response.output_audio_transcript.done",
            "response_id": "resp_1",
            "item_id": "item_2",
            "output_index": 0,
            "content_index": 0,
            "transcript": "Tell me more.",
        }
    )
    rig.to_browser({"type": "response.created", "response": {"id": "resp_2"}})
    rig.to_browser({"type": "output_audio_buffer.started", "response_id": "resp_2"})
    await first.wait_type("output_audio_buffer.started")

    await lose_browser(bridge, first)
    call = rig.call
    await wait_until(
        lambda: (
            [e["type"] for e in call.events] == ["response.cancel", "output_audio_buffer.clear"]
        ),
        5,
        "the reply cancelled upstream",
    )
    rig.to_browser({"type": "response.done", "response": {"id": "resp_2"}})
    await asyncio.sleep(0.2)

    again = await rig.resume(bridge)
    await again.wait_type("relay.session.time_left")
    transcript = next(e for e in again.events if e["type"] == "relay.transcript")
    assert [(i["role"], i["text"]) for i in transcript["items"]] == [
        ("user", "I built a compiler."),
        ("assistant", "Tell me more."),
    ]
    # What the upstream said while the page was away was not kept for it.
    assert "response.done" not in again.event_types()
    rig.to_browser({"type": "response.created", "response": {"id": "resp_3"}})
    await again.wait_type("response.created")
    # Sent once, not again at the resume.
    assert [e["type"] for e in call.events].count("response.cancel") == 1


async def test_resume_refusals_and_a_failed_attempt_leave_it_resumable(rig: Rig) -> None:
    bridge = rig.bridge(reconnect_grace_s=10.0)
    # Not live yet: nothing to resume.
    browser = rig.browser(payloads=SPEECH)
    answer = await bridge.start(await browser.offer())
    with pytest.raises(ResumeRefused) as refused:
        await bridge.resume(await rig.browser().offer())
    assert refused.value.code == "session_not_resumable"
    await browser.accept(answer)
    await browser.wait_connected()
    await wait_until(lambda: bridge.state == "active", 10, "active")
    await lose_browser(bridge, browser)

    # A resumed leg that cannot continue the upstream stream (another codec) is refused,
    # and the bridge goes back to waiting for the page.
    with pytest.raises(InvalidOffer):
        await bridge.resume(await rig.browser(codecs=["pcmu"]).offer())
    assert state_of(bridge) == "browser_lost"

    # Two at once: one wins, the other is told a resume is under way.
    pages = [rig.browser(payloads=SPEECH), rig.browser(payloads=SPEECH)]
    offers = [await page.offer() for page in pages]
    results = await asyncio.gather(*(bridge.resume(o) for o in offers), return_exceptions=True)
    codes = sorted(r.code if isinstance(r, ResumeRefused) else "answer" for r in results)
    assert codes == ["answer", "resume_in_progress"]
    winner = pages[0] if isinstance(results[0], str) else pages[1]
    won = results[0] if isinstance(results[0], str) else results[1]
    assert isinstance(won, str)
    await winner.accept(won)
    await wait_until(lambda: bridge.state == "active", 10, "active again")
    assert rig.hooks.finished == []


async def test_an_active_bridge_resumed_takes_the_new_leg_and_drops_the_old(rig: Rig) -> None:
    """A reloaded page can resume before the relay noticed its old leg go."""
    bridge = rig.bridge(reconnect_grace_s=10.0)
    old = await rig.connect(bridge)
    await old.wait_type("session.created")
    new = await rig.resume(bridge, payloads=SPEECH)
    await wait_until(
        lambda: old.pc.connectionState in ("closed", "failed"), 40, "old leg closed by the relay"
    )
    await wait_until(lambda: _contiguous(rig.call.payloads, SPEECH), 10, "new leg's speech")
    assert new.events[0]["type"] == "relay.session.reconnected"
    lost = rig.metrics.snapshot()["relay_media_browser_legs_lost_total"]
    assert lost == [{"cause": "replaced", "value": 1}]


# ---------------------------------------------------------------------- the limits
@pytest.mark.slow
async def test_time_left_then_wrap_up_then_time_up_reach_the_page(rig: Rig) -> None:
    bridge = rig.bridge(max_duration_s=11.0, wrap_up_s=3.0, overrun_grace_s=0)
    browser = await rig.connect(bridge)
    ending = await browser.wait_type("relay.session.ending", 20)
    relay = [e for e in browser.events if str(e["type"]).startswith("relay.")]
    assert [e["type"] for e in relay] == [
        "relay.session.time_left",
        "relay.session.time_left",
        "relay.session.wrap_up",
        "relay.session.ending",
    ]
    assert [e.get("seconds") for e in relay[:3]] == [11, 10, 3]
    assert ending["reason"] == "time_up" and ending["message"]
    # The interviewer was asked to close: a system message, then a response.
    sent = [(e["type"], e.get("item", {}).get("role")) for e in rig.call.events]
    assert sent == [("conversation.item.create", "system"), ("response.create", None)]
    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    assert rig.hooks.finished[0][1] == "max_duration"


async def test_at_the_limit_the_reply_in_progress_finishes_within_the_overrun(rig: Rig) -> None:
    bridge = rig.bridge(max_duration_s=1.5, wrap_up_s=0, overrun_grace_s=5.0)
    browser = await rig.connect(bridge)
    await browser.wait_type("session.created")
    rig.to_browser({"type": "response.created", "response": {"id": "resp_1"}})
    await browser.wait_type("response.created")
    assert bridge.connected_at is not None
    limit = bridge.connected_at + 1.5
    await wait_until(lambda: time.monotonic() > limit + 1.0, 5, "a second past the limit")
    assert state_of(bridge) == "active"  # not cut
    rig.to_browser({"type": "response.done", "response": {"id": "resp_1"}})
    ending = await browser.wait_type("relay.session.ending", 5)
    assert ending["reason"] == "time_up"
    types = browser.event_types()
    assert types.index("response.done") < types.index("relay.session.ending")
    assert bridge.ended_at is not None and limit + 1.0 < bridge.ended_at < limit + 2.5


async def test_a_reply_that_never_ends_is_cut_at_the_end_of_the_overrun(rig: Rig) -> None:
    bridge = rig.bridge(max_duration_s=1.0, wrap_up_s=0, overrun_grace_s=1.0)
    browser = await rig.connect(bridge)
    await browser.wait_type("session.created")
    rig.to_browser({"type": "output_audio_buffer.started", "response_id": "resp_1"})
    await browser.wait_type("output_audio_buffer.started")
    await asyncio.wait_for(rig.hooks.done.wait(), 10)
    assert bridge.ended_at is not None and bridge.connected_at is not None
    assert 1.9 <= bridge.ended_at - bridge.connected_at < 3.0
    assert rig.hooks.finished[0][1] == "max_duration"


async def test_the_ending_reaches_the_page_before_its_leg_is_closed(rig: Rig) -> None:
    bridge = rig.bridge()
    browser = await rig.connect(bridge)
    await browser.wait_type("session.created")
    states: list[str] = []
    browser.channel.on("message", lambda _: states.append(browser.pc.connectionState))
    await bridge.close("operator_hangup")
    ending = await browser.wait_type("relay.session.ending", 2)
    assert ending["reason"] == "operator"
    assert states[-1] == "connected"  # it arrived while the leg was still up
    # The candidate's own hang-up is not announced back to it.
    other = rig.bridge()
    page = await rig.connect(other)
    await page.wait_type("session.created")
    await other.close("hangup")
    assert "relay.session.ending" not in page.event_types()
