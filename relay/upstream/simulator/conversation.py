"""The Realtime event sequence of one call (pure logic, no I/O, no clocks).

The peer feeds it what happens (the data channel opened, the VAD found speech start/stop,
generation of the reply progressed or ended, playback of the reply audio ended, a client
event arrived) and sends the events it returns, in order. Names follow the call's dialect:
GA (``response.output_audio_transcript.*``, ``conversation.item.added/done``) or beta
(``response.audio_transcript.*``, ``conversation.item.created``).

As on the real service, a reply has two clocks. *Generation* (faster than real time) drives
the transcript deltas and ends with ``response.done``; *playback* of the generated audio
over WebRTC ends later with ``output_audio_buffer.stopped``. ``response.cancel`` stops
generation only (audio already generated still plays out; after ``response.done`` it is
answered ``response_cancel_not_active``); ``output_audio_buffer.clear`` stops playback only.
A barge-in does both.

It keeps the conversation's items (the user's turns with their transcripts once
transcribed, the replies, items created by the client), so that every GA client event is
answered as the service answers it: ``conversation.item.retrieve`` / ``.delete`` /
``.truncate`` (the Agents SDK retrieves each user item once it is transcribed), and
``input_audio_buffer.append`` / ``.commit`` (audio as events: a commit of less than 100 ms
is refused as ``input_audio_buffer_commit_empty``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.upstream.simulator.errors import BETA_DISABLED_MESSAGE, SimHttpError
from relay.upstream.simulator.ids import IdFactory
from relay.upstream.simulator.session_config import (
    Dialect,
    input_bytes_per_ms,
    is_transcription,
    merge_beta,
    merge_ga,
    transcription_of,
    turn_detection_of,
    voice_of,
)
from relay.upstream.simulator.validation import validate_beta_session, validate_ga_session

Event = dict[str, Any]

_NAMES: dict[Dialect, dict[str, str]] = {
    "ga": {
        "audio_done": "response.output_audio.done",
        "transcript_delta": "response.output_audio_transcript.delta",
        "transcript_done": "response.output_audio_transcript.done",
    },
    "beta": {
        "audio_done": "response.audio.done",
        "transcript_delta": "response.audio_transcript.delta",
        "transcript_done": "response.audio_transcript.done",
    },
}

# Client events that exist in an API shape but are not simulated (answered with an error):
# the beta transcription sessions' update (GA updates every session with session.update).
_NOT_SIMULATED = frozenset({"transcription_session.update"})
_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output"})
# Every client event type of the GA API (the "Supported values" of an invalid ``type``).
CLIENT_EVENT_TYPES: tuple[str, ...] = (
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "input_audio_buffer.append",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "output_audio_buffer.clear",
    "response.cancel",
    "response.create",
    "session.update",
)
# Transcription models that send the whole transcript as one delta (not word by word).
_ONE_DELTA_TRANSCRIBERS = frozenset({"whisper-1"})
# Items of the conversation remembered for retrieve/delete/truncate, oldest forgotten first
# (bounded: a long local run must not grow without end).
MAX_ITEMS_KEPT = 512
# The least appended audio a commit accepts (as the real service: "Expected at least 100ms").
MIN_COMMIT_MS = 100.0


@dataclass(frozen=True)
class ReplyPlan:
    """Speak ``text`` as the audio of ``response_id``."""

    response_id: str
    text: str


@dataclass(frozen=True)
class TranscriptionPlan:
    """Transcribe the committed user item ``item_id`` a little later (asynchronously)."""

    item_id: str
    spoken_ms: int


@dataclass
class Step:
    """Events to send, in order, and what the peer must do with the reply audio."""

    events: list[Event] = field(default_factory=list)
    # Start generating and playing a reply.
    start_reply: ReplyPlan | None = None
    # Generation stopped (cancelled): what was generated still plays out.
    stop_generation: bool = False
    # Playback stops now (the output audio buffer is cleared).
    clear_audio: bool = False
    # Deliver ``Conversation.transcription(plan)`` later.
    transcribe: TranscriptionPlan | None = None
    session_changed: bool = False
    # End the call after sending the events, for this reason.
    close_reason: str | None = None

    def extend(self, other: Step) -> Step:
        self.events.extend(other.events)
        self.start_reply = other.start_reply or self.start_reply
        self.stop_generation = self.stop_generation or other.stop_generation
        self.clear_audio = self.clear_audio or other.clear_audio
        self.transcribe = other.transcribe or self.transcribe
        self.session_changed = self.session_changed or other.session_changed
        self.close_reason = self.close_reason or other.close_reason
        return self


@dataclass
class _Response:
    id: str
    item_id: str
    text: str
    words: list[str]
    previous_item_id: str | None = None
    words_sent: int = 0

    @property
    def transcript_so_far(self) -> str:
        return " ".join(self.words[: self.words_sent])


class Conversation:
    def __init__(
        self,
        dialect: Dialect,
        session: Mapping[str, Any],
        *,
        ids: IdFactory,
        reply_lines: Sequence[str],
    ) -> None:
        if not reply_lines:
            raise ValueError("reply_lines must not be empty")
        self.dialect = dialect
        self.session: dict[str, Any] = dict(session)
        self._ids = ids
        self._lines = list(reply_lines)
        self._next_line = 0
        self._names = _NAMES[dialect]
        self.conversation_id = ids("conv")
        self._last_item_id: str | None = None
        self._speech_item_id: str | None = None
        # The response being generated, and the one whose audio is playing (often the same;
        # after response.done the audio still plays).
        self._response: _Response | None = None
        self._playing: str | None = None
        self._last_response_id: str | None = None
        # Every item of the conversation, in order (the control API reports how many, so a
        # test tells a continued conversation from a new one), and how many of them came
        # from ``conversation.item.create`` (e.g. a conversation seeded with its past).
        self.item_ids: list[str] = []
        self.items_created = 0
        # The conversation's items by id, in order (what retrieve answers).
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Audio appended with input_audio_buffer.append and not committed yet, in ms.
        self._appended_ms = 0.0

    # -- state -------------------------------------------------------------------------

    @property
    def turn_detection(self) -> Mapping[str, Any] | None:
        return turn_detection_of(self.session, self.dialect)

    @property
    def responding(self) -> bool:
        return self._response is not None

    @property
    def response_id(self) -> str | None:
        return self._response.id if self._response else None

    @property
    def playing(self) -> str | None:
        """The response whose audio is in the output buffer, if any."""
        return self._playing

    def _event(self, type_: str, **fields: Any) -> Event:
        return {"type": type_, "event_id": self._ids("event"), **fields}

    # -- session -----------------------------------------------------------------------

    def opened(self) -> Step:
        """The data channel opened: ``session.created`` comes first."""
        return Step([self._event("session.created", session=self.session)])

    def beta_disabled(self) -> Step:
        """The beta shape was switched off under an open beta call: error, then close."""
        error = self._error_event(
            "beta_api_shape_disabled", BETA_DISABLED_MESSAGE, param=None, event_id=None
        )
        return Step(
            [error],
            stop_generation=True,
            clear_audio=True,
            close_reason="beta_api_shape_disabled",
        )

    # -- input audio -------------------------------------------------------------------

    def speech_started(self, audio_start_ms: int) -> Step:
        self._speech_item_id = self._ids("item")
        step = Step(
            [
                self._event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=audio_start_ms,
                    item_id=self._speech_item_id,
                )
            ]
        )
        turn = self.turn_detection or {}
        if turn.get("interrupt_response", True):
            if self._response is not None:
                step.extend(self._cancel("turn_detected"))
            if self._playing is not None:
                step.extend(self._clear_audio())
        return step

    def speech_stopped(self, audio_end_ms: int, spoken_ms: int) -> Step:
        item_id = self._speech_item_id or self._ids("item")
        self._speech_item_id = None
        previous = self._last_item_id
        item = self._user_audio_item(item_id)
        step = Step(
            [
                self._event(
                    "input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id
                ),
                self._event(
                    "input_audio_buffer.committed", previous_item_id=previous, item_id=item_id
                ),
            ]
        )
        step.events.extend(self._item_created(item, previous))
        self._last_item_id = item_id
        self.item_ids.append(item_id)
        self._remember(item)
        if transcription_of(self.session, self.dialect) is not None:
            step.transcribe = TranscriptionPlan(item_id, spoken_ms)
        turn = self.turn_detection or {}
        wants_reply = turn.get("create_response", True) and not is_transcription(self.session)
        if wants_reply and self._response is None:
            step.extend(self.start_response())
        return step

    def _item_created(self, item: Mapping[str, Any], previous: str | None) -> list[Event]:
        """GA: ``conversation.item.added`` then ``.done`` (no ``.created``); beta: ``.created``."""
        if self.dialect == "beta":
            return [
                self._event("conversation.item.created", previous_item_id=previous, item=dict(item))
            ]
        return [
            self._event("conversation.item.added", previous_item_id=previous, item=dict(item)),
            self._event("conversation.item.done", previous_item_id=previous, item=dict(item)),
        ]

    def transcription(self, plan: TranscriptionPlan) -> Step:
        """The input transcription of a committed user item: deltas, then ``.completed``."""
        transcript = f"(candidate spoke for {plan.spoken_ms / 1000:.1f} s)"
        model = (transcription_of(self.session, self.dialect) or {}).get("model")
        words = transcript.split()
        pieces = (
            [transcript]
            if model in _ONE_DELTA_TRANSCRIBERS
            else [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        )
        step = Step(
            [
                self._event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=plan.item_id,
                    content_index=0,
                    delta=piece,
                )
                for piece in pieces
            ]
        )
        audio_tokens = max(1, plan.spoken_ms // 100)
        text_tokens = len(words)
        fields: dict[str, Any] = {
            "item_id": plan.item_id,
            "content_index": 0,
            "transcript": transcript,
            # Required by the SDK's models of both dialects.
            "usage": {
                "type": "tokens",
                "total_tokens": audio_tokens + text_tokens,
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": text_tokens,
            },
        }
        step.events.append(
            self._event("conversation.item.input_audio_transcription.completed", **fields)
        )
        stored = self._items.get(plan.item_id)
        if stored is not None and stored.get("content"):
            stored["content"][0]["transcript"] = transcript
        return step

    # -- responses ---------------------------------------------------------------------

    def start_response(self) -> Step:
        """``response.created`` … ``output_audio_buffer.started``; the peer starts the audio."""
        # Audio of an earlier response still playing ends here (the new reply replaces it).
        step = self.playback_finished()
        text = self._lines[self._next_line % len(self._lines)]
        self._next_line += 1
        response = _Response(
            self._ids("resp"), self._ids("item"), text, text.split(), self._last_item_id
        )
        self._response = response
        self._playing = response.id
        self._last_response_id = response.id
        item = self._assistant_item(response, "in_progress", content=[])
        previous = self._last_item_id
        self._last_item_id = response.item_id
        self.item_ids.append(response.item_id)
        self._remember(item)
        added_type = (
            "conversation.item.added" if self.dialect == "ga" else "conversation.item.created"
        )
        events = [
            self._event(
                "response.created", response=self._response_object(response, "in_progress")
            ),
            self._event(
                "response.output_item.added", response_id=response.id, output_index=0, item=item
            ),
            self._event(added_type, previous_item_id=previous, item=item),
            self._event(
                "response.content_part.added",
                response_id=response.id,
                item_id=response.item_id,
                output_index=0,
                content_index=0,
                part={"type": "audio", "transcript": ""},
            ),
            self._event("output_audio_buffer.started", response_id=response.id),
        ]
        step.events.extend(events)
        step.start_reply = ReplyPlan(response.id, text)
        return step

    def generation_progress(self, words_generated: int) -> Step:
        """Generation reached word ``words_generated``: transcript deltas up to it."""
        response = self._response
        step = Step()
        if response is None:
            return step
        while response.words_sent < min(words_generated, len(response.words)):
            word = response.words[response.words_sent]
            step.events.append(
                self._event(
                    self._names["transcript_delta"],
                    response_id=response.id,
                    item_id=response.item_id,
                    output_index=0,
                    content_index=0,
                    delta=word if response.words_sent == 0 else f" {word}",
                )
            )
            response.words_sent += 1
        return step

    def generation_finished(self) -> Step:
        """Generation ended: the rest of the transcript, the ``done``s, ``response.done``.

        The audio keeps playing; ``playback_finished`` ends it."""
        response = self._response
        if response is None:
            return Step()
        step = self.generation_progress(len(response.words))
        where = {
            "response_id": response.id,
            "item_id": response.item_id,
            "output_index": 0,
            "content_index": 0,
        }
        step.events.append(self._event(self._names["audio_done"], **where))
        return step.extend(self._finish(response, "completed", response.text))

    def playback_finished(self) -> Step:
        """The reply audio finished playing: ``output_audio_buffer.stopped``."""
        playing = self._playing
        if playing is None:
            return Step()
        self._playing = None
        return Step([self._event("output_audio_buffer.stopped", response_id=playing)])

    def _finish(self, response: _Response, status: str, transcript: str, **details: Any) -> Step:
        """transcript.done, content_part.done, (GA) conversation.item.done, output_item.done,
        response.done, rate_limits.updated: for a completed or a cancelled response."""
        where = {
            "response_id": response.id,
            "item_id": response.item_id,
            "output_index": 0,
            "content_index": 0,
        }
        # The content *part* of response.content_part.* is "audio"; the same content inside
        # a GA item is "output_audio" (beta: "audio" in both places).
        part = {"type": "audio", "transcript": transcript}
        content = {**part, "type": "output_audio" if self.dialect == "ga" else "audio"}
        item_status = "completed" if status == "completed" else "incomplete"
        item = self._assistant_item(response, item_status, content=[content])
        if response.item_id in self._items:  # not deleted meanwhile
            self._remember(item)
        events = [
            self._event(self._names["transcript_done"], **where, transcript=transcript),
            self._event("response.content_part.done", **where, part=part),
        ]
        if self.dialect == "ga":
            events.append(
                self._event(
                    "conversation.item.done", previous_item_id=response.previous_item_id, item=item
                )
            )
        events.append(
            self._event(
                "response.output_item.done", response_id=response.id, output_index=0, item=item
            )
        )
        events.append(
            self._event(
                "response.done",
                response=self._response_object(
                    response, status, output=[item], details=details or None
                ),
            )
        )
        events.append(self._event("rate_limits.updated", rate_limits=_RATE_LIMITS))
        self._response = None
        return Step(events)

    def _cancel(self, reason: str) -> Step:
        """End the active response as cancelled: generation stops now."""
        response = self._response
        assert response is not None
        step = self._finish(
            response,
            "cancelled",
            response.transcript_so_far,
            type="cancelled",
            reason=reason,
        )
        step.stop_generation = True
        return step

    def _clear_audio(self) -> Step:
        """Playback stops now: ``output_audio_buffer.cleared``."""
        playing = self._playing
        self._playing = None
        return Step(
            [self._event("output_audio_buffer.cleared", response_id=playing)], clear_audio=True
        )

    def _assistant_item(
        self, response: _Response, status: str, *, content: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _response_object(
        self,
        response: _Response,
        status: str,
        *,
        output: list[dict[str, Any]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        finished = status != "in_progress"
        obj: dict[str, Any] = {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": details,
            "output": output or [],
            "conversation_id": self.conversation_id,
        }
        voice = voice_of(self.session, self.dialect)
        if self.dialect == "ga":
            obj["output_modalities"] = ["audio"]
            obj["max_output_tokens"] = self.session.get("max_output_tokens", "inf")
            obj["audio"] = {
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": voice}
            }
        else:
            obj["modalities"] = ["audio", "text"]
            obj["voice"] = voice
            obj["output_audio_format"] = self.session.get("output_audio_format", "pcm16")
            obj["temperature"] = self.session.get("temperature", 0.8)
            obj["max_output_tokens"] = self.session.get("max_response_output_tokens", "inf")
        obj["usage"] = _usage(response, self.dialect) if finished else None
        obj["metadata"] = None
        return obj

    # -- client events -----------------------------------------------------------------

    def client_event(self, raw: str | bytes) -> Step:
        """One message from the data channel."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._error("invalid_json", "The event is not valid JSON.", None, None)
        if not isinstance(data, dict):
            return self._error("invalid_event", "The event must be a JSON object.", None, None)
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        type_ = data.get("type")
        if not isinstance(type_, str) or not type_:
            return self._error("invalid_event", "The 'type' field is missing.", "type", event_id)
        handler = {
            "session.update": self._session_update,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_audio_buffer_clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._item_truncate,
            "input_audio_buffer.append": self._input_audio_buffer_append,
            "input_audio_buffer.commit": self._input_audio_buffer_commit,
            "input_audio_buffer.clear": self._input_audio_buffer_clear,
        }.get(type_)
        if handler is not None:
            return handler(data, event_id)
        if type_ in _NOT_SIMULATED:
            return self._error(
                "unsupported_event",
                f"The simulator does not implement '{type_}'.",
                "type",
                event_id,
            )
        return self._error(
            "invalid_value",
            f"Invalid value: '{type_}'. Supported values are: "
            + ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES)
            + ".",
            "type",
            event_id,
        )

    def _session_update(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        if "session" not in data:
            return self._error(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                "session",
                event_id,
            )
        try:
            if self.dialect == "ga":
                update = validate_ga_session(data["session"], "session")
            else:
                update = validate_beta_session(data["session"], "session")
        except SimHttpError as exc:
            return self._error(exc.code or "invalid_value", exc.message, exc.param, event_id)
        model = update.get("model")
        if model is not None and model != self.session.get("model"):
            return self._error(
                "invalid_value", "The session model cannot be changed.", "session.model", event_id
            )
        merge = merge_ga if self.dialect == "ga" else merge_beta
        self.session = merge(self.session, update)
        return Step([self._event("session.updated", session=self.session)], session_changed=True)

    def _response_create(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        if "response" in data and not isinstance(data["response"], dict | type(None)):
            return self._error(
                "invalid_type",
                "Invalid type for 'response': expected an object.",
                "response",
                event_id,
            )
        if self._response is not None:
            return self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
                None,
                event_id,
            )
        return self.start_response()

    def _response_cancel(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        wanted = data.get("response_id")
        if self._response is None or (wanted is not None and wanted != self._response.id):
            return self._error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                None,
                event_id,
            )
        # Generation stops; audio generated so far still plays (clear it to stop it).
        return self._cancel("client_cancelled")

    def _output_audio_buffer_clear(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        if self._playing is None:
            return Step(
                [self._event("output_audio_buffer.cleared", response_id=self._last_response_id)]
            )
        # Audio only: a response still generating goes on (and ends with response.done).
        return self._clear_audio()

    def _input_audio_buffer_clear(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        self._appended_ms = 0.0
        return Step([self._event("input_audio_buffer.cleared")])

    def _input_audio_buffer_append(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        """Audio sent as events (the WebSocket way; over WebRTC the track carries it): it
        only fills the buffer a commit turns into an item. No event answers it."""
        audio = data.get("audio")
        if not isinstance(audio, str):
            return self._missing("audio", event_id)
        try:
            size = len(base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError):
            return self._error(
                "invalid_value",
                "Invalid value for 'audio': expected base64-encoded audio bytes.",
                "audio",
                event_id,
            )
        self._appended_ms += size / input_bytes_per_ms(self.session, self.dialect)
        return Step()

    def _input_audio_buffer_commit(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        """The appended audio becomes a user item (and is transcribed); as on the real
        service, a commit creates no response."""
        if self._appended_ms < MIN_COMMIT_MS:
            return self._error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS:.0f}ms of audio, but buffer only has "
                f"{self._appended_ms:.2f}ms of audio.",
                None,
                event_id,
            )
        spoken_ms = round(self._appended_ms)
        self._appended_ms = 0.0
        item_id = self._ids("item")
        previous = self._last_item_id
        item = self._user_audio_item(item_id)
        step = Step(
            [
                self._event(
                    "input_audio_buffer.committed", previous_item_id=previous, item_id=item_id
                )
            ]
        )
        step.events.extend(self._item_created(item, previous))
        self._last_item_id = item_id
        self._remember(item)
        if transcription_of(self.session, self.dialect) is not None:
            step.transcribe = TranscriptionPlan(item_id, spoken_ms)
        return step

    def _item_retrieve(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        item_id = data.get("item_id")
        if not isinstance(item_id, str):
            return self._missing("item_id", event_id)
        item = self._items.get(item_id)
        if item is None:
            return self._item_not_found("item_not_found", item_id, event_id)
        return Step([self._event("conversation.item.retrieved", item=copy.deepcopy(item))])

    def _item_delete(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        item_id = data.get("item_id")
        if not isinstance(item_id, str):
            return self._missing("item_id", event_id)
        if self._items.pop(item_id, None) is None:
            return self._item_not_found("item_delete_invalid_item_id", item_id, event_id)
        if item_id in self.item_ids:  # a deleted item no longer counts as conversation
            self.item_ids.remove(item_id)
        if self._last_item_id == item_id:
            self._last_item_id = next(reversed(self._items), None)
        return Step([self._event("conversation.item.deleted", item_id=item_id)])

    def _item_truncate(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        """An assistant message's audio cut at ``audio_end_ms`` (what the user heard): its
        transcript goes, so that no text the user did not hear stays in the context."""
        item_id = data.get("item_id")
        if not isinstance(item_id, str):
            return self._missing("item_id", event_id)
        for name in ("content_index", "audio_end_ms"):
            value = data.get(name)
            if value is None:
                return self._missing(name, event_id)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return self._error(
                    "invalid_value",
                    f"Invalid value for '{name}': expected a non-negative integer.",
                    name,
                    event_id,
                )
        item = self._items.get(item_id)
        if item is None:
            return self._item_not_found("item_truncate_invalid_item_id", item_id, event_id)
        index = data["content_index"]
        content = item.get("content") or []
        if item.get("role") != "assistant" or index >= len(content):
            return self._error(
                "invalid_value",
                "Only the audio content of an assistant message can be truncated.",
                "content_index",
                event_id,
            )
        content[index]["transcript"] = None
        return Step(
            [
                self._event(
                    "conversation.item.truncated",
                    item_id=item_id,
                    content_index=index,
                    audio_end_ms=data["audio_end_ms"],
                )
            ]
        )

    def _remember(self, item: Mapping[str, Any]) -> None:
        stored = copy.deepcopy(dict(item))
        self._items[str(stored["id"])] = stored
        self._items.move_to_end(str(stored["id"]))
        while len(self._items) > MAX_ITEMS_KEPT:
            self._items.popitem(last=False)

    def _user_audio_item(self, item_id: str) -> dict[str, Any]:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }

    def _item_create(self, data: Mapping[str, Any], event_id: str | None) -> Step:
        item = data.get("item")
        if not isinstance(item, dict):
            return self._error(
                "missing_required_parameter",
                "Missing required parameter: 'item'.",
                "item",
                event_id,
            )
        if item.get("type") not in _ITEM_TYPES:
            return self._error(
                "invalid_value",
                f"Invalid value for 'item.type': expected one of {', '.join(sorted(_ITEM_TYPES))}.",
                "item.type",
                event_id,
            )
        if item["type"] == "message" and not isinstance(item.get("content"), list):
            return self._error(
                "missing_required_parameter",
                "Missing required parameter: 'item.content'.",
                "item.content",
                event_id,
            )
        previous = data.get("previous_item_id", self._last_item_id)
        stored = {
            "id": item.get("id") or self._ids("item"),
            "object": "realtime.item",
            "status": "completed",
            **{k: v for k, v in item.items() if k != "id"},
        }
        self._last_item_id = stored["id"]
        self.item_ids.append(str(stored["id"]))
        self.items_created += 1
        if item.get("role") == "assistant":
            # What the interviewer already said: it goes on with its next line (a
            # conversation seeded with its past does not start over).
            self._next_line += 1
        self._remember(stored)
        return Step(self._item_created(stored, previous))

    # -- errors ------------------------------------------------------------------------

    def _error_event(
        self, code: str, message: str, *, param: str | None, event_id: str | None
    ) -> Event:
        return self._event(
            "error",
            error={
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    def _error(self, code: str, message: str, param: str | None, event_id: str | None) -> Step:
        return Step([self._error_event(code, message, param=param, event_id=event_id)])

    def _missing(self, param: str, event_id: str | None) -> Step:
        return self._error(
            "missing_required_parameter",
            f"Missing required parameter: '{param}'.",
            param,
            event_id,
        )

    def _item_not_found(self, code: str, item_id: str, event_id: str | None) -> Step:
        return self._error(code, f"Item with item_id not found: {item_id}", "item_id", event_id)


_RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 800000, "remaining": 799000, "reset_seconds": 0.075},
]


def _usage(response: _Response, dialect: Dialect) -> dict[str, Any]:
    text_tokens = response.words_sent
    audio_tokens = text_tokens * 4
    if dialect == "beta":  # beta's usage had no image or cached-detail counts
        return {
            "total_tokens": text_tokens + audio_tokens + 20,
            "input_tokens": 20,
            "output_tokens": text_tokens + audio_tokens,
            "input_token_details": {"text_tokens": 20, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }
    return {
        "total_tokens": text_tokens + audio_tokens + 20,
        "input_tokens": 20,
        "output_tokens": text_tokens + audio_tokens,
        "input_token_details": {
            "text_tokens": 20,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
    }
