"""Simulator request validation: client-secret and beta session bodies, session configs, offers."""

from __future__ import annotations

from typing import Any

import pytest

from relay.upstream.simulator.errors import SimHttpError
from relay.upstream.simulator.validation import (
    validate_beta_session_request,
    validate_client_secret_request,
    validate_ga_session,
    validate_offer,
)
from tests.support.openai_oracle import validate_client_secret_body

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4004858598 4004858598 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 35728 UDP/TLS/RTP/SAVPF 96 0 8",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 35728 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:e1WP",
        "a=ice-pwd:5xaagATQOlOzFEq31akhkO",
        "a=fingerprint:sha-256 C4:8F:BF:44:65:03:EE:C2:51:E0:34:96:AA:04:92:48:B0:7C:EC:7D:A3",
        "a=setup:actpass",
        "m=application 33340 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 127.0.0.1",
        "a=mid:1",
        "a=sctp-port:5000",
        "",
    ]
)


def _error(call: Any, *args: Any) -> SimHttpError:
    with pytest.raises(SimHttpError) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------------- client_secrets
def test_minimal_client_secret_request_gets_the_default_lifetime() -> None:
    request = validate_client_secret_request({"session": {"type": "realtime"}})
    assert request.ttl_s == 600
    assert request.session == {"type": "realtime"}


def test_full_ga_session_is_accepted() -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Interview the candidate.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "noise_reduction": {"type": "near_field"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.6,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "create_response": True,
                        "interrupt_response": True,
                        "idle_timeout_ms": None,
                    },
                },
                "output": {"voice": "marin", "speed": 1.1, "format": {"type": "audio/pcmu"}},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
        },
    }
    request = validate_client_secret_request(body)
    assert request.ttl_s == 120
    assert request.session["model"] == "gpt-realtime"


@pytest.mark.parametrize("key", ["type", "model", "voice"])
def test_top_level_session_fields_are_unknown_parameters(key: str) -> None:
    error = _error(
        validate_client_secret_request, {key: "realtime", "session": {"type": "realtime"}}
    )
    assert (error.status, error.code, error.param) == (400, "unknown_parameter", key)
    assert key in error.message


@pytest.mark.parametrize(
    ("seconds", "code"),
    [(9, "integer_below_min_value"), (7201, "integer_above_max_value")],
)
def test_expires_after_seconds_bounds(seconds: int, code: str) -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": seconds},
        "session": {"type": "realtime"},
    }
    error = _error(validate_client_secret_request, body)
    assert (error.code, error.param) == (code, "expires_after.seconds")


def test_expires_after_bounds_are_inclusive() -> None:
    for seconds in (10, 7200):
        body = {
            "expires_after": {"anchor": "created_at", "seconds": seconds},
            "session": {"type": "realtime"},
        }
        assert validate_client_secret_request(body).ttl_s == seconds


def test_expires_after_needs_an_anchor() -> None:
    error = _error(
        validate_client_secret_request,
        {"expires_after": {"seconds": 60}, "session": {"type": "realtime"}},
    )
    assert (error.code, error.param) == ("missing_required_parameter", "expires_after.anchor")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"session": {}}, "missing_required_parameter", "session.type"),
        ({"session": {"type": "translation"}}, "invalid_value", "session.type"),
        (
            {"session": {"type": "transcription", "model": "gpt-transcribe"}},
            "unknown_parameter",
            "session.model",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"delay": "soon"}}},
                }
            },
            "invalid_value",
            "session.audio.input.transcription.delay",
        ),
        (
            {"session": {"type": "realtime", "modalities": ["audio"]}},
            "unknown_parameter",
            "session.modalities",
        ),
        (
            {"session": {"type": "realtime", "audio": {"input": {"vad": {}}}}},
            "unknown_parameter",
            "session.audio.input.vad",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}
                    },
                }
            },
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"threshold": 0.5}}},
                }
            },
            "missing_required_parameter",
            "session.audio.input.turn_detection.type",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}
                    },
                }
            },
            "unknown_parameter",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"session": {"type": "realtime", "output_modalities": ["audio", "text"]}},
            "invalid_value",
            "session.output_modalities",
        ),
        ({"session": {"type": "realtime", "model": 5}}, "invalid_type", "session.model"),
        (
            {"session": {"type": "realtime", "temperature": 0.8}},
            "unknown_parameter",
            "session.temperature",
        ),
        ({"session": "realtime"}, "invalid_type", "session"),
    ],
)
def test_invalid_client_secret_bodies(body: Any, code: str, param: str) -> None:
    error = _error(validate_client_secret_request, body)
    assert (error.status, error.code, error.param) == (400, code, param)


@pytest.mark.parametrize(
    "body",
    [
        {},  # no session: a default realtime session, as the SDK allows
        {"session": {"type": "transcription"}},
        {
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "transcription": {"model": "gpt-realtime-whisper", "delay": "low"},
                        "noise_reduction": {"type": "near_field"},
                    }
                },
            }
        },
        {
            "session": {
                "type": "realtime",
                "model": "gpt-audio-1.5",
                "reasoning": {"effort": "low"},
                "audio": {
                    "input": {
                        "noise_reduction": {"type": "far_field"},
                        "transcription": {"model": "gpt-transcribe", "keywords": ["Kafka"]},
                    }
                },
            }
        },
    ],
)
def test_requests_the_sdk_allows_are_accepted(body: dict[str, Any]) -> None:
    validate_client_secret_body(body)  # the SDK's own params accept it…
    request = validate_client_secret_request(body)  # …and so does the simulator
    assert request.session["type"] == body.get("session", {"type": "realtime"})["type"]


def test_body_must_be_an_object() -> None:
    assert _error(validate_client_secret_request, ["session"]).code == "invalid_type"


def test_session_update_shape_reuses_the_ga_validator_with_its_path() -> None:
    error = _error(validate_ga_session, {"type": "realtime", "voice": "marin"}, "session")
    assert (error.code, error.param) == ("unknown_parameter", "session.voice")


# ---------------------------------------------------------------------- beta /sessions
def test_beta_session_request_defaults_to_the_given_lifetime() -> None:
    request = validate_beta_session_request(
        {
            "model": "gpt-4o-realtime-preview-2024-12-17",
            "voice": "verse",
            "modalities": ["audio", "text"],
        },
        60,
    )
    assert request.ttl_s == 60
    assert request.session["voice"] == "verse"


def test_beta_session_request_honours_client_secret_expires_after() -> None:
    body = {"client_secret": {"expires_after": {"anchor": "created_at", "seconds": 300}}}
    assert validate_beta_session_request(body, 60).ttl_s == 300


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"type": "realtime"}, "unknown_parameter", "type"),
        ({"output_modalities": ["audio"]}, "unknown_parameter", "output_modalities"),
        ({"temperature": 2.0}, "invalid_value", "temperature"),
        ({"input_audio_format": "opus"}, "invalid_value", "input_audio_format"),
        (
            {"turn_detection": {"type": "server_vad", "silence_duration_ms": -1}},
            "integer_below_min_value",
            "turn_detection.silence_duration_ms",
        ),
    ],
)
def test_invalid_beta_bodies(body: Any, code: str, param: str) -> None:
    error = _error(validate_beta_session_request, body, 60)
    assert (error.code, error.param) == (code, param)


# ---------------------------------------------------------------------- offers
def test_a_complete_offer_passes() -> None:
    validate_offer(OFFER, 32768)


@pytest.mark.parametrize(
    ("sdp", "detail"),
    [
        ('{"type": "offer"}', "not an SDP document"),
        (OFFER.replace("m=audio", "m=video"), "no audio m-line"),
        (OFFER.replace("a=ice-ufrag:e1WP\r\n", ""), "ice-ufrag"),
        (OFFER.replace("a=ice-pwd:5xaagATQOlOzFEq31akhkO\r\n", ""), "ice-pwd"),
        (
            "\r\n".join(line for line in OFFER.split("\r\n") if "fingerprint" not in line),
            "fingerprint",
        ),
    ],
)
def test_bad_offers_are_invalid_offer(sdp: str, detail: str) -> None:
    error = _error(validate_offer, sdp, 32768)
    assert (error.status, error.code) == (400, "invalid_offer")
    assert detail in error.message
    assert "WHIP-compliant" in error.message


def test_an_offer_above_the_limit_is_refused() -> None:
    error = _error(validate_offer, OFFER + "a=x-padding:" + "x" * 1000 + "\r\n", 1000)
    assert error.code == "invalid_offer"
    assert "limit" in error.message
