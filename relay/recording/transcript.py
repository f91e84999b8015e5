"""Transcript events: what the recorder keeps of the upstream's server events, and the
``transcript.jsonl`` lines finalisation builds from them.

The candidate's words come from the input transcription
(``conversation.item.input_audio_transcription.delta`` / ``.completed``), timed by the
upstream's voice-activity events for the same item (``input_audio_buffer.speech_started``
/ ``speech_stopped``). The interviewer's words come from the output transcript
(GA ``response.output_audio_transcript.delta`` / ``.done``; beta
``response.audio_transcript.*``), timed from the first delta to ``.done``. Offsets are the
relay's arrival times on the session clock, in seconds from the start of the audio.
"""

from __future__ import annotations

import json
from typing import Any

CANDIDATE = "candidate"
INTERVIEWER = "interviewer"

# type -> (speaker, what)
EVENT_TYPES: dict[str, tuple[str, str]] = {
    "input_audio_buffer.speech_started": (CANDIDATE, "start"),
    "input_audio_buffer.speech_stopped": (CANDIDATE, "stop"),
    "conversation.item.input_audio_transcription.delta": (CANDIDATE, "delta"),
    "conversation.item.input_audio_transcription.completed": (CANDIDATE, "done"),
    "response.output_audio_transcript.delta": (INTERVIEWER, "delta"),
    "response.output_audio_transcript.done": (INTERVIEWER, "done"),
    "response.audio_transcript.delta": (INTERVIEWER, "delta"),
    "response.audio_transcript.done": (INTERVIEWER, "done"),
}
MAX_TEXT = 20000


def might_matter(message: str | bytes) -> bool:
    """A cheap pre-filter before parsing (most events are neither speech nor transcript)."""
    return isinstance(message, str) and ("transcript" in message or "speech_st" in message)


def extract(message: str, offset: float) -> dict[str, Any] | None:
    """The transcript record of one server event, or None when it is not one."""
    try:
        event = json.loads(message)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        return None
    speaker, what = EVENT_TYPES[kind]
    item_id = event.get("item_id")
    if not isinstance(item_id, str):
        return None
    text = event.get("delta") if what == "delta" else event.get("transcript")
    record: dict[str, Any] = {
        "kind": "transcript",
        "speaker": speaker,
        "what": what,
        "item_id": item_id[:200],
        "offset": round(offset, 4),
    }
    if isinstance(text, str):
        record["text"] = text[:MAX_TEXT]
    return record


def build_lines(records: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """One line per item (both speakers), ordered by start; offsets relative to ``start``
    and kept inside ``[0, end - start]``."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        key = (rec["speaker"], rec["item_id"])
        item = items.setdefault(
            key,
            {"first": None, "start": None, "stop": None, "done": None, "deltas": [], "text": None},
        )
        offset = float(rec["offset"])
        item["first"] = offset if item["first"] is None else min(item["first"], offset)
        what = rec["what"]
        if what == "start":
            item["start"] = offset
        elif what == "stop":
            item["stop"] = offset
        elif what == "delta":
            item["deltas"].append(rec.get("text", ""))
        elif what == "done":
            item["done"] = offset
            item["text"] = rec.get("text")
    span = max(0.0, end - start)
    lines: list[dict[str, Any]] = []
    for (speaker, item_id), item in items.items():
        text = item["text"] if item["text"] is not None else "".join(item["deltas"])
        if not text:
            continue
        begin = item["start"] if item["start"] is not None else item["first"]
        finish = item["stop"] if item["stop"] is not None else item["done"]
        if finish is None or finish < begin:
            finish = begin
        lines.append(
            {
                "speaker": speaker,
                "item_id": item_id,
                "start": round(min(span, max(0.0, begin - start)), 3),
                "end": round(min(span, max(0.0, finish - start)), 3),
                "text": text,
            }
        )
    lines.sort(key=lambda line: (line["start"], line["speaker"]))
    return lines
