"""Conformance of the simulator and the relay's upstream client to the official ``openai``
SDK (the oracle; tests/support/openai_oracle.py).

A whole interview over real WebRTC: the relay's client mints and exchanges the SDP of a real
aiortc caller, the caller speaks and gets a reply, cancels mid-generation, cancels too late
(mid-playback), clears the output audio, barges in, sends an unknown event and the call is
hung up. Every server event is validated against the SDK's ``RealtimeServerEvent`` models
(literals included: ``part.type`` must be ``"audio"``), every client event sent against
``RealtimeClientEvent``, and every request body the relay's client sent against the SDK's
request types. Run inside ``unshare -n``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pydantic
import pytest
from openai.types.realtime.call_create_params import CallCreateParams

from relay.config import UpstreamConfig
from relay.observability.metrics import MetricsRegistry
from relay.upstream.client import OpenAIRealtimeClient
from relay.upstream.simulator import RunningSimulator, SimulatorOptions, start_simulator
from tests.integration.sim_caller import Caller, make_utterance
from tests.support.openai_oracle import (
    validate_client_event,
    validate_client_secret_body,
    validate_server_event,
)

LINES = (
    "Thank you. Could you tell me a little more about that project and your part in it?",
    "I see. And how did you decide which parts of the old system to keep and which to drop?",
)
SILENT_RMS = 0.01
CANCEL_SEQUENCE = [
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
]


@dataclass
class SentRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Recorder:
    """Every request the relay's client sends (method, URL, headers, body), via aiohttp's
    tracing hooks: what actually left the client, not what the dialect meant to send."""

    requests: list[SentRequest] = field(default_factory=list)

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()

        async def on_start(
            session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestStartParams
        ) -> None:
            self.requests.append(SentRequest(params.method, str(params.url), dict(params.headers)))

        async def on_chunk(
            session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
        ) -> None:
            self.requests[-1].body += params.chunk

        config.on_request_start.append(on_start)
        config.on_request_chunk_sent.append(on_chunk)
        return config


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    # Generation at 3x real time: a ~6 s reply is generated in ~2 s and plays for ~4 s more.
    simulator = await start_simulator(
        options=SimulatorOptions(reply_lines=LINES, generation_speed=3.0)
    )
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def recorder_and_client(
    sim: RunningSimulator,
) -> AsyncIterator[tuple[Recorder, OpenAIRealtimeClient]]:
    recorder = Recorder()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None), trace_configs=[recorder.trace_config()]
    ) as http:
        client = OpenAIRealtimeClient(
            UpstreamConfig(api_key="sk-sim-local", base_url=sim.base_url),
            metrics=MetricsRegistry(),
            session=http,
        )
        yield recorder, client
        await client.close()


def _after(caller: Caller, start: int, type_: str) -> int:
    """Index of the first ``type_`` event at or after ``start``."""
    for i in range(start, len(caller.events)):
        if caller.events[i]["type"] == type_:
            return i
    raise AssertionError(f"no {type_} after event {start}: {caller.types[start:]}")


async def _next(caller: Caller, start: int, type_: str, seconds: float = 20.0) -> int:
    """Wait for a ``type_`` event at or after index ``start``; its index."""
    await caller.until(lambda: type_ in caller.types[start:], seconds)
    return _after(caller, start, type_)


async def _poll(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll a condition nothing signals (received audio frames) until a deadline."""
    async with asyncio.timeout(seconds):
        # Received frames signal nothing (one wake-up per 20 ms frame would be wasteful).
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def _send(caller: Caller, event: dict[str, Any]) -> None:
    validate_client_event(event)  # what we send is what the SDK would send
    caller.send(event)


def _types_between(caller: Caller, start: int, end: int) -> list[str]:
    noise = {
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "response.output_audio_transcript.delta",
        "rate_limits.updated",
    }
    return [t for t in caller.types[start:end] if t not in noise]


@pytest.mark.slow
async def test_a_whole_interview_conforms_to_the_sdk(
    sim: RunningSimulator, recorder_and_client: tuple[Recorder, OpenAIRealtimeClient]
) -> None:
    recorder, client = recorder_and_client
    utterance = make_utterance(1.5)
    caller = Caller(utterance)
    try:
        # -- connect through the relay's client (GA: client_secrets, then calls)
        minted = await client.mint(request_id="req_conformance")
        answer = await client.exchange_sdp(
            minted, await caller.offer(), request_id="req_conformance"
        )
        await caller.accept(answer.sdp)
        await caller.wait_event("session.created")
        assert caller.track is not None

        # -- 1. speech, then a whole reply: response.done at the end of generation, well
        #       before output_audio_buffer.stopped at the end of playback.
        caller.track.say(utterance.payloads)
        await caller.wait_event("output_audio_buffer.stopped", seconds=30)
        await caller.wait_event("conversation.item.input_audio_transcription.completed")
        done = caller.events[_after(caller, 0, "response.done")]
        assert done["response"]["status"] == "completed"
        gap = caller.arrival("output_audio_buffer.stopped") - caller.arrival("response.done")
        assert gap > 1.0, gap
        assert caller.types.index("rate_limits.updated") == caller.types.index("response.done") + 1
        assert "conversation.item.created" not in caller.types  # GA: added/done only
        deltas = [
            e["delta"]
            for e in caller.events
            if e["type"] == "conversation.item.input_audio_transcription.delta"
        ]
        completed = caller.events[
            _after(caller, 0, "conversation.item.input_audio_transcription.completed")
        ]
        assert deltas and "".join(deltas) == completed["transcript"]

        # -- 2. response.cancel after response.done, mid-playback: not active; then
        #       output_audio_buffer.clear stops the audio (and cancels nothing).
        mark = len(caller.events)
        _send(caller, {"type": "response.create", "event_id": "evt_create_2"})
        i = await _next(caller, mark, "response.done")
        assert caller.events[i]["response"]["status"] == "completed"
        _send(caller, {"type": "response.cancel", "event_id": "evt_late_cancel"})
        e = await _next(caller, i, "error")
        error = caller.events[e]["error"]
        assert (error["code"], error["event_id"]) == (
            "response_cancel_not_active",
            "evt_late_cancel",
        )
        _send(caller, {"type": "output_audio_buffer.clear", "event_id": "evt_clear_2"})
        c = await _next(caller, e, "output_audio_buffer.cleared")
        response_id = caller.events[i]["response"]["id"]
        assert caller.events[c]["response_id"] == response_id
        cleared_at = caller.arrival("output_audio_buffer.cleared")
        await _poll(lambda: bool(caller.frames) and caller.frames[-1][0] > cleared_at + 1.0)
        assert caller.max_rms(cleared_at + 0.4, cleared_at + 1.0) < SILENT_RMS
        assert "output_audio_buffer.stopped" not in caller.types[mark:]

        # -- 3. response.cancel mid-generation (then clear, as the page does on End): the
        #       cancelled response still closes its transcript, part and item.
        mark = len(caller.events)
        _send(caller, {"type": "response.create", "event_id": "evt_create_3"})
        await _next(caller, mark, "output_audio_buffer.started")
        _send(caller, {"type": "response.cancel", "event_id": "evt_cancel_3"})
        _send(caller, {"type": "output_audio_buffer.clear", "event_id": "evt_clear_3"})
        end = await _next(caller, mark, "output_audio_buffer.cleared")
        d = _after(caller, mark, "response.done")
        start = _after(caller, mark, "output_audio_buffer.started")
        assert _types_between(caller, start + 1, d + 1) == CANCEL_SEQUENCE
        cancelled = caller.events[d]["response"]
        assert cancelled["status"] == "cancelled"
        assert cancelled["status_details"]["reason"] == "client_cancelled"
        item_done = caller.events[_after(caller, mark, "response.output_item.done")]
        assert item_done["item"]["status"] == "incomplete"
        assert end > d

        # -- 4. barge-in mid-generation: speech_started, the cancel sequence (reason
        #       turn_detected), output_audio_buffer.cleared; then the new turn is answered.
        mark = len(caller.events)
        _send(caller, {"type": "response.create", "event_id": "evt_create_4"})
        await _next(caller, mark, "output_audio_buffer.started")
        caller.track.say(utterance.payloads)
        s = await _next(caller, mark, "input_audio_buffer.speech_started")
        cl = await _next(caller, s, "output_audio_buffer.cleared")
        assert _types_between(caller, s + 1, cl) == CANCEL_SEQUENCE
        barged = caller.events[_after(caller, s, "response.done")]["response"]
        assert barged["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        nxt = await _next(caller, cl, "response.created")
        await _next(caller, nxt, "output_audio_buffer.stopped", seconds=30)

        # -- 5. an unknown client event: invalid_value on "type".
        mark = len(caller.events)
        caller.send({"type": "response.juggle", "event_id": "evt_unknown"})
        e = await _next(caller, mark, "error")
        error = caller.events[e]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "type")

        # -- 6. hang-up through the relay's client.
        assert answer.call_id is not None
        await client.hangup(answer.call_id)
        record = sim.state.last_call
        assert record is not None
        await sim.state.wait_for(lambda: record.state == "closed", 10)
        assert record.hung_up
    finally:
        await caller.close()

    # -- every server event validates against the SDK's RealtimeServerEvent
    assert len(caller.events) > 60
    for event in caller.events:
        validate_server_event(event)
    # (the simulator's own record of what it sent, too)
    assert record.events_sent == caller.types
    for event in record.server_events:
        validate_server_event(event)

    # -- every request the relay's client sent validates against the SDK's request types
    paths = [(r.method, r.url.split("/v1", 1)[1]) for r in recorder.requests]
    assert paths == [
        ("POST", "/realtime/client_secrets"),
        ("POST", "/realtime/calls"),
        ("POST", f"/realtime/calls/{answer.call_id}/hangup"),
    ]
    mint, calls, hangup = recorder.requests
    for request in recorder.requests:
        assert "OpenAI-Beta" not in request.headers  # GA sends no beta header
    validate_client_secret_body(json.loads(mint.body))
    assert calls.headers["Content-Type"] == "application/sdp"
    pydantic.TypeAdapter(CallCreateParams).validate_python({"sdp": calls.body.decode()})
    assert calls.body.decode().startswith("v=0")
    assert hangup.body == b""
