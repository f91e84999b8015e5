"""Model currency: the announced shutdown dates of Realtime and transcription models.

The outage behind this project came from an outdated model name; this table lets the relay say
so before it happens. It is data, read by hand from the official SDK, with the date it was
read: update ``TABLE``, ``READ_ON`` and ``SOURCE`` together when a new SDK announces more.

Levels: ``notice`` (deprecated, shutdown more than ``WARNING_WINDOW_DAYS`` away), ``warning``
(within that window), ``error`` (the shutdown date has passed). The relay logs the level at
start and reports it in ``/readyz`` and ``/api/stats``; ``relay doctor`` prints it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

Kind = Literal["realtime", "transcription"]
Level = Literal["notice", "warning", "error"]

READ_ON = datetime.date(2026, 11, 28)
SOURCE = (
    "openai (Python SDK) 3.57.0: openai/types/realtime/realtime_session_create_request.py "
    "(field model, 'Deprecated values') and openai/types/realtime/audio_transcription.py "
    "(field model, 'Deprecated values'); https://developers.openai.com/api/docs/deprecations"
)
WARNING_WINDOW_DAYS = 60


@dataclass(frozen=True)
class Deprecation:
    kind: Kind
    shutdown: datetime.date
    # Our suggestion (a current model of the same kind), not OpenAI's wording.
    replacement: str


_REALTIME_SHUTDOWN = datetime.date(2027, 1, 20)
_TRANSCRIPTION_SHUTDOWN = datetime.date(2027, 2, 26)

TABLE: dict[str, Deprecation] = {
    **{
        model: Deprecation("realtime", _REALTIME_SHUTDOWN, "gpt-realtime-2.1")
        for model in ("gpt-realtime", "gpt-realtime-2025-08-28")
    },
    **{
        model: Deprecation("realtime", _REALTIME_SHUTDOWN, "gpt-realtime-2.1-mini")
        for model in ("gpt-realtime-mini", "gpt-realtime-mini-2025-12-15")
    },
    **{
        model: Deprecation("realtime", _REALTIME_SHUTDOWN, "gpt-audio-1.5")
        for model in ("gpt-audio-mini", "gpt-audio-mini-2025-12-15")
    },
    **{
        model: Deprecation("transcription", _TRANSCRIPTION_SHUTDOWN, "gpt-realtime-whisper")
        for model in (
            "whisper-1",
            "gpt-4o-mini-transcribe",
            "gpt-4o-mini-transcribe-2025-12-15",
            "gpt-4o-transcribe",
            "gpt-4o-transcribe-diarize",
        )
    },
}


@dataclass(frozen=True)
class Currency:
    """What the relay says about one configured model."""

    setting: str
    model: str
    level: Level
    shutdown: datetime.date
    days_left: int
    replacement: str

    @property
    def message(self) -> str:
        when = self.shutdown.isoformat()
        if self.level == "error":
            state = f"was shut down on {when} (announced)"
        else:
            state = f"is deprecated: shutdown announced for {when} ({self.days_left} days)"
        return f"{self.setting} {self.model!r} {state}; switch to {self.replacement!r}"

    def to_json(self) -> dict[str, object]:
        return {
            "setting": self.setting,
            "model": self.model,
            "level": self.level,
            "shutdown": self.shutdown.isoformat(),
            "days_left": self.days_left,
            "replacement": self.replacement,
            "message": self.message,
        }


def status(
    model: str, *, today: datetime.date | None = None, setting: str = "upstream.model"
) -> Currency | None:
    """The currency of ``model`` (None: not on any announced list)."""
    entry = TABLE.get(model)
    if entry is None:
        return None
    today = today or datetime.datetime.now(datetime.UTC).date()
    days_left = (entry.shutdown - today).days
    level: Level
    if days_left <= 0:
        level = "error"
    elif days_left <= WARNING_WINDOW_DAYS:
        level = "warning"
    else:
        level = "notice"
    return Currency(setting, model, level, entry.shutdown, days_left, entry.replacement)


_RANK: dict[Level, int] = {"notice": 0, "warning": 1, "error": 2}


def check_models(
    realtime_model: str, transcription_model: str, *, today: datetime.date | None = None
) -> list[Currency]:
    """Every configured model with an announced shutdown, the most urgent first."""
    found = [
        status(realtime_model, today=today, setting="upstream.model"),
        status(transcription_model, today=today, setting="upstream.transcription_model")
        if transcription_model
        else None,
    ]
    return sorted((c for c in found if c is not None), key=lambda c: -_RANK[c.level])


def worst_level(currencies: list[Currency]) -> Level | None:
    return max((c.level for c in currencies), key=lambda lv: _RANK[lv], default=None)
