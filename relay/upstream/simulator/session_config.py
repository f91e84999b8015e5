"""Effective session objects in both dialects (pure): defaults, merges, conversion.

GA sessions nest audio settings (``audio.input.turn_detection``, ``audio.output.voice``);
beta sessions are flat (``turn_detection``, ``voice``). Inputs are already validated.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any, Literal

Dialect = Literal["ga", "beta"]

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
DEFAULT_VOICE = "alloy"
SERVER_VAD_DEFAULTS: Mapping[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 200,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: Mapping[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
PCM_24K: Mapping[str, Any] = {"type": "audio/pcm", "rate": 24000}
# A realtime session lasts at most this long (OpenAI: 60 minutes); expires_at says when.
SESSION_MAX_S = 3600


def _expiry(expires_at: int | None) -> int:
    return int(time.time()) + SESSION_MAX_S if expires_at is None else expires_at


def effective_turn_detection(value: Any, dialect: Dialect = "ga") -> dict[str, Any] | None:
    """The full turn-detection object for a (validated) request value; None disables it."""
    if value is None:
        return None
    defaults = SERVER_VAD_DEFAULTS if value["type"] == "server_vad" else SEMANTIC_VAD_DEFAULTS
    merged = {**defaults, **value}
    if dialect == "beta":
        merged.pop("idle_timeout_ms", None)  # a GA addition
    return merged


def _nested(config: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    value: Any = config
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else {}


# ---------------------------------------------------------------------- GA
def ga_session(
    config: Mapping[str, Any],
    *,
    session_id: str,
    default_model: str,
    expires_at: int | None = None,
) -> dict[str, Any]:
    """The effective GA session for a validated ``session`` config (``expires_at``: Unix
    seconds; default: an hour from now)."""
    audio_in = _nested(config, "audio", "input")
    audio_out = _nested(config, "audio", "output")
    turn = audio_in.get("turn_detection", SERVER_VAD_DEFAULTS)
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": config.get("model", default_model),
        "output_modalities": list(config.get("output_modalities", ["audio"])),
        "instructions": config.get("instructions", DEFAULT_INSTRUCTIONS),
        "tools": copy.deepcopy(config.get("tools", [])),
        "tool_choice": copy.deepcopy(config.get("tool_choice", "auto")),
        "max_output_tokens": config.get("max_output_tokens", "inf"),
        "tracing": copy.deepcopy(config.get("tracing")),
        "truncation": copy.deepcopy(config.get("truncation", "auto")),
        "prompt": copy.deepcopy(config.get("prompt")),
        "expires_at": _expiry(expires_at),
        "audio": {
            "input": {
                "format": dict(audio_in.get("format", PCM_24K)),
                "transcription": copy.deepcopy(audio_in.get("transcription")),
                "noise_reduction": copy.deepcopy(audio_in.get("noise_reduction")),
                "turn_detection": effective_turn_detection(turn),
            },
            "output": {
                "format": dict(audio_out.get("format", PCM_24K)),
                "voice": copy.deepcopy(audio_out.get("voice", DEFAULT_VOICE)),
                "speed": audio_out.get("speed", 1.0),
            },
        },
        "include": copy.deepcopy(config.get("include")),
    }


def transcription_session(
    config: Mapping[str, Any], *, session_id: str, expires_at: int | None = None
) -> dict[str, Any]:
    """The effective GA transcription session (``type: transcription``): input audio only,
    no responses."""
    audio_in = _nested(config, "audio", "input")
    turn = audio_in.get("turn_detection", SERVER_VAD_DEFAULTS)
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "expires_at": _expiry(expires_at),
        "audio": {
            "input": {
                "format": dict(audio_in.get("format", PCM_24K)),
                "transcription": copy.deepcopy(audio_in.get("transcription")),
                "noise_reduction": copy.deepcopy(audio_in.get("noise_reduction")),
                "turn_detection": effective_turn_detection(turn),
            }
        },
        "include": copy.deepcopy(config.get("include")),
    }


def is_transcription(session: Mapping[str, Any]) -> bool:
    return session.get("type") == "transcription"


def merge_ga(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``session.update`` in GA: fields replace, ``audio.input``/``audio.output`` merge key by
    key, a new ``turn_detection`` gets its type's defaults. ``type``/``model`` are fixed."""
    merged = copy.deepcopy(dict(current))
    for key, value in update.items():
        if key in ("type", "model"):
            continue
        if key == "audio":
            for side in ("input", "output"):
                for name, item in _nested(update, "audio", side).items():
                    if name == "turn_detection":
                        item = effective_turn_detection(item)
                    merged["audio"][side][name] = copy.deepcopy(item)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------------- beta
def beta_session(
    config: Mapping[str, Any],
    *,
    session_id: str,
    default_model: str,
    expires_at: int | None = None,
) -> dict[str, Any]:
    """The effective beta session for a validated flat config."""
    turn = config.get("turn_detection", SERVER_VAD_DEFAULTS)
    return {
        "id": session_id,
        "object": "realtime.session",
        "model": config.get("model", default_model),
        "expires_at": _expiry(expires_at),
        "modalities": list(config.get("modalities", ["audio", "text"])),
        "instructions": config.get("instructions", DEFAULT_INSTRUCTIONS),
        "voice": config.get("voice", DEFAULT_VOICE),
        "input_audio_format": config.get("input_audio_format", "pcm16"),
        "output_audio_format": config.get("output_audio_format", "pcm16"),
        "input_audio_transcription": copy.deepcopy(config.get("input_audio_transcription")),
        "turn_detection": effective_turn_detection(turn, "beta"),
        "input_audio_noise_reduction": copy.deepcopy(config.get("input_audio_noise_reduction")),
        "tools": copy.deepcopy(config.get("tools", [])),
        "tool_choice": copy.deepcopy(config.get("tool_choice", "auto")),
        "temperature": config.get("temperature", 0.8),
        "max_response_output_tokens": config.get("max_response_output_tokens", "inf"),
        "speed": config.get("speed", 1.0),
        "tracing": copy.deepcopy(config.get("tracing")),
    }


def merge_beta(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``session.update`` in beta: fields replace; ``model`` is fixed."""
    merged = copy.deepcopy(dict(current))
    for key, value in update.items():
        if key == "model":
            continue
        if key == "turn_detection":
            value = effective_turn_detection(value, "beta")
        merged[key] = copy.deepcopy(value)
    return merged


# ---------------------------------------------------------------------- conversion
def beta_from_ga(ga: Mapping[str, Any]) -> dict[str, Any]:
    """The beta view of a GA session (a GA-minted key used on the beta SDP endpoint)."""
    audio_in = _nested(ga, "audio", "input")
    voice = _nested(ga, "audio", "output").get("voice", DEFAULT_VOICE)
    return beta_session(
        {
            "model": ga["model"],
            "instructions": ga["instructions"],
            "modalities": ["text"] if ga["output_modalities"] == ["text"] else ["audio", "text"],
            "voice": voice if isinstance(voice, str) else DEFAULT_VOICE,
            "input_audio_transcription": audio_in.get("transcription"),
            "turn_detection": audio_in.get("turn_detection"),
            "input_audio_noise_reduction": audio_in.get("noise_reduction"),
            "tools": ga["tools"],
            "tool_choice": ga["tool_choice"],
            "max_response_output_tokens": ga["max_output_tokens"],
        },
        session_id=ga["id"],
        default_model=ga["model"],
        expires_at=ga["expires_at"],
    )


def ga_from_beta(beta: Mapping[str, Any]) -> dict[str, Any]:
    """The GA view of a beta session (a beta-minted key used on ``/realtime/calls``)."""
    return ga_session(
        {
            "model": beta["model"],
            "instructions": beta["instructions"],
            "output_modalities": ["text"] if beta["modalities"] == ["text"] else ["audio"],
            "audio": {
                "input": {
                    "transcription": beta["input_audio_transcription"],
                    "noise_reduction": beta["input_audio_noise_reduction"],
                    "turn_detection": beta["turn_detection"],
                },
                "output": {"voice": beta["voice"]},
            },
            "tools": beta["tools"],
            "tool_choice": beta["tool_choice"],
            "max_output_tokens": beta["max_response_output_tokens"],
        },
        session_id=beta["id"],
        default_model=beta["model"],
        expires_at=beta["expires_at"],
    )


def in_dialect(session: Mapping[str, Any], source: Dialect, target: Dialect) -> dict[str, Any]:
    if source == target:
        return copy.deepcopy(dict(session))
    return beta_from_ga(session) if target == "beta" else ga_from_beta(session)


# ---------------------------------------------------------------------- accessors
def turn_detection_of(session: Mapping[str, Any], dialect: Dialect) -> Mapping[str, Any] | None:
    value = (
        _nested(session, "audio", "input").get("turn_detection")
        if dialect == "ga"
        else session.get("turn_detection")
    )
    return value if isinstance(value, Mapping) else None


def transcription_of(session: Mapping[str, Any], dialect: Dialect) -> Mapping[str, Any] | None:
    value = (
        _nested(session, "audio", "input").get("transcription")
        if dialect == "ga"
        else session.get("input_audio_transcription")
    )
    return value if isinstance(value, Mapping) else None


def voice_of(session: Mapping[str, Any], dialect: Dialect) -> str:
    value = (
        _nested(session, "audio", "output").get("voice")
        if dialect == "ga"
        else session.get("voice")
    )
    if isinstance(value, Mapping):
        return str(value.get("id", DEFAULT_VOICE))
    return value if isinstance(value, str) else DEFAULT_VOICE


def input_bytes_per_ms(session: Mapping[str, Any], dialect: Dialect) -> float:
    """Bytes of one millisecond of ``input_audio_buffer.append`` audio in the session's input
    format: PCM16 at its rate (24 kHz by default), or 8 kHz G.711 (one byte a sample)."""
    if dialect == "ga":
        fmt = _nested(session, "audio", "input").get("format")
        kind = fmt.get("type") if isinstance(fmt, Mapping) else "audio/pcm"
        if kind in ("audio/pcmu", "audio/pcma"):
            return 8.0
        rate = fmt.get("rate", 24000) if isinstance(fmt, Mapping) else 24000
        return 2 * float(rate) / 1000
    if session.get("input_audio_format") in ("g711_ulaw", "g711_alaw"):
        return 8.0
    return 48.0
