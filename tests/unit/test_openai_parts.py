"""The pure parts of the OpenAI-compatible routes: reading OpenAI's offer forms, errors in
OpenAI's shape, the redacted effective session, call ids, their OpenAPI description."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from relay.config import Settings
from relay.errors import ApiError
from relay.upstream.base import MintedSession, SessionOverrides
from relay.web import cors, openapi, routes_openai
from relay.web.api import Api
from relay.web.models_openai import ClientSecretRequest
from relay.web.openai_session import effective_session
from relay.web.openai_shape import openai_error_body, openai_error_headers
from relay.web.routes_openai import call_id_of, read_offer, session_id_of
from tests.support.openai_oracle import validate_client_secret_response

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
BOUNDARY = "xYzBoundary"


def _form(*parts: tuple[str, str, str]) -> tuple[str, bytes]:
    """A multipart/form-data body as OpenAI's clients send it: (name, content type, text)."""
    lines = []
    for name, content_type, text in parts:
        lines += [
            f"--{BOUNDARY}",
            f'Content-Disposition: form-data; name="{name}"',
            f"Content-Type: {content_type}",
            "",
            text,
        ]
    lines.append(f"--{BOUNDARY}--")
    return f"multipart/form-data; boundary={BOUNDARY}", "\r\n".join(lines).encode()


def _refused(content_type: str, raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as refused:
        read_offer(content_type, raw)
    return refused.value


def test_the_offer_is_the_body_or_the_sdp_part_of_openais_form() -> None:
    assert read_offer("application/sdp", OFFER.encode()) == OFFER
    assert read_offer("Application/SDP; charset=utf-8", OFFER.encode()) == OFFER
    content_type, raw = _form(
        ("sdp", "application/sdp", OFFER),
        ("session", "application/json", '{"type": "realtime", "instructions": "x"}'),
    )
    assert read_offer(content_type, raw) == OFFER


@pytest.mark.parametrize(
    ("parts", "code", "param"),
    [
        ((("session", "application/json", "{}"),), "missing_required_parameter", "sdp"),
        (
            (("sdp", "application/sdp", OFFER), ("model", "text/plain", "x")),
            "unknown_parameter",
            "model",
        ),
        (
            (("sdp", "application/sdp", OFFER), ("session", "application/json", "[1]")),
            "invalid_value",
            "session",
        ),
        (
            (("sdp", "application/sdp", OFFER), ("session", "application/json", "{no")),
            "invalid_value",
            "session",
        ),
    ],
)
def test_a_bad_form_is_refused_naming_the_part(
    parts: tuple[tuple[str, str, str], ...], code: str, param: str
) -> None:
    error = _refused(*_form(*parts))
    assert (error.status, error.code, error.details.get("param")) == (400, code, param)


def test_other_bodies_are_refused() -> None:
    assert _refused("application/json", b"{}").code == "unsupported_content_type"
    assert _refused("application/sdp", b"v=0\xff\xfe").code == "invalid_offer"
    assert _refused("multipart/form-data; boundary=zz", b"not a form").status == 400


def test_errors_take_openais_shape_with_the_retry_hint() -> None:
    final = ApiError(409, "session_already_exchanged", "This session was already used.")
    assert openai_error_body(final, "req_1") == {
        "error": {
            "message": "This session was already used.",
            "type": "invalid_request_error",
            "code": "session_already_exchanged",
            "param": None,
        },
        "request_id": "req_1",
    }
    assert openai_error_headers(final) == {"x-should-retry": "false"}
    busy = ApiError(503, "draining", "Shutting down.", retryable=True, retry_after_s=30)
    assert openai_error_body(busy, "req_2")["error"]["type"] == "server_error"
    assert openai_error_headers(busy) == {"Retry-After": "30", "x-should-retry": "true"}
    limited = ApiError(429, "rate_limited", "Slow down.", retryable=True, retry_after_s=1)
    assert openai_error_body(limited, "req_3")["error"]["type"] == "requests"
    # The field at fault: given, or the first of the relay's validation errors.
    named = ApiError(400, "invalid_request", "x", details={"errors": [{"field": "sdp"}]})
    assert openai_error_body(named, "r")["error"]["param"] == "sdp"


def test_the_client_secret_request_is_openais_plus_the_notice() -> None:
    asked = ClientSecretRequest.model_validate(
        {
            "expires_after": {"anchor": "created_at", "seconds": 120},
            "session": {"type": "realtime", "instructions": "ignored"},
            "recording_notice_shown": True,
        }
    )
    assert asked.expires_after is not None and asked.expires_after.seconds == 120
    for bad in ({"model": "gpt-realtime"}, {"expires_after": {"seconds": 5}}, {"session": "x"}):
        with pytest.raises(ValidationError):
            ClientSecretRequest.model_validate(bad)


UPSTREAM_SESSION: dict[str, Any] = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_up",
    "model": "gpt-realtime-2.1",
    "instructions": "The rubric: never tell the candidate.",
    "tools": [{"type": "function", "name": "score", "parameters": {}}],
    "tracing": "auto",
    "prompt": None,
    "expires_at": 1_900_000_000,
    "output_modalities": ["audio"],
    "audio": {
        "input": {"turn_detection": {"type": "server_vad", "threshold": 0.5}},
        "output": {"voice": "marin", "format": {"type": "audio/pcm", "rate": 24000}},
    },
}


def test_the_effective_session_is_the_upstreams_without_the_interviewer() -> None:
    minted = MintedSession(
        "ek_upstream", 1_900_000_000, "gpt-realtime-2.1", "sess_up", session=UPSTREAM_SESSION
    )
    session = effective_session(Settings(), minted, None)
    assert not {"instructions", "tools", "tracing", "prompt"} & set(session)
    assert session["audio"]["output"]["voice"] == "marin"
    assert (session["id"], session["model"]) == ("sess_up", "gpt-realtime-2.1")
    validate_client_secret_response(
        {"value": "ek_x", "expires_at": 1_900_000_000, "session": session}
    )


def test_without_a_ga_answer_the_session_asked_for_is_shown_redacted() -> None:
    minted = MintedSession("ek_upstream", 1_900_000_000, "gpt-4o-realtime-preview-2024-12-17")
    session = effective_session(
        Settings(), minted, SessionOverrides(instructions="Private", voice="cedar")
    )
    assert "instructions" not in session and session["audio"]["output"]["voice"] == "cedar"
    assert (session["type"], session["object"]) == ("realtime", "realtime.session")


def test_call_ids_are_the_sessions() -> None:
    session_id = "is_" + "ab" * 16
    call_id = call_id_of(session_id)
    assert call_id == "rtc_" + "ab" * 16 and session_id_of(call_id) == session_id
    for junk in ("rtc_xyz", "is_" + "ab" * 16, "rtc_" + "AB" * 16, "rtc_" + "ab" * 16 + "/.."):
        assert session_id_of(junk) is None


def test_the_openapi_document_describes_the_openai_operations() -> None:
    api = Api()
    routes_openai.register(api)
    document = openapi.document(api)
    calls = document["paths"]["/v1/realtime/calls"]["post"]
    assert calls["tags"] == ["openai"]
    assert set(calls["requestBody"]["content"]) == {"application/sdp", "multipart/form-data"}
    assert calls["security"] == [{"clientSecret": []}]
    assert "application/sdp" in calls["responses"]["201"]["content"]
    error = calls["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/OpenAIErrorBody")
    hangup = document["paths"]["/v1/realtime/calls/{call_id}/hangup"]["post"]
    assert hangup["security"] == [
        {"clientSecret": []},
        {"candidate": []},
        {"operator": []},
        {"apiKey": []},
    ]
    names = [p["name"] for p in calls["parameters"]]
    assert "Idempotency-Key" in names
    assert set(cors.cross_origin_paths(api)) == set(document["paths"])
