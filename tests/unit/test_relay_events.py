"""The relay's own events to the page, and its view of the conversation (pure logic)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from relay.media import relay_events
from relay.media.bridge.clock import InterviewClock
from relay.media.conversation import ConversationLog, TranscriptItem, seed_events
from relay.media.relay_events import TimeLeftSchedule, page_reason


def announced(total_s: float, step_s: float = 0.25) -> list[int]:
    """The marks a supervisor ticking every ``step_s`` announces, as seconds left."""
    schedule = TimeLeftSchedule(total_s)
    out = []
    remaining = total_s
    while remaining > 0:
        remaining -= step_s
        if schedule.due(remaining):
            out.append(relay_events.whole_seconds(remaining))
    return out


def test_time_left_each_whole_minute_then_at_30_and_10_seconds() -> None:
    assert announced(185) == [180, 120, 60, 30, 10]
    assert announced(60) == [30, 10]
    assert announced(45) == [30, 10]
    assert announced(9) == []


def test_marks_passed_at_once_are_announced_once() -> None:
    schedule = TimeLeftSchedule(200)
    assert schedule.due(5) is True  # 180, 120, 60, 30 and 10 all passed: one announcement
    assert schedule.due(1) is False
    assert schedule.next_mark() is None


@pytest.mark.parametrize(
    ("end_reason", "page"),
    [
        ("max_duration", "time_up"),
        ("operator_hangup", "operator"),
        ("revoked", "revoked"),
        ("relay_shutdown", "relay_shutdown"),
        ("upstream_channel_closed", "upstream_error"),
        ("upstream_disconnected", "upstream_error"),
        ("idle_media", "idle"),
        ("connect_timeout", "connect_timeout"),
        ("browser_gone", "browser_gone"),
        ("cancelled", "cancelled"),
        ("event_flood", "event_flood"),
        ("internal_error", "internal_error"),
        ("something_new", "internal_error"),
        ("hangup", None),
        ("browser_channel_closed", None),
        ("taken_over", None),
    ],
)
def test_every_server_side_end_has_a_page_reason_and_a_message(
    end_reason: str, page: str | None
) -> None:
    assert page_reason(end_reason) == page
    if page is not None:
        event = relay_events.ending(page)
        assert event["type"] == "relay.session.ending" and event["reason"] == page
        assert event["message"] and event["message"] == relay_events.MESSAGES[page]


def test_the_clock_leaves_out_the_time_away_and_keeps_earlier_parts() -> None:
    clock = InterviewClock(charged_before_s=100.0)
    assert clock.used(5.0) == 100.0  # not started: what earlier parts charged
    clock.start(10.0)
    clock.pause(15.0)
    assert clock.used(30.0) == 105.0
    assert clock.resume(40.0) == 25.0
    assert clock.used(50.0) == 115.0
    clock.stop(60.0)
    assert clock.used(99.0) == 125.0


def replying(log: ConversationLog) -> bool:
    # A call: mypy would keep ``log.replying`` narrowed across the feeding calls.
    return log.replying


def _event(**fields: object) -> str:
    return json.dumps(fields)


def test_the_conversation_keeps_items_in_conversation_order_and_the_reply_state() -> None:
    now = [0.0]
    finished: list[TranscriptItem] = []
    overs: list[bool] = []
    log = ConversationLog(
        clock=lambda: now[0], on_item=finished.append, on_reply_over=lambda: overs.append(True)
    )
    log.on_upstream_event(_event(type="input_audio_buffer.committed", item_id="u1"))
    now[0] = 2.0
    log.on_upstream_event(_event(type="response.created", response={"id": "r1"}))
    log.on_upstream_event(_event(type="response.output_item.added", item={"id": "a1"}))
    log.on_upstream_event(_event(type="output_audio_buffer.started", response_id="r1"))
    assert replying(log)
    # The reply's transcript arrives before the candidate's (transcription is slower).
    log.on_upstream_event(
        _event(type="response.output_audio_transcript.done", item_id="a1", transcript="Why?")
    )
    log.on_upstream_event(
        _event(
            type="conversation.item.input_audio_transcription.completed",
            item_id="u1",
            transcript=" I wrote a parser. ",
        )
    )
    log.on_upstream_event(_event(type="response.done", response={"id": "r1"}))
    assert replying(log) and overs == []  # its audio still plays
    log.on_upstream_event(_event(type="output_audio_buffer.stopped", response_id="r1"))
    assert not replying(log) and overs == [True]
    assert [(i.role, i.text, i.at_s, i.position) for i in log.items] == [
        ("user", "I wrote a parser.", 0.0, 0),
        ("assistant", "Why?", 2.0, 1),
    ]
    assert [i.role for i in finished] == ["assistant", "user"]  # as they finished


def test_a_seeded_conversation_continues_its_positions_and_seeds_text_items() -> None:
    items = [TranscriptItem("user", "Hello", 1.0, 0), TranscriptItem("assistant", "Hi", 2.0, 1)]
    log = ConversationLog(clock=lambda: 9.0, items=items)
    log.on_upstream_event(
        _event(type="response.output_audio_transcript.done", item_id="a9", transcript="Next?")
    )
    assert [i.position for i in log.items] == [0, 1, 2]
    ga = seed_events(items, "ga", note="go on")
    assert [e["item"]["role"] for e in ga] == ["user", "assistant", "system"]
    kinds = [e["item"]["content"][0]["type"] for e in ga]
    assert kinds == ["input_text", "output_text", "input_text"]
    beta = seed_events(items, "beta", note=None)
    assert [e["item"]["content"][0]["type"] for e in beta] == ["input_text", "text"]


def test_the_page_has_its_own_message_for_every_reason_the_relay_announces() -> None:
    # Otherwise the page falls back to the relay's generic wording for that end.
    source = (Path(__file__).resolve().parents[2] / "static" / "page-messages.js").read_text()
    start = source.index("export const END_MESSAGES = {")
    block = source[start : source.index("};", start)]
    on_the_page = set(re.findall(r"^\s+(\w+):", block, re.MULTILINE))
    assert set(relay_events.PAGE_REASONS.values()) <= on_the_page
    assert set(relay_events.MESSAGES) <= on_the_page


def test_a_session_ended_answer_carries_the_ending_the_page_may_have_missed() -> None:
    """The 410 to a resume says why, as ``relay.session.ending`` would have (a page whose
    data channel closed before that event arrived shows the right end); nothing for an
    end the relay did not decide."""
    from relay.media.manager import session_ended_error

    operator = session_ended_error("operator_hangup")
    assert operator.status == 410 and operator.details["end_reason"] == "operator_hangup"
    assert operator.details["ending"] == {
        "reason": "operator",
        "message": relay_events.MESSAGES["operator"],
    }
    assert "ending" not in session_ended_error("hangup").details
    assert "ending" not in session_ended_error(None).details
