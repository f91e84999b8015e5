"""The official ``openai`` SDK as the oracle of the Realtime protocol (test dependency only).

Every server event is validated against the SDK's ``RealtimeServerEvent`` union and every
request body against the SDK's request types. Pydantic enforces types and literals (a
``part.type`` of ``"output_audio"`` fails), and ``strict_extras`` adds what the SDK's
lenient models let through: fields the SDK does not declare. The only undeclared fields
accepted are the ones the real service sends on session objects (``UNDECLARED_BY_SDK``).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import pydantic
from openai.types.beta.realtime import RealtimeServerEvent as BetaRealtimeServerEvent
from openai.types.beta.realtime.session_create_params import (
    SessionCreateParams as BetaSessionCreateParams,
)
from openai.types.realtime import (
    RealtimeClientEvent,
    RealtimeServerEvent,
    RealtimeSessionCreateRequest,
    RealtimeTranscriptionSessionCreateRequest,
)
from openai.types.realtime.client_secret_create_params import ClientSecretCreateParams
from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse

SDK_VERSION = "3.57.0"


def _by_type(union: Any) -> dict[str, pydantic.TypeAdapter[Any]]:
    """One adapter per event ``type`` literal of an SDK event union (precise messages)."""
    members = typing.get_args(union)
    while len(members) == 2 and not isinstance(members[0], type):  # Annotated[Union, info]
        members = typing.get_args(members[0])
    table: dict[str, pydantic.TypeAdapter[Any]] = {}
    for member in members:
        for literal in typing.get_args(member.model_fields["type"].annotation):
            table[literal] = pydantic.TypeAdapter(member)
    return table


_SERVER_EVENTS = _by_type(RealtimeServerEvent)
_CLIENT_EVENTS = _by_type(RealtimeClientEvent)
# Every GA client event type the SDK models (a simulator must answer each as the service does).
CLIENT_EVENT_TYPES: frozenset[str] = frozenset(_CLIENT_EVENTS)
# The beta dialect (still modelled by the SDK under openai.types.beta.realtime).
_BETA_SERVER_EVENTS = _by_type(BetaRealtimeServerEvent)
_BETA_SESSION_PARAMS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(BetaSessionCreateParams)
_SECRET_PARAMS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ClientSecretCreateParams)
_SECRET_RESPONSE: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ClientSecretCreateResponse)

# Fields the real GA service sends on the session object of session.created/updated and of
# the client_secrets reply that the SDK's request-shaped models do not declare.
UNDECLARED_BY_SDK: frozenset[tuple[str, str]] = frozenset(
    {
        ("RealtimeSessionCreateRequest", "id"),
        ("RealtimeSessionCreateRequest", "object"),
        ("RealtimeSessionCreateRequest", "expires_at"),
        ("RealtimeTranscriptionSessionCreateRequest", "id"),
        ("RealtimeTranscriptionSessionCreateRequest", "object"),
        ("RealtimeTranscriptionSessionCreateRequest", "expires_at"),
        # The beta dialect's session object (openai.types.beta.realtime.Session).
        ("Session", "object"),
        ("Session", "expires_at"),
    }
)


class OracleMismatch(AssertionError):
    """A payload the SDK's models refuse (or fields they do not know)."""


def strict_extras(model: Any, where: str = "") -> None:
    """Raise when ``model`` (recursively) holds fields its SDK class does not declare."""
    if isinstance(model, pydantic.BaseModel):
        extra = model.__pydantic_extra__ or {}
        name = type(model).__name__
        unknown = sorted(k for k in extra if (name, k) not in UNDECLARED_BY_SDK)
        if unknown:
            raise OracleMismatch(f"{where or name}: fields unknown to the SDK: {unknown}")
        for field in type(model).model_fields:
            strict_extras(getattr(model, field), f"{where}.{field}" if where else field)
    elif isinstance(model, list | tuple):
        for i, item in enumerate(model):
            strict_extras(item, f"{where}[{i}]")
    elif isinstance(model, Mapping):
        for key, item in model.items():
            strict_extras(item, f"{where}.{key}")


def _validate(adapter: pydantic.TypeAdapter[Any], payload: Any, what: str) -> Any:
    try:
        model = adapter.validate_python(payload)
    except pydantic.ValidationError as exc:
        raise OracleMismatch(f"{what} fails the SDK's model: {exc}\npayload: {payload}") from None
    strict_extras(model, what)
    return model


def _validate_event(table: dict[str, pydantic.TypeAdapter[Any]], event: Any, what: str) -> Any:
    type_ = event.get("type") if isinstance(event, Mapping) else None
    adapter = table.get(type_) if isinstance(type_, str) else None
    if adapter is None:
        raise OracleMismatch(f"{what} type {type_!r} is not in the SDK's union")
    return _validate(adapter, dict(event), f"{what} {type_!r}")


def validate_server_event(event: Mapping[str, Any], dialect: str = "ga") -> Any:
    """The SDK model of one server event (raises ``OracleMismatch``)."""
    table = _BETA_SERVER_EVENTS if dialect == "beta" else _SERVER_EVENTS
    return _validate_event(table, event, f"{dialect} server event")


def validate_beta_session_body(body: Mapping[str, Any]) -> None:
    """``POST /v1/realtime/sessions`` (beta): the SDK's beta ``SessionCreateParams``."""
    unknown = sorted(set(body) - set(BetaSessionCreateParams.__annotations__))
    if unknown:
        raise OracleMismatch(f"beta sessions body: parameters unknown to the SDK: {unknown}")
    try:
        _BETA_SESSION_PARAMS.validate_python(dict(body))
    except pydantic.ValidationError as exc:
        raise OracleMismatch(f"beta sessions body fails the SDK's params: {exc}") from None


def validate_client_event(event: Mapping[str, Any]) -> Any:
    """The SDK model of one client event (raises ``OracleMismatch``)."""
    return _validate_event(_CLIENT_EVENTS, event, "client event")


def validate_session_config(session: Mapping[str, Any]) -> Any:
    """A realtime or transcription session config, as sent in a request."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
        RealtimeTranscriptionSessionCreateRequest
        if session.get("type") == "transcription"
        else RealtimeSessionCreateRequest
    )
    return _validate(adapter, dict(session), "session")


def validate_client_secret_body(body: Mapping[str, Any]) -> None:
    """``POST /v1/realtime/client_secrets``: the SDK's ``ClientSecretCreateParams``."""
    unknown = sorted(set(body) - set(ClientSecretCreateParams.__annotations__))
    if unknown:
        raise OracleMismatch(f"client_secrets body: parameters unknown to the SDK: {unknown}")
    try:
        _SECRET_PARAMS.validate_python(dict(body))
    except pydantic.ValidationError as exc:
        raise OracleMismatch(f"client_secrets body fails the SDK's params: {exc}") from None
    if "session" in body:
        validate_session_config(body["session"])


def validate_client_secret_response(body: Mapping[str, Any]) -> Any:
    """The answer of ``POST /v1/realtime/client_secrets``: the SDK's
    ``ClientSecretCreateResponse``, with no field the SDK does not declare."""
    return _validate(_SECRET_RESPONSE, dict(body), "client_secrets answer")
