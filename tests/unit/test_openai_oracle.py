"""The SDK oracle is strict enough to catch the mismatches it exists for."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.openai_oracle import (
    OracleMismatch,
    validate_client_event,
    validate_client_secret_body,
    validate_server_event,
)

PART_ADDED: dict[str, Any] = {
    "type": "response.content_part.added",
    "event_id": "event_1",
    "response_id": "resp_1",
    "item_id": "item_1",
    "output_index": 0,
    "content_index": 0,
    "part": {"type": "audio", "transcript": ""},
}


def test_a_correct_event_passes() -> None:
    assert validate_server_event(PART_ADDED).part.type == "audio"


@pytest.mark.parametrize(
    "event",
    [
        {**PART_ADDED, "part": {"type": "output_audio", "transcript": ""}},  # wrong literal
        {**PART_ADDED, "surprise": 1},  # a field the SDK does not know
        {**PART_ADDED, "type": "response.content_part.appended"},  # no such event
        {k: v for k, v in PART_ADDED.items() if k != "event_id"},  # a required field missing
    ],
)
def test_mismatches_are_caught(event: dict[str, Any]) -> None:
    with pytest.raises(OracleMismatch):
        validate_server_event(event)


def test_client_events_and_bodies() -> None:
    validate_client_event({"type": "response.cancel"})
    validate_client_event({"type": "output_audio_buffer.clear", "event_id": "evt_1"})
    with pytest.raises(OracleMismatch):
        validate_client_event({"type": "response.cancel", "reason": "x"})
    validate_client_secret_body({"session": {"type": "realtime", "model": "gpt-realtime-2.1"}})
    with pytest.raises(OracleMismatch):
        validate_client_secret_body({"type": "realtime", "session": {"type": "realtime"}})
    with pytest.raises(OracleMismatch):
        validate_client_secret_body({"session": {"type": "realtime", "voice": "marin"}})
