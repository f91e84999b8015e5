"""Transcript events: what the recorder keeps of the upstream's server events, and the
``transcript.jsonl`` lines finalisation builds from them.

The candidate's words come from the input transcription
(``conversation.item.input_audio_transcription.delta`` / ``.completed``), timed by the
upstream's voice-activity events for the same item (``input_audio_buffer.speech_started``
/ ``speech_stopped``). The interviewer's words come from the output transcript
(GA ``response.output_audio_transcript.delta`` / ``.done``; beta
``response.audio_transcript.*``), timed by the reply's voice where the upstream says when it
played (WebRTC's ``output_audio_buffer.started`` to ``.stopped``, or ``.cleared`` when the
candidate cut it short, by the response's id), else from the first delta to ``.done``. The
model writes a reply's transcript ahead of its voice, so the text of a reply cut short holds
words nobody heard: such a line says ``interrupted``. Offsets are the relay's arrival times on
the session clock, in seconds from the start of the audio.
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
# The reply's voice, by the response's id (no item id): type -> what.
AUDIO_EVENT_TYPES: dict[str, str] = {
    "output_audio_buffer.started": "audio_start",
    "output_audio_buffer.stopped": "audio_stop",
    "output_audio_buffer.cleared": "audio_cleared",
}
MAX_TEXT = 20000


def might_matter(message: str | bytes) -> bool:
    """A cheap pre-filter before parsing (most events are neither speech nor transcript)."""
    return isinstance(message, str) and (
        "transcript" in message or "speech_st" in message or "output_audio_buffer" in message
    )


def extract(message: str, offset: float) -> dict[str, Any] | None:
    """The transcript record of one server event, or None when it is not one."""
    try:
        event = json.loads(message)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    response_id = event.get("response_id")
    if isinstance(kind, str) and kind in AUDIO_EVENT_TYPES:
        if not isinstance(response_id, str):
            return None
        return {
            "kind": "transcript",
            "speaker": INTERVIEWER,
            "what": AUDIO_EVENT_TYPES[kind],
            "response_id": response_id[:200],
            "offset": round(offset, 4),
        }
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
    if isinstance(response_id, str):
        record["response_id"] = response_id[:200]
    if isinstance(text, str):
        record["text"] = text[:MAX_TEXT]
    return record


def build_lines(records: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """One line per item (both speakers), ordered by start; offsets relative to ``start``
    and kept inside ``[0, end - start]``."""
    # When each reply's voice started and stopped (or was cleared), by response id.
    voices: dict[str, dict[str, float]] = {}
    for rec in records:
        if str(rec.get("what", "")).startswith("audio_"):
            voices.setdefault(str(rec.get("response_id")), {}).setdefault(
                rec["what"], float(rec["offset"])
            )
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        if "item_id" not in rec:
            continue
        key = (rec["speaker"], rec["item_id"])
        item = items.setdefault(
            key,
            {"first": None, "start": None, "stop": None, "done": None, "deltas": [], "text": None},
        )
        if "response_id" in rec:
            item["response_id"] = rec["response_id"]
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
        voice = voices.get(item.get("response_id", ""), {})
        interrupted = False
        if "audio_start" in voice:
            begin = voice["audio_start"]
            cut, stop = voice.get("audio_cleared"), voice.get("audio_stop")
            # Cleared before it finished playing (a clear after .stopped, at teardown, say,
            # cut nothing).
            interrupted = cut is not None and (stop is None or cut < stop)
            finish = cut if interrupted else (stop if stop is not None else finish)
        if finish is None or finish < begin:
            finish = begin
        line: dict[str, Any] = {
            "speaker": speaker,
            "item_id": item_id,
            "start": round(min(span, max(0.0, begin - start)), 3),
            "end": round(min(span, max(0.0, finish - start)), 3),
            "text": text,
        }
        if interrupted:
            line["interrupted"] = True
        lines.append(line)
    lines.sort(key=lambda line: (line["start"], line["speaker"]))
    return lines
