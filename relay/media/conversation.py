"""The relay's own view of the conversation, from the upstream's server events.

``ConversationLog`` sees every upstream server event (unfiltered, like the recorder) and
keeps two things:

* whether the interviewer is replying: a response being generated (``response.created`` →
  ``response.done``) or its audio still playing (``output_audio_buffer.started`` →
  ``.stopped`` / ``.cleared``). The bridge cancels it when the browser's leg drops, lets it
  finish at the interview's limit, and asks for the wrap-up only once it is done;
* the transcript as text items (``TranscriptItem``): the candidate's from the input
  transcription (``conversation.item.input_audio_transcription.completed``), the
  interviewer's from the output transcript (GA ``response.output_audio_transcript.done``,
  beta ``response.audio_transcript.done``). Items keep their place in the conversation
  (the order in which their ids were first seen: a candidate's transcription often
  arrives after the reply began). A resumed page is given them back
  (``relay.transcript``); a member taking the session over (or a rejoin of the interview in
  a new session) seeds a new upstream session with them.

A substring pre-filter skips the events that matter to neither (audio deltas, rate
limits, ...) before any parsing. Pure logic: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "assistant"]

MAX_TEXT_CHARS = 20000
_MARKERS = ("response.", "audio_buffer.", "transcription.completed", "conversation.item.")
_USER_DONE = "conversation.item.input_audio_transcription.completed"
_ASSISTANT_DONE = frozenset(
    {"response.output_audio_transcript.done", "response.audio_transcript.done"}
)
# Events that name an item in conversation order before its text is known.
_ITEM_SEEN = frozenset(
    {
        "input_audio_buffer.committed",
        "input_audio_buffer.speech_started",
        "conversation.item.added",
        "conversation.item.created",
        "response.output_item.added",
    }
)


@dataclass(frozen=True)
class TranscriptItem:
    """One finished utterance: who, what, and when (seconds into the interview)."""

    role: Role
    text: str
    at_s: float
    # Its place in the conversation (unique per session, first seen first).
    position: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "at_s": round(self.at_s, 1)}


class ConversationLog:
    """One interview's transcript and reply state (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        items: Iterable[TranscriptItem] = (),
        on_item: Callable[[TranscriptItem], None] | None = None,
        on_reply_over: Callable[[], None] | None = None,
    ) -> None:
        # Seconds into the interview, for ``at_s``.
        self._clock = clock
        self._items: list[TranscriptItem] = sorted(items, key=lambda i: i.position)
        self._on_item = on_item
        self._on_reply_over = on_reply_over
        # item id → (position, when first seen)
        self._seen: dict[str, tuple[int, float]] = {}
        self._next_position = max((i.position for i in self._items), default=-1) + 1
        self._done: set[str] = set()
        self.generating: str | None = None
        self.playing: str | None = None

    # ------------------------------------------------------------------ reading
    @property
    def items(self) -> list[TranscriptItem]:
        """The finished items, in conversation order."""
        return list(self._items)

    @property
    def replying(self) -> bool:
        """A reply is being generated or its audio is still playing."""
        return self.generating is not None or self.playing is not None

    # ------------------------------------------------------------------ feeding
    def upstream_gone(self) -> None:
        """The upstream's leg was lost: its reply in progress is over (cut), and no event
        of it will say so."""
        self.generating = None
        self.playing = None

    def on_upstream_event(self, message: str | bytes) -> None:
        if not isinstance(message, str) or not any(m in message for m in _MARKERS):
            return
        try:
            event = json.loads(message)
        except ValueError:
            return
        if isinstance(event, dict):
            self._apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.created":
            response = event.get("response")
            rid = response.get("id") if isinstance(response, dict) else None
            self.generating = rid if isinstance(rid, str) else "response"
        elif kind == "response.done":
            was = self.replying
            self.generating = None
            if was and not self.replying:
                self._reply_over()
        elif kind == "output_audio_buffer.started":
            rid = event.get("response_id")
            self.playing = rid if isinstance(rid, str) else "response"
        elif kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
            was = self.replying
            self.playing = None
            if was and not self.replying:
                self._reply_over()
        elif kind == _USER_DONE:
            self._finished(event, "user", event.get("transcript"))
        elif kind in _ASSISTANT_DONE:
            self._finished(event, "assistant", event.get("transcript"))
        elif kind in _ITEM_SEEN:
            item = event.get("item")
            item_id = item.get("id") if isinstance(item, dict) else event.get("item_id")
            if isinstance(item_id, str):
                self._see(item_id)

    def _reply_over(self) -> None:
        if self._on_reply_over is not None:
            self._on_reply_over()

    def _see(self, item_id: str) -> tuple[int, float]:
        seen = self._seen.get(item_id)
        if seen is None:
            seen = (self._next_position, self._clock())
            self._next_position += 1
            self._seen[item_id] = seen
        return seen

    def _finished(self, event: dict[str, Any], role: Role, text: Any) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id in self._done:
            return
        if not isinstance(text, str) or not text.strip():
            return
        self._done.add(item_id)
        position, at_s = self._see(item_id)
        item = TranscriptItem(role, text.strip()[:MAX_TEXT_CHARS], at_s, position)
        self._items.append(item)
        self._items.sort(key=lambda i: i.position)
        if self._on_item is not None:
            self._on_item(item)


def seed_events(
    items: Iterable[TranscriptItem], dialect: str, *, note: str | None
) -> list[dict[str, Any]]:
    """``conversation.item.create`` events that give a new upstream session the
    conversation so far as text items (then ``note`` as a system message, if any)."""
    out: list[dict[str, Any]] = []
    assistant_text = "output_text" if dialect == "ga" else "text"
    for item in items:
        kind = "input_text" if item.role == "user" else assistant_text
        out.append(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": item.role,
                    "content": [{"type": kind, "text": item.text}],
                },
            }
        )
    if note:
        out.append(system_message(note))
    return out


def system_message(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": text}],
        },
    }
