"""The simulator as a real WebRTC peer, in both dialects: a test caller (aiortc, Opus, the
``oai-events`` channel) speaks, the simulator's VAD hears it, the documented event sequence
arrives in order, speech-like reply audio arrives on the track, barge-in cuts it, client
events are answered, hang-up closes the peer. Run inside ``unshare -n``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from relay.media.peers import close_peer
from relay.upstream.simulator import (
    SIMULATOR_KEY,
    RunningSimulator,
    SimulatorOptions,
    start_simulator,
)
from relay.upstream.simulator.faults import Faults
from tests.integration.sim_caller import Caller, Utterance, make_utterance
from tests.support.openai_oracle import validate_server_event

AUTH = {"Authorization": "Bearer sk-sim-local"}
SHORT_LINES = ("Thank you, tell me more.", "Why was that?")
LONG_LINE = "Thank you. Could you tell me a little more about that project and your part in it?"
SILENT_RMS = 0.01


_utterance = make_utterance


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def utterance() -> Utterance:
    return _utterance(2.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    # Started for both dialects (the beta shape is off unless asked for, as on the service).
    simulator = await start_simulator(
        options=SimulatorOptions(reply_lines=SHORT_LINES, faults=Faults(beta_disabled=False))
    )
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def callers() -> AsyncIterator[Callable[[Utterance | None], Caller]]:
    made: list[Caller] = []

    def make(utterance: Utterance | None) -> Caller:
        caller = Caller(utterance)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        await caller.close()


TURN = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}


async def _connect(
    http: aiohttp.ClientSession, sim: RunningSimulator, caller: Caller, dialect: str
) -> str | None:
    """Mint in ``dialect``, exchange the caller's offer; returns the call id (GA)."""
    if dialect == "ga":
        session = {
            "type": "realtime",
            "model": "gpt-realtime",
            "audio": {
                "input": {"transcription": {"model": "whisper-1"}, "turn_detection": TURN},
                "output": {"voice": "marin"},
            },
        }
        async with http.post(
            f"{sim.base_url}/realtime/client_secrets", json={"session": session}, headers=AUTH
        ) as response:
            assert response.status == 200
            secret = (await response.json())["value"]
        url, extra = f"{sim.base_url}/realtime/calls", {}
    else:
        body = {
            "model": "gpt-4o-realtime-preview-2024-12-17",
            "voice": "verse",
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": TURN,
        }
        beta = {"OpenAI-Beta": "realtime=v1"}
        async with http.post(
            f"{sim.base_url}/realtime/sessions", json=body, headers={**AUTH, **beta}
        ) as response:
            assert response.status == 200
            secret = (await response.json())["client_secret"]["value"]
        url = f"{sim.base_url}/realtime?model=gpt-4o-realtime-preview-2024-12-17"
        extra = beta
    async with http.post(
        url,
        data=await caller.offer(),
        headers={
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/sdp",
            **extra,
        },
    ) as response:
        assert response.status == 201, await response.text()
        answer = await response.text()
        location = response.headers.get("Location")
    await caller.accept(answer)
    await caller.wait_event("session.created")
    return location.rsplit("/", 1)[-1] if location else None


TRANSCRIPTION = (
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
)


def _expected_turn(dialect: str, line: str) -> list[str]:
    """The reply's sequence, input transcription left out (it is asynchronous)."""
    ga = dialect == "ga"
    transcript = "response.output_audio_transcript" if ga else "response.audio_transcript"
    return [
        "session.created",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *(["conversation.item.added", "conversation.item.done"] if ga else []),
        *([] if ga else ["conversation.item.created"]),
        "response.created",
        "response.output_item.added",
        "conversation.item.added" if ga else "conversation.item.created",
        "response.content_part.added",
        "output_audio_buffer.started",
        *[f"{transcript}.delta"] * len(line.split()),
        "response.output_audio.done" if ga else "response.audio.done",
        f"{transcript}.done",
        "response.content_part.done",
        *(["conversation.item.done"] if ga else []),
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
        "output_audio_buffer.stopped",
    ]


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_spoken_turn_gets_the_documented_events_and_reply_audio(
    dialect: str,
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    callers: Callable[[Utterance | None], Caller],
    utterance: Utterance,
) -> None:
    caller = callers(utterance)
    call_id = await _connect(http, sim, caller, dialect)
    record = sim.state.last_call
    assert record is not None and record.dialect == dialect
    assert record.data_channel_label == "oai-events"
    assert caller.track is not None
    spoke_at = time.monotonic()
    caller.track.say(utterance.payloads)

    await caller.wait_event("output_audio_buffer.stopped")
    await caller.wait_event(TRANSCRIPTION[1])
    assert [t for t in caller.types if t not in TRANSCRIPTION] == _expected_turn(
        dialect, SHORT_LINES[0]
    )
    # Transcription arrives on its own: deltas, then completed, after the commit.
    transcription = [t for t in caller.types if t in TRANSCRIPTION]
    assert transcription[-1] == TRANSCRIPTION[1] and set(transcription[:-1]) == {TRANSCRIPTION[0]}
    assert caller.types.index(TRANSCRIPTION[0]) > caller.types.index("input_audio_buffer.committed")
    # response.done ends generation; playback ends later with output_audio_buffer.stopped.
    assert caller.arrival("output_audio_buffer.stopped") - caller.arrival("response.done") > 0.5
    for event in caller.events:  # the official SDK's models of the dialect accept each one
        validate_server_event(event, dialect)
    event_ids = [e["event_id"] for e in caller.events]
    assert all(i.startswith("event_") for i in event_ids) and len(set(event_ids)) == len(event_ids)

    by_type = {e["type"]: e for e in caller.events}
    started = by_type["input_audio_buffer.speech_started"]
    stopped = by_type["input_audio_buffer.speech_stopped"]
    assert (
        started["item_id"]
        == stopped["item_id"]
        == by_type["input_audio_buffer.committed"]["item_id"]
    )
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
    spoken = by_type["conversation.item.input_audio_transcription.completed"]["transcript"]
    match = re.fullmatch(r"\(candidate spoke for (\d+\.\d) s\)", spoken)
    assert match and 1.4 <= float(match.group(1)) <= 2.2, spoken
    prefix = "response.output_audio_transcript" if dialect == "ga" else "response.audio_transcript"
    deltas = "".join(e["delta"] for e in caller.events if e["type"] == f"{prefix}.delta")
    assert deltas == by_type[f"{prefix}.done"]["transcript"] == SHORT_LINES[0]
    assert by_type["response.done"]["response"]["status"] == "completed"
    session = by_type["session.created"]["session"]
    if dialect == "ga":
        assert session["audio"]["output"]["voice"] == "marin"
    else:
        assert session["voice"] == "verse" and "audio" not in session

    # Silence before the reply, speech-like audio during it (the jitter buffer delays it).
    assert (
        caller.max_rms(spoke_at, caller.arrival("input_audio_buffer.speech_started")) < SILENT_RMS
    )
    reply_start = caller.arrival("output_audio_buffer.started")
    reply_end = caller.arrival("output_audio_buffer.stopped") + 0.3
    assert caller.max_rms(reply_start, reply_end) > 0.05

    # What the simulator saw.
    assert record.state == "connected" and record.codec == "opus"
    assert len(record.vad_segments) == 1
    assert record.rms_max > 0.1 and record.frames_received > 100
    assert record.events_sent == caller.types[: len(record.events_sent)]
    assert record.reply_frames_sent > 50 and record.responses_started == 1

    # Ending: GA hangs up over HTTP; beta (no hang-up endpoint) closes its own peer.
    if dialect == "ga":
        assert call_id == record.call_id
        async with http.post(
            f"{sim.base_url}/realtime/calls/{call_id}/hangup", headers=AUTH
        ) as response:
            assert response.status == 200
        await caller.until(lambda: caller.pc.connectionState == "closed", 10)
        assert record.hung_up and record.closed_reason == "hangup"
    else:
        assert call_id is None
        await close_peer(caller.pc)
        await sim.state.wait_for(lambda: record.state == "closed", 10)
        assert not record.hung_up and record.closed_reason == "peer_closed"
    assert record.state == "closed"
    assert record.call_id not in sim.app[SIMULATOR_KEY].calls.live


async def test_barge_in_cancels_the_reply_and_stops_its_audio(
    http: aiohttp.ClientSession,
    callers: Callable[[Utterance | None], Caller],
) -> None:
    # Generation at real time: the reply is still being generated when the caller speaks.
    simulator = await start_simulator(
        options=SimulatorOptions(reply_lines=(LONG_LINE, "Go on."), generation_speed=1.0)
    )
    try:
        caller = callers(_utterance(1.2))
        await _connect(http, simulator, caller, "ga")
        assert caller.track is not None
        short = _utterance(1.2).payloads
        caller.track.say(short)
        await caller.wait_event("response.output_audio_transcript.delta", 2)
        caller.track.say(short)
        cleared = await caller.wait_event("output_audio_buffer.cleared")
        done = await caller.wait_event("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }
        assert cleared["response_id"] == done["response"]["id"]
        types = caller.types
        assert (
            types.index(
                "input_audio_buffer.speech_started", types.index("output_audio_buffer.started")
            )
            < types.index("response.done")
            < types.index("output_audio_buffer.cleared")
        )
        assert "output_audio_buffer.stopped" not in types

        # The second utterance ends; until then the interviewer's audio stays cut.
        await caller.wait_event("input_audio_buffer.speech_stopped", 2)
        cut = caller.arrival("output_audio_buffer.cleared") + 0.3
        assert (
            caller.max_rms(cut, caller.arrival("input_audio_buffer.speech_stopped", 2)) < SILENT_RMS
        )
        record = simulator.state.last_call
        assert record is not None
        assert record.reply_frames_sent < len(LONG_LINE.split()) * 10
        # …and the next turn is answered with the next line.
        done = await caller.wait_event("response.done", 2)
        assert done["response"]["status"] == "completed"
    finally:
        await simulator.close()


async def test_client_events_over_the_data_channel(
    http: aiohttp.ClientSession,
    callers: Callable[[Utterance | None], Caller],
) -> None:
    # Slow generation, so a cancel sent at the reply's start finds it still generating.
    sim = await start_simulator(
        options=SimulatorOptions(reply_lines=SHORT_LINES, generation_speed=1.0)
    )
    try:
        await _client_events(http, sim, callers)
    finally:
        await sim.close()


async def _client_events(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    callers: Callable[[Utterance | None], Caller],
) -> None:
    caller = callers(None)
    await _connect(http, sim, caller, "ga")
    caller.send(
        {
            "type": "session.update",
            "event_id": "evt_update",
            "session": {"type": "realtime", "instructions": "Ask about testing."},
        }
    )
    updated = await caller.wait_event("session.updated")
    assert updated["session"]["instructions"] == "Ask about testing."
    assert updated["session"]["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    caller.send(
        {"type": "session.update", "event_id": "evt_no_type", "session": {"instructions": "x"}}
    )
    error = await caller.wait_event("error")
    assert error["error"]["event_id"] == "evt_no_type"
    assert error["error"]["param"] == "session.type"
    caller.send({"type": "response.juggle", "event_id": "evt_unknown"})
    error = await caller.wait_event("error", 2)
    assert (error["error"]["code"], error["error"]["event_id"]) == ("invalid_value", "evt_unknown")
    assert error["error"]["param"] == "type"

    caller.send({"type": "response.create", "event_id": "evt_create"})
    await caller.wait_event("output_audio_buffer.started")
    caller.send({"type": "response.cancel", "event_id": "evt_cancel"})
    done = await caller.wait_event("response.done")
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    # What was generated before the cancel still plays, then the buffer stops.
    await caller.wait_event("output_audio_buffer.stopped")

    caller.send({"type": "response.create"})
    done = await caller.wait_event("response.done", 2)
    assert done["response"]["status"] == "completed"
    await caller.wait_event("output_audio_buffer.stopped", 2)
    assert caller.max_rms(caller.arrival("output_audio_buffer.started", 2), time.monotonic()) > 0.05

    record = sim.state.last_call
    assert record is not None
    sent = [e.get("event_id") for e in record.client_events]
    assert sent[:5] == ["evt_update", "evt_no_type", "evt_unknown", "evt_create", "evt_cancel"]
    assert record.client_events[0]["session"]["instructions"] == "Ask about testing."
    assert record.frames_received == 0  # the caller sent no audio track


async def test_pcmu_answer_sends_g711_reply_audio(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    callers: Callable[[Utterance | None], Caller],
) -> None:
    await sim.state.update_faults({"answer_codec": "pcmu"})
    caller = callers(None)
    await _connect(http, sim, caller, "ga")
    caller.send({"type": "response.create"})
    await caller.wait_event("output_audio_buffer.stopped")
    assert caller.max_rms(caller.arrival("output_audio_buffer.started"), time.monotonic()) > 0.05
    assert caller.sample_rates == {8000}
    record = sim.state.last_call
    assert record is not None and record.codec == "pcmu"


async def test_beta_call_is_ended_when_the_beta_shape_is_switched_off(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    callers: Callable[[Utterance | None], Caller],
) -> None:
    caller = callers(None)
    await _connect(http, sim, caller, "beta")
    ga_caller = callers(None)
    await _connect(http, sim, ga_caller, "ga")
    beta_record, ga_record = list(sim.state.calls.values())
    async with http.post(
        f"{sim.root_url}/_sim/faults",
        json={"beta_disabled": True},
        headers={"Authorization": f"Bearer {sim.control_token}"},
    ) as response:
        assert response.status == 200
    error = await caller.wait_event("error")
    assert error["error"]["code"] == "beta_api_shape_disabled"
    await caller.until(lambda: caller.channel.readyState == "closed", 10)
    await sim.state.wait_for(lambda: beta_record.state == "closed", 10)
    assert beta_record.closed_reason == "beta_api_shape_disabled"
    assert ga_record.state == "connected" and ga_caller.count("error") == 0


async def test_close_leaves_no_peers_or_tasks(
    http: aiohttp.ClientSession,
    callers: Callable[[Utterance | None], Caller],
) -> None:
    simulator = await start_simulator(options=SimulatorOptions(reply_lines=SHORT_LINES))
    caller = callers(None)
    await _connect(http, simulator, caller, "ga")
    caller.send({"type": "response.create"})
    await caller.wait_event("output_audio_buffer.started")
    record = simulator.state.last_call
    assert record is not None
    await simulator.close()
    assert record.state == "closed" and record.closed_reason == "simulator_closed"
    await caller.until(lambda: caller.pc.connectionState == "closed", 10)
    assert _simulator_tasks() == []
    assert record.call_id not in simulator.app[SIMULATOR_KEY].calls.live


def _simulator_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still running code of the simulator package."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "relay/upstream/simulator" in code.co_filename:
            found.append(task)
    return found


async def test_seeded_items_join_the_conversation_and_its_length_is_reported(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    callers: Callable[[Utterance | None], Caller],
    utterance: Utterance,
) -> None:
    """A conversation seeded with its past (as the relay does when a member takes an
    interview over) counts those items, and the interviewer goes on with its next line."""
    caller = callers(utterance)
    call_id = await _connect(http, sim, caller, "ga")
    assert call_id is not None
    seeds = [
        ("user", "input_text", "I led the migration."),
        ("assistant", "output_text", SHORT_LINES[0]),
        ("system", "input_text", "Continue where the conversation left off."),
    ]
    for role, kind, text in seeds:
        caller.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": role,
                    "content": [{"type": kind, "text": text}],
                },
            }
        )
    await caller.wait_event("conversation.item.done", n=3)

    async def reported() -> dict[str, Any]:
        async with http.get(
            f"{sim.root_url}/_sim/calls/{call_id}",
            headers={"Authorization": f"Bearer {sim.control_token}"},
        ) as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    record = await reported()
    assert (record["conversation_items"], record["items_created"]) == (3, 3)
    assert caller.track is not None
    caller.track.say(utterance.payloads)
    done = await caller.wait_event("response.output_audio_transcript.done")
    assert done["transcript"] == SHORT_LINES[1]  # not the first question again
    record = await reported()
    assert (record["conversation_items"], record["items_created"]) == (5, 3)
    # A deleted item leaves the conversation, and its count.
    caller.send({"type": "conversation.item.delete", "item_id": done["item_id"]})
    await caller.wait_event("conversation.item.deleted")
    record = await reported()
    assert record["conversation_items"] == 4
    for event in caller.events:
        validate_server_event(event, "ga")
