"""The simulator's event sequencing (pure): turns, responses, barge-in, client events, dialects."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay.upstream.simulator.conversation import Conversation, Step
from relay.upstream.simulator.ids import CountingIds
from relay.upstream.simulator.session_config import (
    Dialect,
    beta_session,
    ga_session,
    transcription_session,
)
from tests.support.openai_oracle import (
    CLIENT_EVENT_TYPES as SDK_CLIENT_EVENT_TYPES,
)
from tests.support.openai_oracle import validate_client_event, validate_server_event

LINES = ("Thank you, tell me more.", "Why was that?")


def _session(dialect: Dialect, *, transcription: bool = True, **turn: Any) -> dict[str, Any]:
    td = {"type": "server_vad", "silence_duration_ms": 500, **turn}
    if dialect == "ga":
        audio_in: dict[str, Any] = {"turn_detection": td}
        if transcription:
            audio_in["transcription"] = {"model": "whisper-1"}
        return ga_session(
            {"type": "realtime", "audio": {"input": audio_in}},
            session_id="sess_1",
            default_model="gpt-realtime",
        )
    config: dict[str, Any] = {"turn_detection": td}
    if transcription:
        config["input_audio_transcription"] = {"model": "whisper-1"}
    return beta_session(config, session_id="sess_1", default_model="gpt-4o-realtime-preview")


def _conversation(dialect: Dialect = "ga", **kwargs: Any) -> Conversation:
    return Conversation(dialect, _session(dialect, **kwargs), ids=CountingIds(), reply_lines=LINES)


def _types(step: Step) -> list[str]:
    return [e["type"] for e in step.events]


def _client(conversation: Conversation, event: dict[str, Any]) -> Step:
    return conversation.client_event(json.dumps(event))


GA_TURN = [
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "output_audio_buffer.started",
]
GA_GENERATION_END = [
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
    "rate_limits.updated",
]
GA_CANCEL = [
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
    "rate_limits.updated",
]


def _playing(c: Conversation) -> str | None:
    # A call, so mypy does not keep an earlier narrowing of the property.
    return c.playing


def _checked(step: Step, dialect: str = "ga") -> Step:
    """Every event of ``step`` validates against the official SDK's models."""
    for event in step.events:
        validate_server_event(event, dialect)
    return step


def test_session_created_comes_first_with_the_session() -> None:
    conversation = _conversation()
    step = _checked(conversation.opened())
    assert _types(step) == ["session.created"]
    assert step.events[0]["session"]["id"] == "sess_1"
    assert step.events[0]["session"]["expires_at"] > 1_700_000_000  # a real timestamp


def test_ga_turn_sequence() -> None:
    c = _conversation("ga")
    started = _checked(c.speech_started(audio_start_ms=700))
    assert _types(started) == ["input_audio_buffer.speech_started"]
    item_id = started.events[0]["item_id"]
    assert started.events[0]["audio_start_ms"] == 700
    assert started.start_reply is None and not started.clear_audio

    stopped = _checked(c.speech_stopped(audio_end_ms=3000, spoken_ms=2300))
    assert _types(stopped) == GA_TURN  # no conversation.item.created in GA
    by_type = {e["type"]: e for e in stopped.events}
    assert by_type["input_audio_buffer.committed"]["item_id"] == item_id
    assert by_type["input_audio_buffer.committed"]["previous_item_id"] is None
    assert by_type["input_audio_buffer.speech_stopped"]["audio_end_ms"] == 3000
    assert by_type["response.created"]["response"]["status"] == "in_progress"
    assert by_type["response.content_part.added"]["part"]["type"] == "audio"
    assert stopped.start_reply is not None
    assert stopped.start_reply.text == LINES[0]
    assert c.responding and c.playing == c.response_id

    # Transcription is asynchronous: the peer delivers it later, as deltas then completed.
    assert stopped.transcribe is not None and stopped.transcribe.item_id == item_id
    transcription = _checked(c.transcription(stopped.transcribe))
    assert _types(transcription) == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]  # whisper-1: the whole transcript in one delta
    completed = transcription.events[-1]
    assert completed["transcript"] == "(candidate spoke for 2.3 s)"
    assert transcription.events[0]["delta"] == completed["transcript"]
    assert completed["usage"]["type"] == "tokens"

    words = LINES[0].split()
    progress = _checked(c.generation_progress(3))
    assert [e["delta"] for e in progress.events] == words[:1] + [f" {w}" for w in words[1:3]]
    assert c.generation_progress(3).events == []  # nothing new

    end = _checked(c.generation_finished())
    assert _types(end) == GA_GENERATION_END
    deltas = [e["delta"] for e in progress.events + end.events if "delta" in e]
    assert "".join(deltas) == LINES[0]
    done = {e["type"]: e for e in end.events}
    assert done["response.output_audio_transcript.done"]["transcript"] == LINES[0]
    assert done["response.done"]["response"]["status"] == "completed"
    assert done["response.done"]["response"]["output"][0]["role"] == "assistant"
    assert done["response.done"]["response"]["output"][0]["content"][0]["type"] == "output_audio"
    assert c.response_id is None
    # Generation is over; the audio still plays until the peer says it ended.
    assert c.playing is not None
    stopped_audio = _checked(c.playback_finished())
    assert _types(stopped_audio) == ["output_audio_buffer.stopped"]
    assert stopped_audio.events[0]["response_id"] == done["response.done"]["response"]["id"]
    assert _playing(c) is None and c.playback_finished().events == []


def test_word_by_word_transcription_for_streaming_models() -> None:
    session = ga_session(
        {
            "type": "realtime",
            "audio": {"input": {"transcription": {"model": "gpt-realtime-whisper"}}},
        },
        session_id="sess_1",
        default_model="gpt-realtime-2.1",
    )
    c = Conversation("ga", session, ids=CountingIds(), reply_lines=LINES)
    c.speech_started(0)
    plan = c.speech_stopped(1000, 1500).transcribe
    assert plan is not None
    step = _checked(c.transcription(plan))
    deltas = [e["delta"] for e in step.events[:-1]]
    assert len(deltas) == 5 and "".join(deltas) == step.events[-1]["transcript"]


def test_every_event_has_a_unique_event_id() -> None:
    c = _conversation()
    events = (
        c.opened().events
        + c.speech_started(0).events
        + c.speech_stopped(1000, 1000).events
        + c.generation_finished().events
        + c.playback_finished().events
    )
    ids = [e["event_id"] for e in events]
    assert all(isinstance(i, str) and i.startswith("event_") for i in ids)
    assert len(set(ids)) == len(ids)


def test_beta_uses_beta_names() -> None:
    c = _conversation("beta")
    _checked(c.opened(), "beta")
    _checked(c.speech_started(0), "beta")
    stopped = _checked(c.speech_stopped(1000, 1000), "beta")
    assert _types(stopped) == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        "output_audio_buffer.started",
    ]
    assert stopped.transcribe is not None
    completed = _checked(c.transcription(stopped.transcribe), "beta").events[-1]
    assert completed["type"] == "conversation.item.input_audio_transcription.completed"
    end = _checked(c.generation_finished(), "beta")
    names = _types(end)
    assert "response.audio_transcript.done" in names
    assert "response.audio.done" in names
    assert not any(n.startswith("response.output_audio") for n in names)
    assert "conversation.item.done" not in names
    response = end.events[names.index("response.done")]["response"]
    assert response["modalities"] == ["audio", "text"]
    assert response["output"][0]["content"][0]["type"] == "audio"


def test_no_transcription_without_transcription_config() -> None:
    c = _conversation(transcription=False)
    c.speech_started(0)
    assert c.speech_stopped(1000, 1000).transcribe is None


def test_create_response_false_commits_without_responding() -> None:
    c = _conversation(create_response=False)
    c.speech_started(0)
    step = c.speech_stopped(1000, 1000)
    assert "response.created" not in _types(step)
    assert step.start_reply is None and not c.responding


def test_barge_in_while_generating_cancels_and_clears_audio() -> None:
    c = _conversation()
    c.speech_started(0)
    c.speech_stopped(1000, 1000)
    response_id = c.response_id
    c.generation_progress(2)
    step = _checked(c.speech_started(2500))
    assert _types(step) == [
        "input_audio_buffer.speech_started",
        *GA_CANCEL,
        "output_audio_buffer.cleared",
    ]
    assert step.stop_generation and step.clear_audio
    by_type = {e["type"]: e for e in step.events}
    response = by_type["response.done"]["response"]
    assert response["id"] == response_id
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert by_type["response.output_item.done"]["item"]["status"] == "incomplete"
    assert by_type["response.output_audio_transcript.done"]["transcript"] == " ".join(
        LINES[0].split()[:2]
    )
    assert by_type["output_audio_buffer.cleared"]["response_id"] == response_id
    assert not c.responding and c.playing is None
    assert c.generation_finished().events == []  # late generation end is ignored
    assert c.playback_finished().events == []


def test_barge_in_after_generation_only_clears_the_audio() -> None:
    c = _conversation()
    c.speech_started(0)
    c.speech_stopped(1000, 1000)
    c.generation_finished()
    step = _checked(c.speech_started(2500))
    assert _types(step) == ["input_audio_buffer.speech_started", "output_audio_buffer.cleared"]
    assert step.clear_audio and not step.stop_generation


def test_interrupt_response_false_lets_the_reply_finish() -> None:
    c = _conversation(interrupt_response=False)
    c.speech_started(0)
    c.speech_stopped(1000, 1000)
    step = c.speech_started(2500)
    assert _types(step) == ["input_audio_buffer.speech_started"]
    assert not step.clear_audio and c.responding


def test_next_turn_uses_the_next_line_and_links_items() -> None:
    c = _conversation()
    c.speech_started(0)
    first = c.speech_stopped(1000, 1000)
    c.generation_finished()
    c.playback_finished()
    c.speech_started(5000)
    second = c.speech_stopped(6000, 1000)
    assert second.start_reply is not None and second.start_reply.text == LINES[1]
    assistant = next(e for e in first.events if e["type"] == "response.output_item.added")
    committed = next(e for e in second.events if e["type"] == "input_audio_buffer.committed")
    assert committed["previous_item_id"] == assistant["item"]["id"]


# ---------------------------------------------------------------------- client events
def test_ga_session_update_merges_and_answers_session_updated() -> None:
    c = _conversation()
    step = _client(
        c,
        {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.8}}},
            },
        },
    )
    assert _types(step) == ["session.updated"] and step.session_changed
    session = step.events[0]["session"]
    assert session["instructions"] == "Be brief."
    turn = session["audio"]["input"]["turn_detection"]
    assert turn["threshold"] == 0.8
    assert turn["silence_duration_ms"] == 200  # a new turn_detection takes its defaults
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1"}  # kept
    assert c.turn_detection == turn


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        ({"type": "realtime", "voice": "ash"}, "unknown_parameter", "session.voice"),
        ({"type": "realtime", "model": "gpt-realtime-mini"}, "invalid_value", "session.model"),
    ],
)
def test_bad_ga_session_update_is_an_error_event(
    session: dict[str, Any], code: str, param: str
) -> None:
    c = _conversation()
    before = dict(c.session)
    step = _client(c, {"type": "session.update", "event_id": "evt_9", "session": session})
    assert _types(step) == ["error"]
    error = step.events[0]["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_9")
    assert error["type"] == "invalid_request_error"
    assert c.session == before


def test_beta_session_update_is_flat() -> None:
    c = _conversation("beta")
    step = _client(c, {"type": "session.update", "session": {"voice": "verse"}})
    assert _types(step) == ["session.updated"]
    assert step.events[0]["session"]["voice"] == "verse"
    error = _client(c, {"type": "session.update", "session": {"type": "realtime"}})
    assert error.events[0]["error"]["code"] == "unknown_parameter"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ('["session.update"]', "invalid_event"),
        ('{"event_id": "evt_3"}', "invalid_event"),
        ('{"type": "response.dance", "event_id": "evt_3"}', "invalid_value"),
        ('{"type": "transcription_session.update", "event_id": "evt_3"}', "unsupported_event"),
    ],
)
def test_malformed_or_unknown_client_events(raw: str, code: str) -> None:
    step = _checked(_conversation().client_event(raw))
    assert _types(step) == ["error"]
    assert step.events[0]["error"]["code"] == code
    if code == "invalid_value":
        assert step.events[0]["error"]["param"] == "type"
        assert "'response.cancel'" in step.events[0]["error"]["message"]
    assert step.events[0]["event_id"].startswith("event_")
    if "evt_3" in raw:
        assert step.events[0]["error"]["event_id"] == "evt_3"


def test_response_create_and_client_cancel() -> None:
    c = _conversation()
    created = _client(c, {"type": "response.create", "event_id": "evt_1"})
    assert _types(created)[0] == "response.created" and created.start_reply is not None
    busy = _client(c, {"type": "response.create", "event_id": "evt_2"})
    assert busy.events[0]["error"]["code"] == "conversation_already_has_active_response"
    wrong = _client(c, {"type": "response.cancel", "response_id": "resp_other"})
    assert wrong.events[0]["error"]["code"] == "response_cancel_not_active"
    cancelled = _checked(_client(c, {"type": "response.cancel"}))
    assert _types(cancelled) == GA_CANCEL
    # Generation stops; the audio generated so far plays out (it is not cleared).
    assert cancelled.stop_generation and not cancelled.clear_audio
    done = next(e for e in cancelled.events if e["type"] == "response.done")
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert c.playing == done["response"]["id"]
    again = _client(c, {"type": "response.cancel", "event_id": "evt_4"})
    assert again.events[0]["error"]["code"] == "response_cancel_not_active"
    assert _types(c.playback_finished()) == ["output_audio_buffer.stopped"]


def test_cancel_after_generation_ended_is_not_active() -> None:
    c = _conversation()
    _client(c, {"type": "response.create"})
    c.generation_finished()
    late = _checked(_client(c, {"type": "response.cancel", "event_id": "evt_late"}))
    error = late.events[0]["error"]
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_late")
    assert not late.stop_generation and not late.clear_audio and c.playing is not None


def test_output_audio_buffer_clear_clears_audio_only() -> None:
    c = _conversation()
    _client(c, {"type": "response.create"})
    step = _checked(_client(c, {"type": "output_audio_buffer.clear"}))
    assert _types(step) == ["output_audio_buffer.cleared"]
    assert step.clear_audio and not step.stop_generation
    # The response was not cancelled: generation still ends with a completed response.done.
    assert c.responding
    end = c.generation_finished()
    done = next(e for e in end.events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    assert c.playback_finished().events == []  # cleared audio does not "stop" again
    idle = _client(c, {"type": "output_audio_buffer.clear"})
    assert _types(idle) == ["output_audio_buffer.cleared"] and not idle.clear_audio


def test_transcription_session_transcribes_without_responding() -> None:
    session = transcription_session(
        {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-transcribe"}}},
        },
        session_id="sess_t",
    )
    c = Conversation("ga", session, ids=CountingIds(), reply_lines=LINES)
    _checked(c.opened())
    c.speech_started(0)
    step = c.speech_stopped(1000, 1000)
    assert "response.created" not in _types(step) and step.transcribe is not None


def test_conversation_item_create() -> None:
    c = _conversation()
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    step = _checked(_client(c, {"type": "conversation.item.create", "item": item}))
    assert _types(step) == ["conversation.item.added", "conversation.item.done"]
    stored = step.events[0]["item"]
    assert stored["id"].startswith("item_") and stored["content"] == item["content"]
    bad = _client(c, {"type": "conversation.item.create", "item": {"type": "poem"}})
    assert bad.events[0]["error"]["param"] == "item.type"
    missing = _client(c, {"type": "conversation.item.create"})
    assert missing.events[0]["error"]["code"] == "missing_required_parameter"


def test_beta_disabled_sends_the_error_and_closes() -> None:
    step = _conversation("beta").beta_disabled()
    assert _types(step) == ["error"] and step.close_reason == "beta_api_shape_disabled"
    assert step.events[0]["error"]["code"] == "beta_api_shape_disabled"


# ---------------------------------------------------------------------- every GA client event
def _turn(c: Conversation) -> str:
    """One spoken turn and its transcription; the user item's id."""
    c.speech_started(0)
    step = c.speech_stopped(2000, 2000)
    assert step.transcribe is not None
    c.transcription(step.transcribe)
    return step.transcribe.item_id


def test_every_client_event_of_the_sdk_is_answered_without_unsupported_event() -> None:
    """One valid instance of each GA client event type the SDK models (checked by the
    SDK's own model): none is answered ``unsupported_event`` or ``invalid_value`` on its
    type, as the simulator did for retrieve, delete, truncate, append and commit."""
    c = _conversation()
    user_item = _turn(c)
    reply = next(e for e in c.generation_finished().events if e["type"] == "response.done")
    reply_item = reply["response"]["output"][0]["id"]
    second_user = _turn(c)
    c.generation_finished()
    examples: dict[str, dict[str, Any]] = {
        "session.update": {"session": {"type": "realtime", "instructions": "Be brief."}},
        "input_audio_buffer.append": {"audio": base64.b64encode(bytes(4800)).decode()},
        "input_audio_buffer.commit": {},
        "input_audio_buffer.clear": {},
        "output_audio_buffer.clear": {},
        "conversation.item.create": {
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hi"}],
            }
        },
        "conversation.item.retrieve": {"item_id": user_item},
        "conversation.item.truncate": {
            "item_id": reply_item,
            "content_index": 0,
            "audio_end_ms": 500,
        },
        "conversation.item.delete": {"item_id": second_user},
        "response.create": {},
        "response.cancel": {},
    }
    assert set(examples) == set(SDK_CLIENT_EVENT_TYPES)
    for type_, fields in examples.items():
        event = {"type": type_, "event_id": f"evt_{type_}", **fields}
        validate_client_event(event)
        step = _checked(_client(c, event))
        errors = [e["error"] for e in step.events if e["type"] == "error"]
        assert errors == [], (type_, errors)


def test_retrieve_answers_the_item_with_its_transcript() -> None:
    c = _conversation()
    item_id = _turn(c)
    step = _checked(_client(c, {"type": "conversation.item.retrieve", "item_id": item_id}))
    assert _types(step) == ["conversation.item.retrieved"]
    item = step.events[0]["item"]
    assert (item["id"], item["role"], item["type"]) == (item_id, "user", "message")
    assert item["content"][0]["transcript"] == "(candidate spoke for 2.0 s)"
    # The reply too, complete once generated.
    done = next(e for e in c.generation_finished().events if e["type"] == "response.done")
    reply = done["response"]["output"][0]
    answered = _checked(_client(c, {"type": "conversation.item.retrieve", "item_id": reply["id"]}))
    assert answered.events[0]["item"] == reply


def test_retrieve_delete_truncate_of_an_unknown_item_are_errors_naming_it() -> None:
    c = _conversation()
    for type_, extra, code in (
        ("conversation.item.retrieve", {}, "item_not_found"),
        ("conversation.item.delete", {}, "item_delete_invalid_item_id"),
        (
            "conversation.item.truncate",
            {"content_index": 0, "audio_end_ms": 10},
            "item_truncate_invalid_item_id",
        ),
    ):
        event = {"type": type_, "event_id": "evt_9", "item_id": "item_nope", **extra}
        step = _checked(_client(c, event))
        error = step.events[0]["error"]
        assert (error["code"], error["param"], error["event_id"]) == (code, "item_id", "evt_9")
        assert error["message"] == "Item with item_id not found: item_nope"
    missing = _client(c, {"type": "conversation.item.retrieve"})
    assert missing.events[0]["error"]["code"] == "missing_required_parameter"


def test_delete_removes_the_item_and_links_the_next_one_to_what_is_left() -> None:
    c = _conversation()
    first = _turn(c)
    c.generation_finished()
    c.playback_finished()
    second = _turn(c)
    step = _checked(_client(c, {"type": "conversation.item.delete", "item_id": second}))
    assert step.events[0] == {
        **step.events[0],
        "type": "conversation.item.deleted",
        "item_id": second,
    }
    gone = _client(c, {"type": "conversation.item.retrieve", "item_id": second})
    assert gone.events[0]["error"]["code"] == "item_not_found"
    kept = _client(c, {"type": "conversation.item.retrieve", "item_id": first})
    assert _types(kept) == ["conversation.item.retrieved"]


def test_truncate_cuts_a_reply_and_drops_its_transcript() -> None:
    c = _conversation()
    _turn(c)
    done = next(e for e in c.generation_finished().events if e["type"] == "response.done")
    reply = done["response"]["output"][0]["id"]
    event = {
        "type": "conversation.item.truncate",
        "item_id": reply,
        "content_index": 0,
        "audio_end_ms": 1500,
    }
    step = _checked(_client(c, event))
    assert _types(step) == ["conversation.item.truncated"]
    assert (step.events[0]["item_id"], step.events[0]["audio_end_ms"]) == (reply, 1500)
    item = _client(c, {"type": "conversation.item.retrieve", "item_id": reply}).events[0]["item"]
    assert item["content"][0]["transcript"] is None
    # A user item has no reply audio to cut.
    user = _turn(c)
    wrong = _client(c, {**event, "item_id": user})
    assert wrong.events[0]["error"]["param"] == "content_index"


def test_append_then_commit_makes_a_user_item_without_a_response() -> None:
    c = _conversation()
    # 200 ms of PCM16 at 24 kHz (the session's input format).
    audio = base64.b64encode(bytes(48 * 200)).decode()
    assert _client(c, {"type": "input_audio_buffer.append", "audio": audio}).events == []
    step = _checked(_client(c, {"type": "input_audio_buffer.commit"}))
    assert _types(step) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert step.transcribe is not None and step.transcribe.spoken_ms == 200
    assert step.start_reply is None
    # The buffer is empty again: a second commit is refused, as the service refuses it.
    empty = _checked(_client(c, {"type": "input_audio_buffer.commit", "event_id": "evt_c"}))
    error = empty.events[0]["error"]
    assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_c")
    assert "Expected at least 100ms of audio, but buffer only has 0.00ms" in error["message"]


def test_a_commit_of_less_than_100_ms_or_a_cleared_buffer_is_refused() -> None:
    c = _conversation()
    short = base64.b64encode(bytes(48 * 50)).decode()
    _client(c, {"type": "input_audio_buffer.append", "audio": short})
    refused = _client(c, {"type": "input_audio_buffer.commit"})
    assert "only has 50.00ms" in refused.events[0]["error"]["message"]
    _client(c, {"type": "input_audio_buffer.append", "audio": short * 3})
    _client(c, {"type": "input_audio_buffer.clear"})
    cleared = _client(c, {"type": "input_audio_buffer.commit"})
    assert cleared.events[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    bad = _checked(_client(c, {"type": "input_audio_buffer.append", "audio": "not base64!"}))
    assert (bad.events[0]["error"]["code"], bad.events[0]["error"]["param"]) == (
        "invalid_value",
        "audio",
    )
