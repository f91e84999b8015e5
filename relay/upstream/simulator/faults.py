"""Fault knobs: per-endpoint latency, forced status (optionally N times), hanging; ICE that
never completes; the beta shape switched off; the answer codec; the accepted models.

Settable in-process (``state.faults`` / ``state.update_faults``) and over HTTP
(``POST /_sim/faults`` with the JSON form of ``Faults.update``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["mint", "calls", "hangup", "models"]
ENDPOINTS: tuple[Endpoint, ...] = ("mint", "calls", "hangup", "models")
AnswerCodec = Literal["opus", "pcmu"]

GA_MODELS: frozenset[str] = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-2025-08-28",
        "gpt-realtime-1.5",
        "gpt-realtime-2",
        "gpt-realtime-2.1",
        "gpt-realtime-2.1-mini",
        "gpt-realtime-mini",
        "gpt-realtime-mini-2025-10-06",
        "gpt-realtime-mini-2025-12-15",
        "gpt-audio-1.5",
        "gpt-audio-mini",
        "gpt-audio-mini-2025-10-06",
        "gpt-audio-mini-2025-12-15",
    }
)
BETA_MODELS: frozenset[str] = frozenset(
    {
        "gpt-4o-realtime-preview",
        "gpt-4o-realtime-preview-2024-10-01",
        "gpt-4o-realtime-preview-2024-12-17",
        "gpt-4o-realtime-preview-2025-06-03",
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-mini-realtime-preview-2024-12-17",
    }
)
# Transcription models (a transcription session and ``audio.input.transcription``).
TRANSCRIPTION_MODELS: frozenset[str] = frozenset(
    {
        "whisper-1",
        "gpt-transcribe",
        "gpt-live-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
        "gpt-4o-transcribe",
        "gpt-4o-transcribe-diarize",
        "gpt-realtime-whisper",
    }
)
# The model lists of the official SDK (openai 3.57.0, realtime_session_create_request.py
# and audio_transcription.py).
DEFAULT_ACCEPTED_MODELS: frozenset[str] = GA_MODELS | BETA_MODELS | TRANSCRIPTION_MODELS


class FaultError(ValueError):
    """A fault setting that makes no sense; the message names the key."""


@dataclass
class EndpointFault:
    """What one endpoint does before (or instead of) serving a request."""

    # Added before anything else (seconds).
    latency_s: float = 0.0
    # Answer with this status (and error code) instead of serving.
    status: int | None = None
    code: str | None = None
    # How many requests get the forced status; None: every request. When it runs out the
    # forced status is cleared ("503 twice, then normal service").
    times: int | None = None
    # Never answer (until the simulator closes); the client has to give up.
    hang: bool = False
    # Advertised in retry-after / retry-after-ms on forced 429 and 5xx replies.
    retry_after_s: float = 1.0
    # Sent as ``x-should-retry: true|false`` on forced replies (None: no such header).
    should_retry: bool | None = None

    def take_forced(self) -> tuple[int, str | None] | None:
        """The forced ``(status, code)`` for this request, counted against ``times``."""
        if self.status is None:
            return None
        forced = (self.status, self.code)
        if self.times is not None:
            if self.times <= 0:
                self._clear_forced()
                return None
            self.times -= 1
            if self.times == 0:
                self._clear_forced()
        return forced

    def _clear_forced(self) -> None:
        self.status = self.code = self.times = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Faults:
    mint: EndpointFault = field(default_factory=EndpointFault)
    calls: EndpointFault = field(default_factory=EndpointFault)
    hangup: EndpointFault = field(default_factory=EndpointFault)
    models: EndpointFault = field(default_factory=EndpointFault)
    # Answer with a host candidate nobody answers on, so ICE never connects.
    ice_never_completes: bool = False
    # The beta shape is switched off, as on the real service since 2026: beta REST
    # endpoints answer 400 beta_api_shape_disabled; open beta calls get an error event and
    # are closed. On unless the simulator is started for the beta dialect.
    beta_disabled: bool = True
    answer_codec: AnswerCodec = "opus"
    # Models the account may use: others are refused (400 invalid_value when minting or
    # calling, 404 model_not_found from GET /v1/models/{model}).
    accepted_models: frozenset[str] = DEFAULT_ACCEPTED_MODELS
    # Every standard key is refused with 401 invalid_api_key (a revoked key).
    reject_api_keys: bool = False

    def endpoint(self, name: Endpoint) -> EndpointFault:
        fault: EndpointFault = getattr(self, name)
        return fault

    def copy(self) -> Faults:
        return dataclasses.replace(
            self,
            mint=dataclasses.replace(self.mint),
            calls=dataclasses.replace(self.calls),
            hangup=dataclasses.replace(self.hangup),
            models=dataclasses.replace(self.models),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: self.endpoint(name).to_json() for name in ENDPOINTS},
            "ice_never_completes": self.ice_never_completes,
            "beta_disabled": self.beta_disabled,
            "answer_codec": self.answer_codec,
            "accepted_models": sorted(self.accepted_models),
            "reject_api_keys": self.reject_api_keys,
        }

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update (the ``POST /_sim/faults`` body); all or nothing.

        Endpoint entries merge key by key (``null`` clears a status or code)."""
        staged = self.copy()
        for key, value in changes.items():
            if key in ENDPOINTS:
                _update_endpoint(staged.endpoint(key), value, key)
            elif key in ("ice_never_completes", "beta_disabled", "reject_api_keys"):
                if not isinstance(value, bool):
                    raise FaultError(f"{key}: expected true or false")
                setattr(staged, key, value)
            elif key == "answer_codec":
                if value not in ("opus", "pcmu"):
                    raise FaultError("answer_codec: expected 'opus' or 'pcmu'")
                staged.answer_codec = value
            elif key == "accepted_models":
                if not isinstance(value, list | tuple | set | frozenset) or not all(
                    isinstance(m, str) and m for m in value
                ):
                    raise FaultError("accepted_models: expected a list of model names")
                staged.accepted_models = frozenset(value)
            else:
                raise FaultError(f"unknown fault setting {key!r}")
        for name in (*ENDPOINTS, *_TOP_LEVEL):
            setattr(self, name, getattr(staged, name))


_TOP_LEVEL = (
    "ice_never_completes",
    "beta_disabled",
    "answer_codec",
    "accepted_models",
    "reject_api_keys",
)


def _number(value: Any, key: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise FaultError(f"{key}: expected a number >= {minimum}")
    return float(value)


def _update_endpoint(fault: EndpointFault, changes: Any, where: str) -> None:
    if not isinstance(changes, Mapping):
        raise FaultError(f"{where}: expected an object")
    for key, value in changes.items():
        name = f"{where}.{key}"
        if key in ("latency_s", "retry_after_s"):
            setattr(fault, key, _number(value, name, minimum=0))
        elif key == "status":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599
            ):
                raise FaultError(f"{name}: expected an HTTP error status (400..599) or null")
            fault.status = value
        elif key == "code":
            if value is not None and not isinstance(value, str):
                raise FaultError(f"{name}: expected a string or null")
            fault.code = value
        elif key == "times":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise FaultError(f"{name}: expected a count >= 0 or null")
            fault.times = value
        elif key == "should_retry":
            if value is not None and not isinstance(value, bool):
                raise FaultError(f"{name}: expected true, false or null")
            fault.should_retry = value
        elif key == "hang":
            if not isinstance(value, bool):
                raise FaultError(f"{name}: expected true or false")
            fault.hang = value
        else:
            raise FaultError(f"unknown fault setting {name!r}")
