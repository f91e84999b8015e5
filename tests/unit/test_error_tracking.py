"""Error tracking: the scrubber as pure logic, and nothing initialised without SENTRY_DSN."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk

from relay.admission.tokens import new_api_key, new_invite_token, new_token
from relay.cli import main
from relay.config import ConfigError
from relay.observability import error_tracking, request_context
from relay.observability.error_tracking import FILTERED, scrub_event, scrub_text
from relay.sessions.continuity import new_resume_token
from relay.webhooks.signing import new_secret

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\na=ice-pwd:secretpassword1234\r\n"


def test_scrub_text_removes_tokens_keys_and_sdp() -> None:
    text = (
        "Authorization: Bearer rt_abcdefghijklmnop failed with ek_1234567890abcd and "
        "sk-proj-ABCDEFGH123456 for /stats#token=op-secret&x=1 then " + OFFER
    )
    out = scrub_text(text)
    for secret in ("rt_abcdefghijklmnop", "ek_1234567890abcd", "sk-proj-ABCDEFGH123456"):
        assert secret not in out
    assert "op-secret" not in out and "secretpassword" not in out and "a=ice-pwd" not in out
    assert "Bearer [Filtered]" in out and "#token=[Filtered]&x=1" in out
    assert out.endswith("then [SDP]")


def test_scrub_text_removes_every_credential_the_relay_issues() -> None:
    """Values a stack frame's locals hold under names that say nothing (a reply, a row):
    an interview's candidate_url, a new API key, a resume token, a webhook secret."""
    invite, key, whsec = new_invite_token(), new_api_key(), new_secret()
    resume, _ = new_resume_token()
    user = new_token()
    frame: dict[str, Any] = {
        "reply": {"candidate_url": f"https://relay.example/#invite={invite}"},
        "created": f"({key!r}, 'admin')",
        "answer": f"resumed with {resume}",
        "endpoint": f"Created(secret={whsec!r})",
        "user": user,
    }
    event: Any = {"exception": {"values": [{"stacktrace": {"frames": [{"vars": frame}]}}]}}
    out = str(scrub_event(event))
    for secret in (invite, key, resume, whsec, user):
        assert secret[3:] not in out, secret
        assert secret[6:] not in out, secret


def test_scrub_text_removes_escaped_sdp_and_ice_credentials() -> None:
    """Stack-frame locals and reprs carry an SDP with its line breaks escaped."""
    from aiortc import RTCSessionDescription

    escaped = repr(OFFER)
    assert "v=0\\r\\n" in escaped
    assert scrub_text(f"offer = {escaped}") == "offer = '[SDP]"
    described = repr(RTCSessionDescription(sdp="o=- 1 1 IN IP4 127.0.0.1\r\n", type="offer"))
    out = scrub_text(described)
    assert "IN IP4" not in out and "sdp=[SDP]" in out and "type='offer'" in out
    fragment = "candidate failed: a=ice-ufrag:abcd\r\na=ice-pwd:secretpassword1234\r\n"
    out = scrub_text(repr(fragment))
    assert "abcd" not in out and "secretpassword" not in out
    assert "a=ice-pwd:[Filtered]" in out


def test_scrub_event_walks_the_whole_event() -> None:
    event: dict[str, Any] = {
        "message": "exchange failed",
        "request": {
            "url": "http://127.0.0.1/api/webrtc-exchange",
            "headers": {"Authorization": "Bearer rt_abcdefghijklmnop", "X-Request-ID": "req_1"},
            "data": {"session_id": "is_1", "type": "offer", "sdp": OFFER},
            "query_string": [["token", "rt_abcdefghijklmnop"], ["page", "2"]],
        },
        "extra": {"api_key": "sk-live-123456789", "operator_token": "x", "count": 3},
        "exception": {
            "values": [
                {
                    "value": "upstream refused Bearer ek_abcdefghijkl",
                    "stacktrace": {"frames": [{"vars": {"secret": "ek_abcdefghijkl", "n": 1}}]},
                }
            ]
        },
    }
    out: dict[str, Any] = dict(scrub_event(event))  # type: ignore[arg-type]
    dumped = json.dumps(out)
    for secret in ("rt_abcdefghijklmnop", "ek_abcdefghijkl", "sk-live-123456789", "ice-pwd"):
        assert secret not in dumped, secret
    request = out["request"]
    assert request["headers"]["Authorization"] == FILTERED
    assert request["headers"]["X-Request-ID"] == "req_1"
    assert request["data"]["sdp"] == FILTERED
    assert request["query_string"] == [["token", FILTERED], ["page", "2"]]
    assert out["extra"]["count"] == 3 and out["extra"]["api_key"] == FILTERED


def test_events_carry_the_request_and_session_ids() -> None:
    token = request_context.begin("req_abc")
    try:
        request_context.bind_session("is_xyz")
        out = scrub_event({"message": "boom"})
    finally:
        request_context.end(token)
    assert out["tags"] == {"request_id": "req_abc", "session_id": "is_xyz"}


def test_nothing_initialises_without_sentry_dsn() -> None:
    assert error_tracking.init_error_tracking({}, release="1") is False
    assert error_tracking.init_error_tracking({"SENTRY_DSN": "  "}, release="1") is False
    assert not error_tracking.enabled()
    assert not sentry_sdk.get_client().is_active()
    error_tracking.tag_request("req_1")  # a no-op, not an error
    assert not sentry_sdk.get_client().is_active()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"SENTRY_DSN": "https://k@o1.ingest.example/1", "SENTRY_TRACES_SAMPLE_RATE": "lots"},
            "SENTRY_TRACES_SAMPLE_RATE: a number within 0..1",
        ),
        (
            {"SENTRY_DSN": "https://k@o1.ingest.example/1", "SENTRY_TRACES_SAMPLE_RATE": "2"},
            "SENTRY_TRACES_SAMPLE_RATE: a number within 0..1",
        ),
        ({"SENTRY_DSN": "sentry-key-k9 in the wrong place"}, "SENTRY_DSN: not a Sentry DSN"),
    ],
)
def test_a_bad_sentry_variable_is_a_configuration_error_naming_it(
    environ: dict[str, str], message: str
) -> None:
    # As for a setting (README: a bad value stops the relay with a message naming it):
    # `relay serve` prints it and exits 2, no traceback; the DSN itself is not echoed.
    with pytest.raises(ConfigError) as caught:
        error_tracking.init_error_tracking(environ, release="1")
    assert str(caught.value) == message
    assert not error_tracking.enabled()
    assert not sentry_sdk.get_client().is_active()


def test_relay_serve_stops_on_a_bad_sentry_variable_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.toml: the defaults
    monkeypatch.setenv("SENTRY_DSN", "https://k@o1.ingest.example/1")
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "lots")
    assert main(["serve", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "configuration error: SENTRY_TRACES_SAMPLE_RATE: a number within 0..1\n"
    assert not sentry_sdk.get_client().is_active()
