"""The management API's pure parts: the operation registry and its OpenAPI document,
cursors, Idempotency-Key fingerprints, the storable field types, an interview's
interviewer in the mint bodies, and credit scoped to an interview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, ValidationError

from relay.admission.invites import InterviewGrant
from relay.admission.service import Caller
from relay.admission.users import UserRecord
from relay.config import LimitsConfig, UpstreamConfig
from relay.errors import ApiError
from relay.fields import storable_json, storable_text, utc
from relay.interviews.models import InterviewCreate
from relay.observability.metrics import MetricsRegistry
from relay.sessions.registry import SessionRegistry
from relay.upstream.base import SessionOverrides
from relay.upstream.dialects import beta_mint_body, ga_mint_body
from relay.web.api import Api, Operation, Reply, Response
from relay.web.idempotency import request_hash
from relay.web.openapi import document, errors_of
from relay.web.pagination import decode_cursor, encode_cursor, page_of
from tests.support.openai_oracle import validate_beta_session_body, validate_client_secret_body

CONFIG = UpstreamConfig(api_key="sk-test-0123456789abcdef", instructions="The default one.")


class _Body(BaseModel):
    name: str


async def _run(call: object) -> Reply:
    raise AssertionError("not called")


def _op(**changes: object) -> Operation:
    fields: dict[str, object] = {
        "method": "POST",
        "path": "/api/things",
        "operation_id": "createThing",
        "summary": "A thing",
        "auth": "admin",
        "tag": "things",
        "responses": (Response(201, "Made.", _Body),),
        "run": _run,
        "body": _Body,
        "idempotent": True,
    }
    fields.update(changes)
    return Operation(**fields)  # type: ignore[arg-type]


def test_every_post_must_take_an_idempotency_key_and_have_one_handler() -> None:
    with pytest.raises(ValueError, match="Idempotency-Key"):
        _op(idempotent=False)
    with pytest.raises(ValueError, match="exactly one"):
        _op(raw=_run)


def test_an_operation_is_registered_once() -> None:
    api = Api()
    api.add(_op())
    with pytest.raises(ValueError, match="twice"):
        api.add(_op(operation_id="other"))
    with pytest.raises(ValueError, match="twice"):
        api.add(_op(path="/api/else"))


def test_the_document_carries_models_auth_and_every_error_of_the_operations_kind() -> None:
    api = Api()
    op = _op(errors={409: ("thing_exists",)})
    api.add(op)
    doc = document(api)
    post = doc["paths"]["/api/things"]["post"]
    assert post["security"] == [{"apiKey": []}]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/_Body"
    }
    assert doc["components"]["schemas"]["_Body"]["required"] == ["name"]
    errors = errors_of(op)
    assert errors[401] == ("missing_token", "invalid_token")
    assert errors[409] == ("idempotency_key_in_use", "idempotency_key_unreadable", "thing_exists")
    assert errors[422] == ("idempotency_key_reused",)
    assert {400, 408, 413, 429, 503} <= set(errors)
    assert "`thing_exists`" in post["responses"]["409"]["description"]
    assert [p["name"] for p in post["parameters"]] == ["Idempotency-Key"]


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    at = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "iv_1")) == (at, "iv_1")
    assert decode_cursor(None) is None
    for bad in ("x", "bm90LWpzb24", encode_cursor(at, "a\x00b"), "W1siYSJdXQ"):
        with pytest.raises(ApiError) as refused:
            decode_cursor(bad)
        assert refused.value.status == 400 and refused.value.code == "invalid_cursor"
    rows = [(at - timedelta(seconds=i), f"id{i}") for i in range(3)]
    assert page_of(rows, 3, lambda r: r) == (rows, None)
    items, cursor = page_of(rows, 2, lambda r: r)
    assert items == rows[:2] and decode_cursor(cursor) == rows[1]


def test_the_same_request_has_the_same_fingerprint_whatever_its_json_spelling() -> None:
    a = request_hash("POST", "/api/interviews", b'{"a": 1, "b": [1, 2]}')
    assert a == request_hash("POST", "/api/interviews", b'{ "b":[1,2],"a":1 }')
    assert a != request_hash("POST", "/api/interviews", b'{"a": 2, "b": [1, 2]}')
    assert a != request_hash("POST", "/api/keys", b'{"a": 1, "b": [1, 2]}')
    assert request_hash("POST", "/x", b"\xff") != request_hash("POST", "/x", b"\xfe")


def test_only_what_postgresql_stores_passes() -> None:
    assert storable_text("ok é") == "ok é"
    for bad in ("a\x00b", "\ud800"):
        with pytest.raises(ValueError):
            storable_text(bad)
    with pytest.raises(ValueError):
        storable_json({"k": "a\u0000"})
    with pytest.raises(ValueError):
        storable_json({"k": float("nan")})
    naive = datetime(2026, 1, 1, 8, 0)
    assert utc(naive) == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        utc(
            datetime(1, 1, 1, 0, 30, tzinfo=datetime.fromisoformat("2000-01-01T00:00+01:00").tzinfo)
        )


def test_an_interview_is_validated_field_by_field() -> None:
    spec = InterviewCreate.model_validate(
        {"candidate": {"email": "a@b.c"}, "instructions": "x", "expires_at": "2999-01-01T00:00"}
    )
    assert spec.expires_at is not None and spec.expires_at.tzinfo is UTC
    assert spec.recording is True and spec.metadata == {}
    for bad in (
        {"candidate": {"email": "a@b.c"}, "instructions": "x", "metadata": {"k": "v" * 9000}},
        {"candidate": {"email": "a@b.c"}, "instructions": "x", "voice": "Marin!"},
        {"candidate": {"email": "a b@c"}, "instructions": "x"},
        {"candidate": {"email": "a@b.c", "phone": "1"}, "instructions": "x"},
    ):
        with pytest.raises(ValidationError):
            InterviewCreate.model_validate(bad)


@pytest.mark.parametrize(("builder", "dialect"), [(ga_mint_body, "ga"), (beta_mint_body, "beta")])
def test_an_interviews_interviewer_replaces_the_configured_one_in_the_mint(
    builder: object, dialect: str
) -> None:
    overrides = SessionOverrides(
        instructions="Interview for the data role.", voice="cedar", language="fr"
    )
    assert callable(builder)
    body = builder(
        CONFIG, "gpt-realtime-2.1" if dialect == "ga" else "gpt-4o-realtime-preview", overrides
    )
    session = body["session"] if dialect == "ga" else body
    assert session["instructions"].startswith("Interview for the data role.")
    assert "'fr'" in session["instructions"] and "The default one." not in session["instructions"]
    if dialect == "ga":
        assert session["audio"]["output"]["voice"] == "cedar"
        assert session["audio"]["input"]["transcription"]["language"] == "fr"
        validate_client_secret_body(body)
    else:
        assert session["voice"] == "cedar"
        assert session["input_audio_transcription"]["language"] == "fr"
        validate_beta_session_body(body)
    default = builder(CONFIG, "m", None)
    default_session = default["session"] if dialect == "ga" else default
    assert default_session["instructions"] == "The default one."


def _grant(budget: float) -> InterviewGrant:
    return InterviewGrant(
        id="iv_" + "1" * 32,
        status="scheduled",
        instructions="x",
        voice=None,
        language=None,
        max_duration_s=600,
        recording=True,
        expires_at=datetime.now(UTC) + timedelta(days=1),
        budget_left_s=budget,
    )


def test_an_invites_credit_is_its_interviews_budget_and_it_owns_only_its_sessions() -> None:
    user = UserRecord(id=7, email="a@b.c", active=True, remaining_seconds=0)
    plain = Caller(user, "h" * 64)
    invited = Caller(user, "i" * 64, interview=_grant(420.0))
    assert plain.credit_s == 0.0 and invited.credit_s == 420.0
    assert invited.owns(7, "iv_" + "1" * 32) and not invited.owns(7, None)
    assert not invited.owns(7, "iv_" + "2" * 32)
    assert plain.owns(7, None) and not plain.owns(8, None)
    expired = InterviewGrant(**{**_grant(1).__dict__, "expires_at": datetime.now(UTC)})
    assert expired.effective_status() == "expired"


def test_seconds_promised_to_an_interviews_sessions_do_not_count_against_the_user() -> None:
    registry = SessionRegistry(LimitsConfig(per_user_concurrent_sessions=5), MetricsRegistry())
    common = {
        "user_id": 7,
        "token_hash": "h" * 64,
        "request_id": "r",
        "credit_s": 600.0,
        "pending_ttl_s": 60,
    }
    interview = registry.reserve(max_duration_s=300, interview_id="iv_a", **common)  # type: ignore[arg-type]
    own = registry.reserve(max_duration_s=100, **common)  # type: ignore[arg-type]
    registry.set_state(interview.session_id, "active")
    registry.set_state(own.session_id, "active")
    assert registry.reserved_seconds(7) == 100
    assert registry.reserved_seconds(7, interview_id="iv_a") == 300
    assert registry.reserved_seconds(7, interview_id="iv_b") == 0
