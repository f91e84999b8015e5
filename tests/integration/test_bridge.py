"""POST /api/webrtc-exchange and the live bridge end to end: the whole relay (real
PostgreSQL), a real aiortc "browser", and the simulator as the upstream over real HTTP
and WebRTC."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.media.bridge import Bridge
from relay.media.peers import open_peer_count
from relay.observability.logging import RequestContextFilter
from relay.upstream.simulator.server import RunningSimulator
from relay.upstream.simulator.state import CallRecord
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness
from tests.support.openai_oracle import validate_server_event

SPEECH = encode_opus(speech_like(1.6))
TRANSCRIPT_DONE = "response.output_audio_transcript.done"
USER_TRANSCRIPT = "conversation.item.input_audio_transcription.completed"


@dataclass
class Interview:
    relay: RelayHarness
    token: str
    session_id: str
    browser: BrowserPeer
    answer: dict[str, Any] = field(default_factory=dict)
    status: int = 0
    server_timing: str = ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def bridge(self) -> Bridge:
        assert self.relay.services.bridges is not None
        bridge = self.relay.services.bridges.get(self.session_id)
        assert bridge is not None
        return bridge

    async def exchange(self, sdp: Any = None, **extra: Any) -> tuple[int, dict[str, Any]]:
        body = {"session_id": self.session_id, "type": "offer", "sdp": sdp, **extra}
        if sdp is None:
            body["sdp"] = await self.browser.offer()
        async with self.relay.client.post(
            "/api/webrtc-exchange", json=body, headers=self.auth
        ) as resp:
            self.status, self.answer = resp.status, await resp.json()
            self.server_timing = resp.headers.get("Server-Timing", "")
            return self.status, self.answer

    async def row(self) -> dict[str, Any]:
        rows = await self.relay.sql(
            "SELECT state, end_reason, duration_seconds, debited_seconds, upstream_call_id,"
            " upstream_session_id FROM interview_sessions WHERE id = $1",
            self.session_id,
        )
        return dict(rows[0])

    async def remaining_seconds(self) -> int:
        rows = await self.relay.sql(
            "SELECT u.remaining_seconds FROM users u JOIN interview_sessions s"
            " ON s.user_id = u.id WHERE s.id = $1",
            self.session_id,
        )
        return int(rows[0]["remaining_seconds"])

    async def get(self) -> tuple[int, dict[str, Any]]:
        async with self.relay.client.get(
            f"/api/sessions/{self.session_id}", headers=self.auth
        ) as resp:
            return resp.status, await resp.json()


Start = Any


@pytest.fixture
async def start(make_relay: MakeRelay) -> AsyncIterator[Start]:
    browsers: list[BrowserPeer] = []

    async def factory(
        *, seconds: int = 1800, connect: bool = True, **overrides: dict[str, Any]
    ) -> Interview:
        relay = await make_relay(overrides=overrides or None)
        token = await relay.add_user(seconds=seconds)
        status, body, _ = await relay.create_session(token)
        assert status == 201, body
        browser = BrowserPeer(payloads=SPEECH)
        browsers.append(browser)
        interview = Interview(relay, token, body["session_id"], browser)
        if connect:
            status, answer = await interview.exchange()
            assert status == 201, answer
            await browser.accept(answer["sdp"])
            await browser.wait_connected()
            await wait_until(lambda: interview.bridge.state == "active", 10, "bridge active")
        return interview

    yield factory
    for browser in browsers:
        await browser.close()


def upstream_call(simulator: RunningSimulator) -> CallRecord:
    call = simulator.state.last_call
    assert call is not None
    return call


async def test_speech_round_trip_through_the_relay(
    start: Start, simulator: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    interview: Interview = await start(seconds=1800)
    answer = interview.answer
    assert answer["type"] == "answer" and answer["session_id"] == interview.session_id
    assert answer["sdp"].startswith("v=0") and answer["processing_time_ms"] > 0
    rid = answer["request_id"]
    for line in ("WEBRTC_EXCHANGE_START", "UPSTREAM_SDP_COMPLETE", "WEBRTC_EXCHANGE_COMPLETE"):
        assert any(f"[{rid}] {line}" in r.getMessage() for r in caplog.records), line
    # The exchange's own stages: the browser's answer, our offer, the upstream's round trip.
    timing = dict(part.strip().split(";dur=") for part in interview.server_timing.split(","))
    assert {"db", "answer", "offer", "upstream", "total"} <= set(timing)
    assert sum(float(timing[k]) for k in ("answer", "offer", "upstream")) <= float(timing["total"])

    call = upstream_call(simulator)
    state = simulator.state
    # The simulator heard a spoken turn: its energy VAD found one closed speech segment.
    await state.wait_for(lambda: any(end is not None for _, end in call.vad_segments), 15)
    assert call.rms_max_dbfs > -30
    assert call.codec == "opus"
    # The browser got the turn's transcripts and the interviewer's audible reply.
    await interview.browser.wait_type(USER_TRANSCRIPT, within=15)
    done = await interview.browser.wait_type(TRANSCRIPT_DONE, within=20)
    assert done["transcript"]
    await wait_until(lambda: interview.browser.speaker.loud_frames() > 25, 10, "reply audio")
    assert "session.created" in interview.browser.event_types()

    # Forwarded without decoding, both ways.
    media = interview.bridge.stats()
    for direction in ("browser_to_upstream", "upstream_to_browser"):
        assert media[direction]["mode"] == "passthrough"
        assert media[direction]["frames_decoded"] == 0
        assert media[direction]["forwarded"] > 50
    assert interview.relay.counter("relay_media_frames_decoded_total") == 0
    assert interview.relay.counter("relay_media_directions_total", mode="passthrough") == 2

    status, body = await interview.get()
    assert status == 200 and body["state"] == "active"
    assert body["media"]["time_to_first_upstream_audio_ms"] > 0
    row = await interview.row()
    assert row["state"] == "active" and row["upstream_call_id"] == call.call_id
    assert row["upstream_session_id"].startswith("sess_")

    async with interview.relay.client.delete(
        f"/api/sessions/{interview.session_id}", headers=interview.auth
    ) as resp:
        assert resp.status == 204
    await state.wait_for(lambda: call.hung_up, 5)
    row = await interview.row()
    assert row["state"] == "ended" and row["end_reason"] == "hangup"
    assert row["duration_seconds"] > 1.0
    assert row["debited_seconds"] == math.ceil(row["duration_seconds"])
    assert await interview.remaining_seconds() == 1800 - row["debited_seconds"]
    status, body = await interview.get()
    assert status == 200 and body["state"] == "ended" and body["end_reason"] == "hangup"
    browser_pc = interview.browser.pc
    await wait_until(lambda: browser_pc.connectionState == "closed", 5, "browser leg closed")


async def test_pcmu_upstream_falls_back_to_decoding(
    start: Start, simulator: RunningSimulator
) -> None:
    await simulator.state.update_faults({"answer_codec": "pcmu"})
    interview: Interview = await start()
    call = upstream_call(simulator)
    assert call.codec == "pcmu"
    await simulator.state.wait_for(lambda: call.rms_max_dbfs > -30, 10)
    await simulator.state.wait_for(lambda: any(e is not None for _, e in call.vad_segments), 15)
    await wait_until(lambda: interview.browser.speaker.loud_frames() > 25, 20, "reply audio")
    media = interview.bridge.stats()
    assert media["browser_to_upstream"]["mode"] == "decode"
    assert media["upstream_to_browser"]["frames_decoded"] > 25
    assert interview.relay.counter("relay_media_directions_total", mode="decode") == 2


async def test_session_update_from_the_browser_never_reaches_upstream(
    start: Start, simulator: RunningSimulator
) -> None:
    interview: Interview = await start()
    call = upstream_call(simulator)
    browser = interview.browser
    created = await browser.wait_type("session.created")
    browser.send_event(
        {"type": "session.update", "event_id": "evt_1", "session": {"instructions": "hi"}}
    )
    # Answered by the relay with the effective session (as OpenAI's clients wait for),
    # which the page's instructions did not change and which shows none.
    updated = await browser.wait_type("session.updated")
    validate_server_event(updated)
    assert updated["session"] == created["session"]
    assert "instructions" not in updated["session"]
    # An allowed event goes through (and proves the channel works), session.update never.
    browser.send_event({"type": "response.cancel", "event_id": "evt_2"})
    await simulator.state.wait_for(lambda: len(call.client_events) >= 1, 5)
    assert [e.get("type") for e in call.client_events] == ["response.cancel"]
    assert interview.relay.counter("relay_media_events_refused_total") == 0
    assert "error" not in browser.event_types()


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"calls": {"status": 500, "code": "server_error"}}, 502, "upstream_error"),
        ({"calls": {"latency_s": 5.0}}, 504, "upstream_timeout"),
    ],
)
async def test_upstream_sdp_failure_maps_to_502_504_and_closes_the_browser_leg(
    start: Start, simulator: RunningSimulator, fault: dict[str, Any], status: int, code: str
) -> None:
    await simulator.state.update_faults(fault)
    peers_before = open_peer_count()
    interview: Interview = await start(connect=False, upstream={"sdp_timeout_s": 0.5})
    got, body = await interview.exchange()
    assert got == status, body
    assert body["error"]["code"] == code
    assert interview.relay.services.bridges is not None
    assert len(interview.relay.services.bridges) == 0
    assert open_peer_count() == peers_before  # both relay peers closed
    row = await interview.row()
    assert row["state"] == "failed" and row["end_reason"] == code
    assert row["debited_seconds"] == 0


async def test_upstream_ice_never_connecting_fails_within_connect_timeout(
    start: Start, simulator: RunningSimulator
) -> None:
    await simulator.state.update_faults({"ice_never_completes": True})
    interview: Interview = await start(connect=False, session={"connect_timeout_s": 1.0})
    status, answer = await interview.exchange()
    assert status == 201, answer
    await interview.browser.accept(answer["sdp"])
    bridge = interview.bridge
    await wait_until(lambda: bridge.closed, 4, "connect timeout")
    assert bridge.end_reason == "connect_timeout"
    # Within the connect timeout, plus scheduling slack for a loaded 2-core machine.
    assert bridge.ended_at is not None and bridge.ended_at - bridge.started_at < 2.5
    row = await interview.row()
    assert row["state"] == "failed" and row["end_reason"] == "connect_timeout"


@pytest.mark.parametrize("grace", [0.0, 1.0], ids=["no_grace", "grace"])
async def test_browser_vanishing_hangs_up_upstream_and_debits(
    start: Start, simulator: RunningSimulator, grace: float
) -> None:
    interview: Interview = await start(seconds=600, session={"reconnect_grace_s": grace})
    bridge = interview.bridge
    call = upstream_call(simulator)
    await simulator.state.wait_for(lambda: call.frames_received > 25, 5)
    await interview.browser.close()
    # With a grace the upstream leg waits for a resume that never comes (browser_gone).
    await simulator.state.wait_for(lambda: call.hung_up, 5 + grace)
    await wait_until(
        lambda: interview.relay.services.registry.get(interview.session_id) is None,
        5,
        "session finished",
    )
    await interview.relay.wait_session_closed(interview.session_id)
    row = await interview.row()
    assert row["state"] == "ended"
    if grace:
        assert row["end_reason"] == "browser_gone"
    else:
        assert row["end_reason"].startswith("browser_")
    assert row["duration_seconds"] > 0.3
    assert bridge.ended_at is not None and bridge.connected_at is not None
    # Debited for the time with the browser: not the grace spent waiting for it.
    assert row["duration_seconds"] < bridge.ended_at - bridge.connected_at - grace + 0.5
    assert await interview.remaining_seconds() == 600 - math.ceil(row["duration_seconds"])


async def test_second_exchange_is_409(start: Start) -> None:
    interview: Interview = await start()
    status, body = await interview.exchange(sdp=await BrowserPeer().offer())
    assert status == 409 and body["error"]["code"] == "session_already_exchanged"


def _m_lines(n: int) -> str:
    return "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + (
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * n
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.replace("a=fingerprint", "a=fingerprint" + "A" * 5000, 1), "characters"),
        (lambda s: s.replace("s=-", "s=-\x00", 1), "control character"),
        (lambda s: _m_lines(1000), "bytes"),
        (lambda s: _m_lines(3), "exactly one audio"),
        (lambda s: s.replace("opus/48000/2", "foo/48000/2"), "Opus"),
        (lambda s: "\r\n".join(x for x in s.split("\r\n") if "fingerprint" not in x), "DTLS"),
        (lambda s: "\r\n".join(x for x in s.split("\r\n") if "ice-ufrag" not in x), "ICE"),
        (lambda s: s.replace("a=sendrecv", "a=recvonly"), "sendrecv"),
        (lambda s: "hello", "line 1"),
        (lambda s: 42, "string"),
    ],
)
async def test_malformed_or_hostile_offers_are_400(start: Start, mutate: Any, reason: str) -> None:
    interview: Interview = await start(connect=False)
    offer = await interview.browser.offer()
    status, body = await interview.exchange(sdp=mutate(offer))
    assert status == 400, body
    assert body["error"]["code"] == "invalid_offer"
    assert reason in body["error"]["message"]
    # The session was not used up: a valid offer still works.
    status, body = await interview.exchange(sdp=offer)
    assert status == 201, body


async def test_exchange_needs_the_owner_and_a_known_session(start: Start) -> None:
    interview: Interview = await start(connect=False)
    other = await interview.relay.add_user()
    offer = await interview.browser.offer()
    async with interview.relay.client.post(
        "/api/webrtc-exchange",
        json={"session_id": interview.session_id, "type": "offer", "sdp": offer},
        headers={"Authorization": f"Bearer {other}"},
    ) as resp:
        assert resp.status == 404
    async with interview.relay.client.post(
        "/api/webrtc-exchange",
        json={"session_id": interview.session_id, "type": "offer", "sdp": offer},
    ) as resp:
        assert resp.status == 401
    status, body = await interview.exchange(sdp=offer, type="answer")
    assert status == 400 and body["error"]["code"] == "invalid_request"


async def test_get_and_delete_belong_to_the_owner_or_an_operator(start: Start) -> None:
    interview: Interview = await start()
    relay = interview.relay
    other = await relay.add_user()
    url = f"/api/sessions/{interview.session_id}"
    async with relay.client.get(url, headers={"Authorization": f"Bearer {other}"}) as resp:
        assert resp.status == 404
    async with relay.client.delete(url, headers={"Authorization": f"Bearer {other}"}) as resp:
        assert resp.status == 404
    assert interview.bridge.state == "active"
    async with relay.client.delete(
        url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        assert resp.status == 204
    row = await interview.row()
    assert row["state"] == "ended" and row["end_reason"] == "operator_hangup"
    async with relay.client.delete(url, headers=interview.auth) as resp:
        assert resp.status == 204  # already over
    async with relay.client.get("/api/sessions/is_nope", headers=interview.auth) as resp:
        assert resp.status == 404


async def test_drain_hangs_up_live_bridges_at_the_deadline(
    start: Start, simulator: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    interview: Interview = await start()
    call = upstream_call(simulator)
    manager = interview.relay.services.bridges
    assert manager is not None
    caplog.set_level(logging.INFO)
    # What configure_logging's handler does: each record gets the ids of its context.
    caplog.handler.addFilter(RequestContextFilter())
    # No request is being served here (as for a drain on SIGTERM).
    await manager.drain(0.2)
    assert len(manager) == 0
    await simulator.state.wait_for(lambda: call.hung_up, 5)
    row = await interview.row()
    assert row["state"] == "failed" and row["end_reason"] == "relay_shutdown"
    # The teardown's lines, the upstream hang-up's included, say whose they are.
    await wait_until(lambda: "OPENAI_HANGUP_COMPLETE" in caplog.text, 5, "hang-up logged")
    (hangup,) = [r for r in caplog.records if "OPENAI_HANGUP_COMPLETE" in r.getMessage()]
    assert hangup.session_id == interview.session_id  # type: ignore[attr-defined]


class _ExplodingSummary:
    """A supervisor step that fails: the bridge's connect-time metric raises."""

    def observe(self, value: float) -> None:
        raise RuntimeError("injected supervisor failure")


async def test_supervisor_failure_still_releases_slot_row_and_both_peers(
    start: Start, simulator: RunningSimulator
) -> None:
    interview: Interview = await start(seconds=600, connect=False)
    relay = interview.relay
    manager = relay.services.bridges
    assert manager is not None
    manager.metrics.connect_s = _ExplodingSummary()  # type: ignore[assignment]
    status, answer = await interview.exchange()
    assert status == 201, answer
    bridge = interview.bridge  # still connecting: the browser has not applied the answer
    await interview.browser.accept(answer["sdp"])
    # Nobody hangs up: the supervisor's own failure must end the session.
    await wait_until(
        lambda: relay.services.registry.get(interview.session_id) is None,
        10,
        "registry slot released",
    )
    await relay.wait_session_closed(interview.session_id)
    row = await interview.row()
    assert row["state"] == "failed" and row["end_reason"] == "internal_error"
    call = upstream_call(simulator)
    await simulator.state.wait_for(lambda: call.hung_up, 5)
    assert len(manager) == 0
    assert bridge.closed and bridge.end_reason == "internal_error"
    assert bridge.browser_pc.connectionState == "closed"
    assert bridge.upstream_pc is not None and bridge.upstream_pc.connectionState == "closed"
