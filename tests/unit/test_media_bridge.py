"""The media bridge with real aiortc peers on loopback: a browser peer, the bridge, and an
in-process upstream peer (run inside a private network namespace, see tests/run.sh)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from relay import tasks as relay_tasks
from relay.config import EventsConfig, IceConfig, IceServerConfig, MediaConfig, SessionConfig
from relay.media import aiortc_private
from relay.media.bridge import Bridge, BridgeSettings, EndState, supervision
from relay.media.metrics import MediaMetrics
from relay.media.peers import IceGatherTimeout, open_peer_count
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import MintedSession, UpstreamError
from tests.integration.media_helpers import (
    BrowserPeer,
    LoopbackUpstream,
    encode_opus,
    speech_like,
    upstream_failure,
    wait_until,
)

SPEECH = encode_opus(speech_like(1.5))


@dataclass
class RecordingHooks:
    """Stands in for the session layer: records the bridge's milestones."""

    connecting: int = 0
    active: list[str | None] = field(default_factory=list)
    finished: list[tuple[EndState, str, float]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_connecting(self) -> None:
        self.connecting += 1

    async def on_active(self, upstream_call_id: str | None) -> None:
        self.active.append(upstream_call_id)

    async def on_finished(self, state: EndState, reason: str, duration_s: float) -> None:
        self.finished.append((state, reason, duration_s))
        self.done.set()


@dataclass
class Rig:
    upstream: LoopbackUpstream
    metrics: MetricsRegistry
    hooks: RecordingHooks = field(default_factory=RecordingHooks)
    bridges: list[Bridge] = field(default_factory=list)
    browsers: list[BrowserPeer] = field(default_factory=list)

    def bridge(
        self,
        *,
        session: SessionConfig | None = None,
        max_duration_s: float = 60,
        events: EventsConfig | None = None,
        mint_upstream: Callable[[str], Awaitable[MintedSession]] | None = None,
    ) -> Bridge:
        settings = BridgeSettings(
            session=session or SessionConfig(connect_timeout_s=5.0, idle_media_timeout_s=10.0),
            media=MediaConfig(queue_max_frames=50),
            events=events or EventsConfig(),
            ice=IceConfig(),
        )
        bridge = Bridge(
            session_id=f"is_test{len(self.bridges)}",
            request_id="req_test",
            settings=settings,
            upstream=self.upstream,
            minted=MintedSession(secret="ek_test", expires_at=0, model="m"),
            max_duration_s=max_duration_s,
            metrics=MediaMetrics(self.metrics),
            hooks=self.hooks,
            mint_upstream=mint_upstream,
        )
        self.bridges.append(bridge)
        return bridge

    def browser(self, **kwargs: Any) -> BrowserPeer:
        peer = BrowserPeer(**kwargs)
        self.browsers.append(peer)
        return peer

    async def connect(self, bridge: Bridge, browser: BrowserPeer) -> None:
        answer = await bridge.start(await browser.offer())
        await browser.accept(answer)
        await browser.wait_connected()
        await wait_until(lambda: bridge.state == "active", 10, "bridge active")

    def counter(self, name: str, **labels: str) -> float:
        rows: list[dict[str, Any]] = self.metrics.snapshot().get(name) or []
        return float(
            sum(r["value"] for r in rows if all(str(r.get(k)) == v for k, v in labels.items()))
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(upstream=LoopbackUpstream(), metrics=MetricsRegistry())
    yield r
    for browser in r.browsers:
        await browser.close()
    for bridge in r.bridges:
        await bridge.close("test_over")
    await r.upstream.close()


@pytest.mark.usefixtures("media_path")
async def test_opus_passthrough_forwards_packets_unchanged_both_ways(rig: Rig) -> None:
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    call = rig.upstream.calls[0]
    assert rig.hooks.active == [call.call_id]

    # The upstream receives the browser's Opus packets byte for byte: nothing decoded
    # and re-encoded them on the way.
    await wait_until(lambda: len(call.payloads) >= len(SPEECH), 10, "speech upstream")
    first = call.payloads.index(SPEECH[0])
    assert call.payloads[first : first + len(SPEECH)] == SPEECH
    assert call.speaker.loud_frames() > 30

    # The upstream's reply reaches the browser, audible.
    await wait_until(lambda: browser.speaker.loud_frames() > 30, 10, "reply audio at browser")

    stats = bridge.stats()
    for direction in ("browser_to_upstream", "upstream_to_browser"):
        d = stats[direction]
        assert d["mode"] == "passthrough" and d["decoder_used"] is False
        assert d["codec_in"] == "opus" and d["codec_out"] == "opus"
        assert d["frames_decoded"] == 0
        assert d["forwarded"] > 50
        assert d["dropped"]["queue_full"] == 0
        assert d["last_media_age_s"] is not None and d["last_media_age_s"] < 1.0
    assert stats["time_to_first_upstream_audio_ms"] > 0
    # The relay's receivers hold a decoder thread each that never started (aiortc makes
    # one per receiver; the fast path gives it no frame), and its senders keep no
    # retransmission history (audio has no NACK).
    for pc in (bridge.browser_pc, bridge.upstream_pc):
        assert pc is not None
        receiver = pc.getTransceivers()[0].receiver
        thread = aiortc_private.decoder_thread(receiver)
        assert thread is not None and thread.ident is None
        sender = pc.getTransceivers()[0].sender
        assert len(vars(sender)["_RTCRtpSender__rtp_history"]) == 0

    await bridge.close("hangup")
    assert rig.hooks.finished[0][:2] == ("ended", "hangup")
    assert rig.hooks.finished[0][2] > 0.5
    assert rig.upstream.hangups == [call.call_id]
    assert rig.counter("relay_media_directions_total", mode="passthrough") == 2
    assert rig.counter("relay_media_directions_total", mode="decode") == 0
    assert rig.counter("relay_media_frames_decoded_total") == 0
    assert rig.counter("relay_media_packets_forwarded_total", direction="browser_to_upstream") > 50
    # Both decoder threads are gone after close.
    for pc in (bridge.browser_pc, bridge.upstream_pc):
        assert pc is not None
        assert aiortc_private.decoder_thread(pc.getTransceivers()[0].receiver) is None
        assert pc.connectionState == "closed"


async def test_pcmu_upstream_falls_back_to_decoding(rig: Rig) -> None:
    rig.upstream.answer_codec = "pcmu"
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    call = rig.upstream.calls[0]
    await wait_until(lambda: call.speaker.loud_frames() > 20, 10, "speech at a PCMU upstream")
    await wait_until(lambda: browser.speaker.loud_frames() > 20, 10, "PCMU reply at browser")
    stats = bridge.stats()
    assert stats["browser_to_upstream"]["mode"] == "decode"
    assert stats["browser_to_upstream"]["codec_out"] == "pcmu"
    assert stats["upstream_to_browser"]["codec_in"] == "pcmu"
    assert stats["upstream_to_browser"]["frames_decoded"] > 20
    assert aiortc_private.fast_audio_level_installed()
    assert rig.counter("relay_media_directions_total", mode="decode") == 2
    # Decoding, the relay's receivers started their decoder threads with the first frame
    # (LazyDecoderThread); closing joins them off the event loop.
    threads = []
    for pc in (bridge.browser_pc, bridge.upstream_pc):
        assert pc is not None
        thread = aiortc_private.decoder_thread(pc.getTransceivers()[0].receiver)
        assert thread is not None and thread.is_alive()
        threads.append(thread)
    await bridge.close("hangup")
    assert not any(thread.is_alive() for thread in threads)


async def test_browser_preferring_pcmu_is_honoured_and_decoded(rig: Rig) -> None:
    bridge = rig.bridge()
    browser = rig.browser(codecs=["PCMU", "opus"])
    await rig.connect(bridge, browser)
    call = rig.upstream.calls[0]
    await wait_until(lambda: call.speaker.loud_frames() > 20, 10, "PCMU browser heard upstream")
    await wait_until(lambda: browser.speaker.loud_frames() > 20, 10, "reply at PCMU browser")
    assert bridge.stats()["browser_to_upstream"]["codec_in"] == "pcmu"
    assert bridge.stats()["upstream_to_browser"]["mode"] == "decode"


async def test_events_relay_and_allow_list(rig: Rig) -> None:
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    call = rig.upstream.calls[0]
    created = await browser.wait_type("session.created")
    assert created["event_id"] == "event_1"

    # session.update is answered by the relay (the effective session), never forwarded.
    browser.send_event(
        {"type": "session.update", "event_id": "evt_hack", "session": {"instructions": "x"}}
    )
    updated = await browser.wait_type("session.updated")
    assert updated["session"] == created["session"]
    browser.send_event({"type": "conversation.item.delete", "event_id": "evt_hack", "item_id": "i"})
    error = await browser.wait_type("error")
    assert error["error"]["code"] == "event_not_allowed"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["event_id"] == "evt_hack"

    browser.send_event({"type": "conversation.item.create", "item": {}})
    browser.channel.send("not json")
    browser.channel.send(json.dumps({"type": "response.cancel", "pad": "x" * 20000}))
    browser.send_event({"type": "response.cancel", "event_id": "evt_ok"})
    await wait_until(lambda: len(call.events) >= 1, 5, "allowed event upstream")
    await wait_until(lambda: browser.event_types().count("error") == 4, 5, "four error events")
    codes = [e["error"]["code"] for e in browser.events if e["type"] == "error"]
    assert codes == ["event_not_allowed", "event_not_allowed", "invalid_event", "event_too_large"]
    # Only the allowed event went upstream.
    assert [e["type"] for e in call.events] == ["response.cancel"]
    assert bridge.stats()["events"]["refused"] == 4
    assert rig.counter("relay_media_events_refused_total", reason="event_not_allowed") == 2


async def test_upstream_sdp_failure_closes_browser_leg(rig: Rig) -> None:
    rig.upstream.fail_with = upstream_failure("error")
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    with pytest.raises(UpstreamError):
        await bridge.start(await browser.offer())
    assert rig.hooks.finished == [("failed", "upstream_error", 0.0)]
    assert bridge.browser_pc.connectionState == "closed"
    assert bridge.upstream_pc is not None and bridge.upstream_pc.connectionState == "closed"
    assert bridge.state == "closed"


async def test_ice_gathering_is_bounded(rig: Rig) -> None:
    # A STUN server that never answers: aioice would keep retrying for seconds.
    loop = asyncio.get_running_loop()
    blackhole, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = blackhole.get_extra_info("sockname")[1]
    try:
        ice = IceConfig(servers=(IceServerConfig(urls=(f"stun:127.0.0.1:{port}",)),))
        bridge = Bridge(
            session_id="is_gather",
            request_id="req_gather",
            settings=BridgeSettings(
                session=SessionConfig(ice_gather_timeout_s=0.3),
                media=MediaConfig(),
                events=EventsConfig(),
                ice=ice,
            ),
            upstream=rig.upstream,
            minted=MintedSession(secret="ek_test", expires_at=0, model="m"),
            max_duration_s=60,
            metrics=MediaMetrics(rig.metrics),
            hooks=rig.hooks,
        )
        browser = rig.browser(payloads=SPEECH)
        started = asyncio.get_running_loop().time()
        with pytest.raises(IceGatherTimeout):
            await bridge.start(await browser.offer())
        assert asyncio.get_running_loop().time() - started < 2.0
        assert rig.hooks.finished == [("failed", "ice_gather_timeout", 0.0)]
        assert bridge.browser_pc.connectionState == "closed"
        assert rig.upstream.calls == []  # never got as far as the upstream
    finally:
        blackhole.close()


async def test_connect_timeout_fails_the_session(rig: Rig) -> None:
    bridge = rig.bridge(session=SessionConfig(connect_timeout_s=0.5, idle_media_timeout_s=10))
    browser = rig.browser(payloads=SPEECH)
    await bridge.start(await browser.offer())  # the browser never applies the answer
    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    assert rig.hooks.finished == [("failed", "connect_timeout", 0.0)]
    assert rig.hooks.active == []
    assert rig.upstream.hangups == [rig.upstream.calls[0].call_id]


@pytest.mark.usefixtures("media_path")
async def test_idle_media_ends_the_session(rig: Rig) -> None:
    rig.upstream.reply_pcm = speech_like(0.2)
    bridge = rig.bridge(session=SessionConfig(connect_timeout_s=5, idle_media_timeout_s=0.6))
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    assert browser.mic is not None
    browser.mic.pause()
    # The loopback upstream keeps sending encoded silence, so stop its track too.
    for sender in rig.upstream.calls[0].pc.getSenders():
        sender.replaceTrack(None)
    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    state, reason, duration = rig.hooks.finished[0]
    assert (state, reason) == ("ended", "idle_media")
    assert duration >= 0.6
    # The candidate is told why, before its leg closes.
    ending = await browser.wait_type("relay.session.ending", 2)
    assert ending["reason"] == "idle" and ending["message"]


async def test_the_monitor_wakes_when_work_is_due_not_every_second(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quality figures every 0.4 s here, while the tick (the longest sleep) stays at
    # its default; a monitor that slept a fixed tick (a second, as it once did) would
    # refresh only on its tick, a second apart, and publish metrics on every one.
    monkeypatch.setattr(supervision, "QUALITY_REFRESH_S", 0.4)
    bridge = rig.bridge(session=SessionConfig(connect_timeout_s=5, idle_media_timeout_s=60))
    refreshed: list[float] = []
    published: list[float] = []
    quality = vars(bridge)["_quality"]
    refresh, publish = quality.refresh, quality.publish_metrics

    async def counted_refresh() -> None:
        refreshed.append(time.monotonic())
        await refresh()

    def counted_publish() -> None:
        published.append(time.monotonic())
        publish()

    monkeypatch.setattr(quality, "refresh", counted_refresh)
    monkeypatch.setattr(quality, "publish_metrics", counted_publish)
    await rig.connect(bridge, rig.browser(payloads=SPEECH))
    await wait_until(lambda: len(refreshed) >= 4, 10, "four quality refreshes")
    gaps = [b - a for a, b in itertools.pairwise(refreshed)]
    assert all(0.35 < gap < 0.9 for gap in gaps), gaps
    # Woken for that work only: one metrics publication per refresh.
    assert len(published) <= len(refreshed) + 1


async def test_max_duration_ends_the_session(rig: Rig) -> None:
    bridge = rig.bridge(max_duration_s=0.8)
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    state, reason, duration = rig.hooks.finished[0]
    assert (state, reason) == ("ended", "max_duration")
    assert 0.8 <= duration < 2.0  # the cap, plus slack for a loaded machine


@pytest.mark.parametrize(
    ("who", "reasons"),
    [
        ("browser", {"browser_disconnected", "browser_channel_closed"}),
        ("browser_channel", {"browser_channel_closed"}),
        ("upstream", {"upstream_disconnected", "upstream_channel_closed"}),
    ],
)
async def test_either_side_closing_tears_down_both(rig: Rig, who: str, reasons: set[str]) -> None:
    # Resuming switched off: a lost browser leg ends the interview at once (with a grace,
    # tests/unit/test_bridge_resume.py).
    bridge = rig.bridge(
        session=SessionConfig(connect_timeout_s=5.0, idle_media_timeout_s=10.0, reconnect_grace_s=0)
    )
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")  # the browser's channel is open
    call = rig.upstream.calls[0]
    if who == "browser":
        await browser.pc.close()
    elif who == "browser_channel":
        browser.channel.close()  # the peer stays up; the events channel is gone
    else:
        await call.pc.close()
    await asyncio.wait_for(rig.hooks.done.wait(), 5)
    state, reason, _ = rig.hooks.finished[0]
    # The candidate leaving ends the interview; the interviewer's service leaving fails it.
    assert state == ("failed" if who == "upstream" else "ended")
    assert reason in reasons
    assert bridge.browser_pc.connectionState == "closed"
    assert bridge.upstream_pc is not None and bridge.upstream_pc.connectionState == "closed"
    assert rig.upstream.hangups == [call.call_id]


async def test_close_is_idempotent_and_first_reason_wins(rig: Rig) -> None:
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)
    before = open_peer_count()
    await asyncio.gather(bridge.close("hangup"), bridge.close("relay_shutdown"))
    await bridge.close("again")
    assert [f[1] for f in rig.hooks.finished] == ["hangup"]
    assert open_peer_count() == before - 2


class _ExplodingSummary:
    def observe(self, value: float) -> None:
        raise RuntimeError("injected supervisor failure")


async def test_a_failing_supervisor_ends_the_session_and_releases_both_legs(rig: Rig) -> None:
    bridge = rig.bridge()
    bridge.metrics.connect_s = _ExplodingSummary()  # type: ignore[assignment]
    browser = rig.browser(payloads=SPEECH)
    before = open_peer_count()
    answer = await bridge.start(await browser.offer())
    await browser.accept(answer)
    # Nobody hangs up: the supervisor's own failure must end the session.
    await asyncio.wait_for(rig.hooks.done.wait(), 10)
    assert [f[:2] for f in rig.hooks.finished] == [("failed", "internal_error")]
    assert bridge.closed and bridge.state == "closed"
    assert bridge.browser_pc.connectionState == "closed"
    assert bridge.upstream_pc is not None and bridge.upstream_pc.connectionState == "closed"
    assert rig.upstream.hangups == [c.call_id for c in rig.upstream.calls] != []
    assert open_peer_count() == before - 1  # the bridge's upstream leg came and went too
    # Logged and counted as the bridge's (its task group), like any owner's failed task.
    failures = rig.metrics.snapshot()["relay_background_task_failures_total"]
    assert isinstance(failures, list)
    assert [(f["owner"], f["value"]) for f in failures] == [("bridge", 1.0)]


async def test_teardown_releases_even_if_the_supervisor_already_died(rig: Rig) -> None:
    """The old bug: teardown re-raised the supervisor's exception before ``on_finished``."""
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    await rig.connect(bridge, browser)

    async def dies() -> None:
        raise RuntimeError("supervisor died")

    # A supervisor that ended with an exception nobody retrieved, then a hang-up. (Its
    # task is private to the bridge's ``Supervisor``: reached into here to plant the failure.)
    supervisor = bridge._supervisor
    assert supervisor._task is not None
    await relay_tasks.cancel_and_wait(supervisor._task)
    supervisor._task = asyncio.ensure_future(dies())
    await asyncio.wait({supervisor._task})
    await bridge.close("hangup")
    assert rig.hooks.finished and rig.hooks.finished[0][:2] == ("ended", "hangup")
    assert bridge.browser_pc.connectionState == "closed"


@pytest.mark.parametrize(
    ("packet_at", "checked_at", "went"),
    [
        (None, None, None),  # nothing heard yet: nothing moved
        (98.0, None, None),  # heard within BROWSER_QUIET_S: noticed at once
        (50.0, 98.5, None),  # no audio, but its ICE checks go on: it was there
        (50.0, 70.0, 70.0),  # gone after its last check, audio stopped before
        (80.0, 70.0, 80.0),  # gone after its last packet
        (10.0, None, 60.0),  # no checks of its own: at most LOSS_NOTICE_MAX_S back
    ],
)
def test_the_browser_went_when_it_was_last_heard(
    packet_at: float | None, checked_at: float | None, went: float | None
) -> None:
    heard = SimpleNamespace(
        browser_to_upstream=SimpleNamespace(last_packet_at=packet_at),
        _browser_checked_at=checked_at,
    )
    assert Bridge._browser_went_at(heard, 100.0) == went  # type: ignore[arg-type]
