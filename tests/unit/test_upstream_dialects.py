"""Request bodies, response parsing and redaction of both upstream dialects (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.config import UpstreamConfig
from relay.upstream.base import MintedSession
from relay.upstream.dialects import (
    BetaDialect,
    GaDialect,
    MalformedResponse,
    call_id_from_location,
    dialect_for,
    parse_error,
    redact,
)
from tests.support.openai_oracle import validate_beta_session_body, validate_client_secret_body

CONFIG = UpstreamConfig(
    api_key="sk-test-abcdef0123456789",
    voice="cedar",
    instructions="Ask about Python.",
    vad_threshold=0.6,
    vad_prefix_padding_ms=250,
    vad_silence_duration_ms=700,
    transcription_model="whisper-1",
    secret_ttl_s=120,
)
TURN_DETECTION = {
    "type": "server_vad",
    "threshold": 0.6,
    "prefix_padding_ms": 250,
    "silence_duration_ms": 700,
    "create_response": True,
    "interrupt_response": True,
}
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
MINTED = MintedSession(secret="ek_0123456789abcdef", expires_at=1_900_000_000, model="gpt-x")


# -- GA -------------------------------------------------------------------------------


def test_ga_mint_request_nests_everything_under_session() -> None:
    request = GaDialect().mint_request(CONFIG, "gpt-realtime")
    assert request.path == "/realtime/client_secrets"
    assert request.credential == "api_key"
    assert dict(request.headers) == {}  # no OpenAI-Beta header on GA
    assert request.text is None and not request.params
    assert request.json == {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Ask about Python.",
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": TURN_DETECTION,
                },
                "output": {"voice": "cedar"},
            },
        },
    }
    # OpenAI answers 400 unknown_parameter for anything else at the top level.
    assert set(request.json) == {"expires_after", "session"}
    # The body is plain JSON (no tuples, no dataclasses).
    assert json.loads(json.dumps(request.json)) == request.json


def test_ga_mint_response_reads_value_expiry_and_session_id() -> None:
    data = {
        "value": "ek_68af296e8e408191a1120ab6383263c2",
        "expires_at": 1756310470,
        "session": {
            "type": "realtime",
            "object": "realtime.session",
            "id": "sess_C9CiUVUzUzYIssh3ELY1d",
            "model": "gpt-realtime-2025-08-28",
        },
    }
    minted = GaDialect().parse_mint(data, "gpt-realtime")
    assert minted.secret == "ek_68af296e8e408191a1120ab6383263c2"
    assert minted.expires_at == 1756310470
    assert minted.upstream_session_id == "sess_C9CiUVUzUzYIssh3ELY1d"
    assert minted.model == "gpt-realtime-2025-08-28"
    # The secret stays out of the repr.
    assert "ek_68af" not in repr(minted)


def test_ga_mint_response_without_session_falls_back_to_configured_model() -> None:
    minted = GaDialect().parse_mint({"value": "ek_1", "expires_at": 10.0}, "gpt-realtime")
    assert (minted.model, minted.upstream_session_id, minted.expires_at) == (
        "gpt-realtime",
        None,
        10,
    )


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"expires_at": 1},
        {"value": "", "expires_at": 1},
        {"value": "ek_1"},
        {"value": "ek_1", "expires_at": "soon"},
        {"value": "ek_1", "expires_at": True},
        # The beta shape is not accepted by the GA parser.
        {"client_secret": {"value": "ek_1", "expires_at": 1}},
    ],
)
def test_ga_mint_response_malformed(data: Any) -> None:
    with pytest.raises(MalformedResponse) as info:
        GaDialect().parse_mint(data, "gpt-realtime")
    assert info.value.code == "invalid_response"


def test_ga_sdp_request_posts_raw_sdp_with_the_secret() -> None:
    request = GaDialect().sdp_request(MINTED, OFFER)
    assert request.path == "/realtime/calls"
    assert request.credential == "secret"
    assert dict(request.headers) == {
        "Content-Type": "application/sdp",
        "Accept": "application/sdp",
    }
    assert not request.params and request.json is None
    assert request.text == OFFER


def test_ga_sdp_answer_takes_the_call_id_from_location() -> None:
    answer = GaDialect().parse_sdp({"location": "/v1/realtime/calls/rtc_u1_9c65"}, OFFER)
    assert answer.sdp == OFFER
    assert answer.call_id == "rtc_u1_9c65"
    assert GaDialect().parse_sdp({}, OFFER).call_id is None


@pytest.mark.parametrize(
    ("location", "call_id"),
    [
        ("/v1/realtime/calls/rtc_abc", "rtc_abc"),
        ("https://api.openai.com/v1/realtime/calls/rtc_abc", "rtc_abc"),
        ("/v1/realtime/calls/rtc_abc/", "rtc_abc"),
        ("/v1/realtime/calls/rtc_abc?x=1#f", "rtc_abc"),
        ("  rtc_abc  ", "rtc_abc"),
        ("/", None),
        ("", None),
        (None, None),
    ],
)
def test_call_id_from_location(location: str | None, call_id: str | None) -> None:
    assert call_id_from_location(location) == call_id


@pytest.mark.parametrize("body", ["", '{"error": {"code": "x"}}', "o=- 1 1 IN IP4 0.0.0.0"])
def test_answer_that_is_not_sdp_is_refused(body: str) -> None:
    for dialect in (GaDialect(), BetaDialect()):
        with pytest.raises(MalformedResponse) as info:
            dialect.parse_sdp({"Location": "/v1/realtime/calls/rtc_1"}, body)
        assert info.value.code == "invalid_answer"


def test_ga_hangup_request_uses_the_api_key_and_quotes_the_id() -> None:
    request = GaDialect().hangup_request("rtc_abc")
    assert request is not None
    assert (request.path, request.credential) == ("/realtime/calls/rtc_abc/hangup", "api_key")
    hostile = GaDialect().hangup_request("../../x?y")
    assert hostile is not None
    assert hostile.path == "/realtime/calls/..%2F..%2Fx%3Fy/hangup"


# -- beta -----------------------------------------------------------------------------


def test_beta_mint_request_is_flat_with_the_beta_header() -> None:
    request = BetaDialect().mint_request(CONFIG, "gpt-4o-realtime-preview-2024-12-17")
    assert request.path == "/realtime/sessions"
    assert request.credential == "api_key"
    assert dict(request.headers) == {"OpenAI-Beta": "realtime=v1"}
    assert request.json == {
        "model": "gpt-4o-realtime-preview-2024-12-17",
        "modalities": ["audio", "text"],
        "instructions": "Ask about Python.",
        "voice": "cedar",
        "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": TURN_DETECTION,
    }


def test_beta_mint_response_reads_the_nested_client_secret() -> None:
    data = {
        "id": "sess_001",
        "object": "realtime.session",
        "model": "gpt-4o-realtime-preview-2024-12-17",
        "client_secret": {"value": "ek_abc123", "expires_at": 1734626553},
    }
    minted = BetaDialect().parse_mint(data, "other")
    assert minted == MintedSession(
        secret="ek_abc123",
        expires_at=1734626553,
        model="gpt-4o-realtime-preview-2024-12-17",
        upstream_session_id="sess_001",
    )


@pytest.mark.parametrize(
    "data",
    [
        {"id": "sess_1"},
        {"client_secret": "ek_1"},
        {"client_secret": {"expires_at": 1}},
        {"client_secret": {"value": "ek_1"}},
        # The GA shape is not accepted by the beta parser.
        {"value": "ek_1", "expires_at": 1},
    ],
)
def test_beta_mint_response_malformed(data: Any) -> None:
    with pytest.raises(MalformedResponse):
        BetaDialect().parse_mint(data, "m")


def test_beta_sdp_request_names_the_model_and_sends_the_beta_header() -> None:
    request = BetaDialect().sdp_request(MINTED, OFFER)
    assert request.path == "/realtime"
    assert request.credential == "secret"
    assert dict(request.params) == {"model": "gpt-x"}
    assert request.headers["OpenAI-Beta"] == "realtime=v1"
    assert request.headers["Content-Type"] == "application/sdp"
    assert request.text == OFFER


def test_beta_has_no_call_id_and_no_hangup() -> None:
    answer = BetaDialect().parse_sdp({"Location": "/v1/realtime/calls/rtc_1"}, OFFER)
    assert answer.call_id is None
    assert BetaDialect().hangup_request("rtc_1") is None


def test_dialect_for() -> None:
    assert dialect_for("ga").name == "ga"
    assert dialect_for("beta").name == "beta"
    with pytest.raises(ValueError, match="unknown upstream dialect"):
        dialect_for("v2")


# -- errors and redaction ---------------------------------------------------------------


def _body(error: Any) -> bytes:
    return json.dumps({"error": error}).encode()


def test_parse_error_reads_code_and_message() -> None:
    body = _body(
        {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    )
    assert parse_error(500, body) == (
        "server_error",
        "The server had an error while processing your request.",
    )


def test_parse_error_without_code_falls_back_to_the_status() -> None:
    body = _body({"message": "overloaded", "type": "server_error", "param": None, "code": None})
    assert parse_error(503, body) == ("http_503", "overloaded")
    assert parse_error(502, b"<html>Bad gateway</html>\n") == (
        "http_502",
        "<html>Bad gateway</html>",
    )
    assert parse_error(504, b"") == ("http_504", "upstream answered HTTP 504")
    assert parse_error(500, b'{"detail": "x"}') == ("http_500", "upstream answered HTTP 500")


def test_parse_error_redacts_keys_in_the_message() -> None:
    body = _body(
        {
            "message": "Incorrect API key provided: sk-proj-****abcd. You can find your key...",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    )
    code, message = parse_error(401, body)
    assert code == "invalid_api_key"
    assert "abcd" not in message and "sk-[redacted]" in message


def test_parse_error_redacts_exact_secrets_and_truncates() -> None:
    secret = "weird-secret-without-prefix"
    body = _body({"message": f"bad token {secret} " + "x" * 1000, "code": "bad"})
    code, message = parse_error(400, body, secrets=[secret])
    assert code == "bad"
    assert secret not in message
    assert len(message) <= 300 and message.endswith("…")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-abc123DEF", "key sk-[redacted]"),
        ("key sk-proj-AbC_12-3", "key sk-[redacted]"),
        ("secret ek_68af296e8e40", "secret ek_[redacted]"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer [redacted]"),
        ("(rk-live-123)", "(rk-[redacted])"),
        ("desk-top week_end task-list", "desk-top week_end task-list"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("model", "sent"),
    [
        ("gpt-realtime-2.1", True),
        ("gpt-realtime-2", True),
        ("gpt-realtime-2.1-mini", True),
        ("gpt-realtime-2025-08-28", False),  # a dated gpt-realtime, not a reasoning model
        ("gpt-realtime-1.5", False),
        ("gpt-realtime", False),
    ],
)
def test_reasoning_effort_is_sent_to_reasoning_models_only(model: str, sent: bool) -> None:
    config = CONFIG.model_copy(update={"reasoning_effort": "low"})
    body = GaDialect().mint_request(config, model).json
    assert body is not None
    session = body["session"]
    assert ("reasoning" in session) is sent
    if sent:
        assert session["reasoning"] == {"effort": "low"}
    validate_client_secret_body(body)  # the official SDK accepts the body as sent
    # No effort configured: never sent.
    plain = GaDialect().mint_request(CONFIG, model).json
    assert plain is not None and "reasoning" not in plain["session"]


def test_default_voice_and_no_transcription() -> None:
    config = CONFIG.model_copy(update={"voice": "", "transcription_model": ""})
    session = GaDialect().mint_request(config, "gpt-realtime-2.1").json["session"]  # type: ignore[index]
    assert session["audio"]["output"]["voice"] == "marin"
    assert "transcription" not in session["audio"]["input"]
    beta_model = "gpt-4o-realtime-preview-2024-12-17"
    beta = (
        BetaDialect().mint_request(config.model_copy(update={"dialect": "beta"}), beta_model).json
    )
    assert beta is not None and beta["voice"] == "verse"
    assert "input_audio_transcription" not in beta
    validate_beta_session_body(beta)  # the SDK's beta params accept it
    validate_beta_session_body(BetaDialect().mint_request(CONFIG, beta_model).json or {})
