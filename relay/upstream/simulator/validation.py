"""Request validation (pure): client-secret and beta session bodies, session configs, offers.

Failures raise ``SimHttpError`` (400) with OpenAI's codes: ``unknown_parameter``,
``missing_required_parameter``, ``invalid_value``, ``integer_below_min_value`` /
``integer_above_max_value``, ``invalid_type`` and ``invalid_offer``; ``param`` names the
offending field with dots (``session.audio.input.turn_detection.threshold``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.upstream.simulator.errors import (
    SimHttpError,
    invalid_offer,
    invalid_request,
    invalid_value,
    missing_parameter,
    unknown_parameter,
)

MIN_SECRET_TTL_S = 10
MAX_SECRET_TTL_S = 7200
DEFAULT_GA_SECRET_TTL_S = 600

Check = Callable[[Any, str], None]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_error(param: str, expected: str) -> SimHttpError:
    return invalid_request(
        f"Invalid type for '{param}': expected {expected}.", code="invalid_type", param=param
    )


def require_object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _type_error(param or "body", "an object")
    return value


def _fields(value: Any, where: str, checks: Mapping[str, Check]) -> Mapping[str, Any]:
    obj = require_object(value, where)
    for key, item in obj.items():
        check = checks.get(key)
        if check is None:
            raise unknown_parameter(_join(where, key))
        check(item, _join(where, key))
    return obj


def _string(value: Any, param: str) -> None:
    if not isinstance(value, str):
        raise _type_error(param, "a string")


def _nonempty_string(value: Any, param: str) -> None:
    _string(value, param)
    if not value:
        raise invalid_value(param, "must not be empty.")


def _boolean(value: Any, param: str) -> None:
    if not isinstance(value, bool):
        raise _type_error(param, "a boolean")


def _anything(value: Any, param: str) -> None:
    return None


def _object(value: Any, param: str) -> None:
    require_object(value, param)


def _list_of_objects(value: Any, param: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _type_error(param, "an array of objects")


def _list_of_strings(value: Any, param: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _type_error(param, "an array of strings")


def _string_or_object(value: Any, param: str) -> None:
    if not isinstance(value, str | Mapping):
        raise _type_error(param, "a string or an object")


def _optional(check: Check) -> Check:
    def run(value: Any, param: str) -> None:
        if value is not None:
            check(value, param)

    return run


def _one_of(*allowed: str) -> Check:
    def run(value: Any, param: str) -> None:
        if value not in allowed:
            raise invalid_value(param, f"expected one of {', '.join(allowed)}.")

    return run


def _one_of_int(*allowed: int) -> Check:
    def run(value: Any, param: str) -> None:
        if isinstance(value, bool) or value not in allowed:
            raise invalid_value(param, f"expected one of {', '.join(map(str, allowed))}.")

    return run


def _integer(minimum: int, maximum: int) -> Check:
    def run(value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(param, "an integer")
        if value < minimum:
            raise invalid_request(
                f"Invalid '{param}': integer below minimum value. Expected a value >= "
                f"{minimum}, but got {value} instead.",
                code="integer_below_min_value",
                param=param,
            )
        if value > maximum:
            raise invalid_request(
                f"Invalid '{param}': integer above maximum value. Expected a value <= "
                f"{maximum}, but got {value} instead.",
                code="integer_above_max_value",
                param=param,
            )

    return run


def _number(minimum: float, maximum: float) -> Check:
    def run(value: Any, param: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(param, "a number")
        if not minimum <= value <= maximum:
            raise invalid_value(param, f"expected a number within {minimum}..{maximum}.")

    return run


def _token_limit(value: Any, param: str) -> None:
    if value != "inf":
        _integer(1, 4096)(value, param)


# ---------------------------------------------------------------------- turn detection
_VAD_COMMON: dict[str, Check] = {
    "type": _one_of("server_vad", "semantic_vad"),
    "create_response": _boolean,
    "interrupt_response": _boolean,
}
_SERVER_VAD: dict[str, Check] = {
    **_VAD_COMMON,
    "threshold": _number(0.0, 1.0),
    "prefix_padding_ms": _integer(0, 10000),
    "silence_duration_ms": _integer(0, 10000),
    "idle_timeout_ms": _optional(_integer(5000, 30000)),
}
_SEMANTIC_VAD: dict[str, Check] = {
    **_VAD_COMMON,
    "eagerness": _one_of("low", "medium", "high", "auto"),
}


def _turn_detection(value: Any, param: str) -> None:
    if value is None:
        return
    obj = require_object(value, param)
    if "type" not in obj:
        raise missing_parameter(_join(param, "type"))
    kind = obj["type"]
    _VAD_COMMON["type"](kind, _join(param, "type"))
    _fields(obj, param, _SERVER_VAD if kind == "server_vad" else _SEMANTIC_VAD)


def _transcription(value: Any, param: str) -> None:
    if value is not None:
        _fields(
            value,
            param,
            {
                "model": _optional(_string),
                "language": _optional(_string),
                "languages": _optional(_list_of_strings),
                "keywords": _optional(_list_of_strings),
                "prompt": _optional(_string),
                "delay": _optional(_one_of("minimal", "low", "medium", "high", "xhigh")),
            },
        )


def _noise_reduction(value: Any, param: str) -> None:
    if value is not None:
        _fields(
            value,
            param,
            {
                "type": _optional(_one_of("near_field", "far_field")),
                "strength": _optional(_number(0.0, 1.0)),
            },
        )


def _reasoning(value: Any, param: str) -> None:
    if value is not None:
        _fields(
            value,
            param,
            {"effort": _optional(_one_of("minimal", "low", "medium", "high", "xhigh"))},
        )


# ---------------------------------------------------------------------- GA session
def _ga_audio_format(value: Any, param: str) -> None:
    obj = _fields(
        value,
        param,
        {"type": _one_of("audio/pcm", "audio/pcmu", "audio/pcma"), "rate": _one_of_int(24000)},
    )
    if "type" not in obj:
        raise missing_parameter(_join(param, "type"))


def _ga_voice(value: Any, param: str) -> None:
    if isinstance(value, Mapping):
        _fields(value, param, {"id": _nonempty_string})
    else:
        _nonempty_string(value, param)


def _checker(checks: Mapping[str, Check]) -> Check:
    def run(value: Any, param: str) -> None:
        _fields(value, param, checks)

    return run


_GA_AUDIO_INPUT = _checker(
    {
        "format": _ga_audio_format,
        "transcription": _transcription,
        "noise_reduction": _noise_reduction,
        "turn_detection": _turn_detection,
    }
)
_GA_AUDIO_OUTPUT = _checker(
    {"format": _ga_audio_format, "voice": _ga_voice, "speed": _number(0.25, 1.5)}
)
_ga_audio = _checker({"input": _GA_AUDIO_INPUT, "output": _GA_AUDIO_OUTPUT})


def _output_modalities(value: Any, param: str) -> None:
    _list_of_strings(value, param)
    if value not in (["audio"], ["text"]):
        raise invalid_value(param, "expected ['audio'] or ['text'].")


_GA_SESSION: dict[str, Check] = {
    "type": _string,
    "model": _nonempty_string,
    "instructions": _string,
    "output_modalities": _output_modalities,
    "audio": _ga_audio,
    "include": _list_of_strings,
    "tracing": _anything,
    "tools": _list_of_objects,
    "tool_choice": _string_or_object,
    "parallel_tool_calls": _boolean,
    "reasoning": _reasoning,
    "max_output_tokens": _token_limit,
    "truncation": _string_or_object,
    "prompt": _optional(_object),
}


_TRANSCRIPTION_AUDIO = _checker(
    {
        "input": _checker(
            {
                "format": _ga_audio_format,
                "transcription": _transcription,
                "noise_reduction": _noise_reduction,
                "turn_detection": _turn_detection,
            }
        )
    }
)
_TRANSCRIPTION_SESSION: dict[str, Check] = {
    "type": _string,
    "audio": _TRANSCRIPTION_AUDIO,
    "include": _list_of_strings,
}


def validate_ga_session(value: Any, where: str = "session") -> dict[str, Any]:
    """A GA realtime session config (the multipart ``session`` part, ``session.update``):
    ``type`` must be ``realtime``."""
    obj = require_object(value, where)
    if "type" not in obj:
        raise missing_parameter(_join(where, "type"))
    if obj["type"] != "realtime":
        raise invalid_value(_join(where, "type"), "expected 'realtime'.")
    _fields(obj, where, _GA_SESSION)
    return dict(obj)


def validate_any_session(value: Any, where: str = "session") -> dict[str, Any]:
    """A client_secrets ``session``: a realtime or a transcription session config."""
    obj = require_object(value, where)
    if "type" not in obj:
        raise missing_parameter(_join(where, "type"))
    if obj["type"] == "transcription":
        _fields(obj, where, _TRANSCRIPTION_SESSION)
        return dict(obj)
    if obj["type"] != "realtime":
        raise invalid_value(_join(where, "type"), "expected 'realtime' or 'transcription'.")
    return validate_ga_session(obj, where)


# ---------------------------------------------------------------------- beta session
def _beta_modalities(value: Any, param: str) -> None:
    _list_of_strings(value, param)
    if sorted(value) not in (["text"], ["audio", "text"]):
        raise invalid_value(param, "expected ['text'] or ['audio', 'text'].")


_BETA_FORMAT = _one_of("pcm16", "g711_ulaw", "g711_alaw")
_BETA_SESSION: dict[str, Check] = {
    "model": _nonempty_string,
    "modalities": _beta_modalities,
    "instructions": _string,
    "voice": _nonempty_string,
    "input_audio_format": _BETA_FORMAT,
    "output_audio_format": _BETA_FORMAT,
    "input_audio_transcription": _transcription,
    "turn_detection": _turn_detection,
    "input_audio_noise_reduction": _noise_reduction,
    "tools": _list_of_objects,
    "tool_choice": _string_or_object,
    "temperature": _number(0.6, 1.2),
    "max_response_output_tokens": _token_limit,
    "speed": _number(0.25, 1.5),
    "tracing": _anything,
}


def validate_beta_session(value: Any, where: str = "session") -> dict[str, Any]:
    """A beta session config as carried by ``session.update`` (flat beta field names)."""
    return dict(_fields(value, where, _BETA_SESSION))


# ---------------------------------------------------------------------- REST bodies
def _expires_after(value: Any, param: str, default_s: int) -> int:
    obj = require_object(value, param)
    _fields(
        obj,
        param,
        {
            "anchor": _one_of("created_at"),
            "seconds": _integer(MIN_SECRET_TTL_S, MAX_SECRET_TTL_S),
        },
    )
    if "anchor" not in obj:
        raise missing_parameter(_join(param, "anchor"))
    seconds = obj.get("seconds", default_s)
    assert isinstance(seconds, int)
    return seconds


@dataclass(frozen=True)
class SecretRequest:
    """A validated mint request: the key's lifetime and the session config asked for."""

    ttl_s: int
    session: dict[str, Any]


def validate_client_secret_request(body: Any) -> SecretRequest:
    """``POST /v1/realtime/client_secrets``: ``{expires_after?, session?}`` (both optional,
    as in the SDK; no session means a default realtime session)."""
    obj = require_object(body, "")
    for key in obj:
        if key not in ("expires_after", "session"):
            raise unknown_parameter(key)
    ttl = DEFAULT_GA_SECRET_TTL_S
    if "expires_after" in obj:
        ttl = _expires_after(obj["expires_after"], "expires_after", DEFAULT_GA_SECRET_TTL_S)
    session = obj.get("session", {"type": "realtime"})
    return SecretRequest(ttl, validate_any_session(session, "session"))


def validate_beta_session_request(body: Any, default_ttl_s: int) -> SecretRequest:
    """``POST /v1/realtime/sessions``: a flat beta session plus optional
    ``client_secret.expires_after``."""
    obj = dict(require_object(body, ""))
    ttl = default_ttl_s
    if "client_secret" in obj:
        secret = _fields(obj.pop("client_secret"), "client_secret", {"expires_after": _anything})
        if "expires_after" in secret:
            ttl = _expires_after(
                secret["expires_after"], "client_secret.expires_after", default_ttl_s
            )
    return SecretRequest(ttl, validate_beta_session(obj, ""))


# ---------------------------------------------------------------------- SDP offers
def validate_offer(sdp: str, max_bytes: int) -> None:
    """Reject what OpenAI would reject before trying to answer (400 ``invalid_offer``)."""
    size = len(sdp.encode("utf-8"))
    if size > max_bytes:
        raise invalid_offer(f"the offer is {size} bytes, above the {max_bytes}-byte limit")
    if not sdp.lstrip().startswith("v=0"):
        raise invalid_offer("not an SDP document")
    lines = [line.strip() for line in sdp.splitlines()]
    if not any(line.startswith("m=audio ") for line in lines):
        raise invalid_offer("no audio m-line")
    if not any(line.startswith("a=ice-ufrag:") for line in lines):
        raise invalid_offer("missing a=ice-ufrag")
    if not any(line.startswith("a=ice-pwd:") for line in lines):
        raise invalid_offer("missing a=ice-pwd")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise invalid_offer("missing the DTLS a=fingerprint")
