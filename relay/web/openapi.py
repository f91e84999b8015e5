"""The OpenAPI 3.1 document of the API, generated from the operation registry
(relay.web.api): paths, parameters, request bodies and answers come from the same
pydantic models the handlers validate with (JSON Schema 2020-12, as OpenAPI 3.1 takes
it), errors from each operation's list plus those every operation of its kind answers
(credentials, bodies, Idempotency-Key, the database). Served at ``GET /api/openapi.json``
to anyone: it describes the API, it holds nothing of a deployment. The OpenAI-compatible
routes (tag ``openai``, under ``/v1``) are in it too, with their errors in OpenAI's shape.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from relay import __version__
from relay.web.api import Api, Auth, Operation, Response
from relay.web.idempotency import HEADER as IDEMPOTENCY_HEADER
from relay.web.models_openai import OpenAIErrorBody
from relay.web.openai_shape import is_openai_path
from relay.web.schemas import ErrorBody

OPENAPI_PATH = "/api/openapi.json"
_REF = "#/components/schemas/{model}"
# (model, mode) → its reference in components.schemas.
Refs = Mapping[Any, Any]

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "candidate": {
        "type": "http",
        "scheme": "bearer",
        "description": "A candidate's user token (rt_…) or an interview's invite (ri_…, "
        "from the candidate link).",
    },
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (rk_…, scope admin or read); the operator token is an "
        "admin key.",
    },
    "operator": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator token (RELAY_OPERATOR_TOKEN).",
    },
    "clientSecret": {
        "type": "http",
        "scheme": "bearer",
        "description": "The relay's own ek_ client secret of one session "
        "(POST /v1/realtime/client_secrets).",
    },
}
_SECURITY: dict[Auth, str] = {
    "candidate": "candidate",
    "read": "apiKey",
    "admin": "apiKey",
    "operator": "operator",
    "client_secret": "clientSecret",
}

_AUTH_ERRORS: dict[int, tuple[str, ...]] = {
    401: ("missing_token", "invalid_token"),
    # A valid credential of a kind the operation does not take (relay.web.caller).
    403: ("insufficient_scope",),
    429: ("too_many_failed_authentications",),
}
_BODY_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("invalid_json",),
    408: ("body_timeout",),
    413: ("body_too_large",),
}
_IDEMPOTENCY_ERRORS: dict[int, tuple[str, ...]] = {
    400: ("invalid_idempotency_key",),
    # unreadable: the stored answer was sealed under another cluster.state_key.
    409: ("idempotency_key_in_use", "idempotency_key_unreadable"),
    422: ("idempotency_key_reused",),
}
_DATABASE_ERRORS: dict[int, tuple[str, ...]] = {503: ("database_unavailable", "database_timeout")}
_STATUS_TEXT = {
    400: "Bad request",
    401: "Missing or unknown credentials",
    403: "Not allowed",
    404: "Not found",
    408: "The body did not arrive in time",
    409: "Conflict",
    410: "Gone",
    413: "Body too large",
    416: "Range not satisfiable",
    422: "Unprocessable",
    429: "Too many requests (Retry-After)",
    502: "Upstream error",
    503: "Unavailable (Retry-After)",
    504: "Upstream timeout",
}


def _merge(*tables: Mapping[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}
    for table in tables:
        for status, codes in table.items():
            out[status] = tuple(dict.fromkeys((*out.get(status, ()), *codes)))
    return dict(sorted(out.items()))


def errors_of(op: Operation) -> dict[int, tuple[str, ...]]:
    """Every error the operation answers: its own, and those of its kind."""
    tables: list[Mapping[int, tuple[str, ...]]] = []
    if op.auth != "anyone":
        tables += [_AUTH_ERRORS, _DATABASE_ERRORS]
    if op.method in ("POST", "PATCH"):
        tables.append(_BODY_ERRORS)
    if op.idempotent:
        tables.append(_IDEMPOTENCY_ERRORS)
    if op.query is not None:
        tables.append({400: ("invalid_parameter",)})
    if op.body is not None and op.run is not None:
        tables.append({400: ("invalid_request",)})
    return _merge(*tables, op.errors)


def _models(api: Api) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (ErrorBody, "serialization"),
        (OpenAIErrorBody, "serialization"),
    ]
    for op in api.operations:
        if op.body is not None:
            seen.append((op.body, "validation"))
        seen += [(b.model, "validation") for b in op.bodies if b.model is not None]
        seen += [(r.model, "serialization") for r in op.responses if r.model is not None]
    return list(dict.fromkeys(seen))


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is how it says null."""
    variants = schema.get("anyOf")
    if isinstance(variants, list):
        kept = [v for v in variants if v.get("type") != "null"]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            rest.pop("default", None)
            return {**kept[0], **rest}
    schema = dict(schema)
    if schema.get("default") is None:
        schema.pop("default", None)
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(copy.deepcopy(prop))
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _content(response: Response, refs: Refs) -> dict[str, Any]:
    if response.model is not None:
        return {response.content_type: {"schema": refs[(response.model, "serialization")]}}
    if response.content_type == "application/json":
        return {response.content_type: {"schema": {"type": "object"}}}
    binary: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
    return {t: binary for t in (response.content_type, *response.also)}


def _operation(op: Operation, refs: Refs) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        doc["description"] = op.description
    doc["security"] = (
        [{_SECURITY[auth]: []} for auth in (op.auth, *op.also_auth)] if op.auth != "anyone" else []
    )
    params: list[dict[str, Any]] = []
    for p in op.path_params:
        schema: dict[str, Any] = {"type": "string"}
        if p.pattern:
            schema["pattern"] = p.pattern
        params.append(
            {
                "name": p.name,
                "in": "path",
                "required": True,
                "description": p.description,
                "schema": schema,
            }
        )
    if op.query is not None:
        params += _query_parameters(op.query)
    if op.idempotent:
        params.append(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "description": "Same key and body within 24 h: the stored answer, not a second "
                "execution; same key, another body: 422 idempotency_key_reused.",
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            }
        )
    if params:
        doc["parameters"] = params
    content: dict[str, Any] = {}
    if op.body is not None:
        content["application/json"] = {"schema": refs[(op.body, "validation")]}
    for body in op.bodies:
        schema = refs[(body.model, "validation")] if body.model else {"type": "string"}
        content[body.content_type] = {"schema": schema}
    if content:
        doc["requestBody"] = {"required": not op.body_optional, "content": content}
    responses: dict[str, Any] = {}
    for response in op.responses:
        entry: dict[str, Any] = {"description": response.description}
        if response.model is not None or response.content_type != "application/json":
            entry["content"] = _content(response, refs)
        responses[str(response.status)] = entry
    error_model = OpenAIErrorBody if is_openai_path(op.path) else ErrorBody
    error_ref = refs[(error_model, "serialization")]
    for status, codes in errors_of(op).items():
        text = _STATUS_TEXT.get(status, "Error")
        responses[str(status)] = {
            "description": f"{text}: " + ", ".join(f"`{c}`" for c in codes),
            "content": {"application/json": {"schema": error_ref}},
        }
    doc["responses"] = responses
    return doc


def document(api: Api) -> dict[str, Any]:
    refs, definitions = models_json_schema(_models(api), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in api.operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Interview relay API",
            "version": __version__,
            "description": "Interviews, candidates, sessions, recordings and keys of an "
            "interview relay, and the candidate endpoints a page uses. Errors are always "
            '{"error": {"code", "message", "retryable", ...}, "request_id"}, except on the '
            "OpenAI-compatible /v1/realtime routes (tag openai), whose errors take OpenAI's "
            'shape {"error": {"message", "type", "code", "param"}, "request_id"}. '
            "Lists are newest first with cursor pagination (?limit=&cursor= → next_cursor). "
            "See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def register(api: Api) -> None:
    """Add ``GET /api/openapi.json`` (it documents itself too)."""
    cached: dict[str, Any] = {}

    async def openapi(request: web.Request) -> web.Response:
        if not cached:
            cached.update(document(api))
        return web.json_response(cached)

    api.add(
        Operation(
            "GET",
            OPENAPI_PATH,
            "getOpenApi",
            "This document",
            auth="anyone",
            tag="meta",
            raw=openapi,
            responses=(
                Response(200, "The OpenAPI 3.1 document.", content_type="application/json"),
            ),
        )
    )
