"""The HTTP API's one registry of operations.

Every ``/api/`` route is an ``Operation``, and so are the OpenAI-compatible ``/v1/realtime``
routes (tag ``openai``: OpenAI's shapes, errors included; relay.web.routes_openai):
method, path, who may call it (``Auth``), its pydantic request and response models and
the errors it answers. The aiohttp routes and
the OpenAPI 3.1 document (``GET /api/openapi.json``, relay.web.openapi) are both
generated from the registry, so a route cannot exist undocumented, nor be documented
with shapes other than those its handler validates with.

Two kinds of handler:

* **typed** (``Operation.run``): the registry authenticates the caller (``auth``),
  validates the query (``query``) and the JSON body (``body``) with their models (400
  ``invalid_parameter`` / ``invalid_request`` naming the field), applies
  ``Idempotency-Key`` to a POST (relay.web.idempotency) and serialises the ``Reply``'s
  model;
* **raw** (``Operation.raw``): an aiohttp handler that does its own checks, in its own
  order (the candidate's session request waits for an admission slot before its token
  is even looked up). Its models describe what it reads and answers; its tests keep it
  to them, and the schemathesis run checks every answer against the document.

Errors always have the relay's JSON shape (relay.errors, rendered by the middleware).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from relay.admission.api_keys import Principal
from relay.admission.service import Caller
from relay.db import Within
from relay.errors import ApiError
from relay.services import SERVICES, Services
from relay.web import idempotency
from relay.web.body import read_body, validate_json_object
from relay.web.caller import authenticate, require_operator, require_scope

# Who may call an operation:
#   anyone     no credentials;
#   candidate  a user token (rt_…) or an interview's invite (ri_…);
#   read       an API key of either scope (rk_…), or the operator token;
#   admin      an admin API key, or the operator token;
#   operator   the operator token only;
#   client_secret  the relay's own ek_ client secret of one session (raw handlers only:
#              relay.web.caller.authenticate_client_secret).
# A valid credential of a kind the operation does not take gets 403 insufficient_scope;
# only an unknown token, a revoked API key or a replaced token or link is a failed
# authentication (relay.web.caller); a revoked candidate's own token is refused with 403.
Auth = Literal["anyone", "candidate", "read", "admin", "operator", "client_secret"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    """One documented success answer."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    # JSON answers have a model; other content types are described by name only.
    content_type: str = "application/json"
    # Other media types the same answer may have (a recording is Ogg or WAV).
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestBody:
    """A request body in a content type other than the JSON of ``Operation.body`` (OpenAI's
    calls take SDP, or a multipart form); documented, read by the raw handler itself."""

    content_type: str
    # The form's fields (multipart); None: the body is one string (e.g. SDP).
    model: type[BaseModel] | None
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """A typed handler's answer: ``model`` is serialised as JSON (None: no body)."""

    status: int
    model: BaseModel | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """What a typed handler receives: the request, who made it, and its validated parts."""

    request: web.Request
    services: Services
    principal: Principal | None
    caller: Caller | None
    _body: BaseModel | None = None
    _query: BaseModel | None = None

    def body(self, model: type[M]) -> M:
        if not isinstance(self._body, model):
            raise TypeError(f"the operation's body is not a {model.__name__}")
        return self._body

    def query(self, model: type[M]) -> M:
        if not isinstance(self._query, model):
            raise TypeError(f"the operation's query is not a {model.__name__}")
        return self._query

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise TypeError("the operation has no API principal")
        return self.principal

    def require_caller(self) -> Caller:
        if self.caller is None:
            raise TypeError("the operation has no candidate")
        return self.caller

    def answer_within(self, build: Callable[[T], Reply | None]) -> Within[T] | None:
        """For the domain write that does this operation's work in one transaction: the
        ``Idempotency-Key``'s answer (the ``Reply`` ``build`` makes of what the write
        returns; None: no answer to store) is stored in that transaction, with the work
        (relay.web.idempotency). None without a key."""

        def answer(value: T) -> idempotency.Answer | None:
            reply = build(value)
            return None if reply is None else (reply.status, _dump(reply.model))

        return idempotency.within(answer)


TypedHandler = Callable[[Call], Awaitable[Reply]]
RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PathParam:
    name: str
    description: str
    # A pattern the handler enforces itself (a malformed id gets the same 404 as an
    # unknown one); documented, not used to refuse the request before the handler.
    pattern: str | None = None


class NoFields(BaseModel):
    """The body of a POST that takes no fields: none, or ``{}``. A field is refused (400
    ``invalid_request`` naming it), as the routes with a body refuse a field they do not
    know: a client sending ``{"reason": …}`` must not believe it was kept."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Operation:
    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    operation_id: str
    summary: str
    auth: Auth
    tag: str
    responses: tuple[Response, ...]
    # Error answers by status: the relay's error codes for each (documented per operation).
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    run: TypedHandler | None = None
    raw: RawHandler | None = None
    body: type[BaseModel] | None = None
    # An empty body is accepted (the model's defaults apply).
    body_optional: bool = False
    # Request bodies in other content types (raw handlers).
    bodies: tuple[RequestBody, ...] = ()
    # Other credentials the operation also takes (documented as alternatives).
    also_auth: tuple[Auth, ...] = ()
    query: type[BaseModel] | None = None
    path_params: tuple[PathParam, ...] = ()
    description: str = ""
    # Accepts Idempotency-Key (every POST does; relay.web.idempotency).
    idempotent: bool = False
    # The body this operation must be able to take whatever server.max_body_bytes says
    # (what its model allows at most, as JSON), for typed handlers.
    body_floor_bytes: int = 0

    def __post_init__(self) -> None:
        if (self.run is None) == (self.raw is None):
            raise ValueError(f"{self.operation_id}: exactly one of run and raw")
        if self.run is not None and "client_secret" in (self.auth, *self.also_auth):
            raise ValueError(f"{self.operation_id}: client secrets are for raw handlers")
        if self.method == "POST" and not self.idempotent:
            raise ValueError(f"{self.operation_id}: every POST takes an Idempotency-Key")


class Api:
    """The registry: operations in the order they were added."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def add(self, *operations: Operation) -> None:
        for op in operations:
            if any(o.operation_id == op.operation_id for o in self.operations):
                raise ValueError(f"operation id {op.operation_id} registered twice")
            if any(o.method == op.method and o.path == op.path for o in self.operations):
                raise ValueError(f"{op.method} {op.path} registered twice")
            self.operations.append(op)

    def install(self, app: web.Application) -> None:
        """Add every operation's route to ``app``."""
        for op in self.operations:
            handler = op.raw if op.raw is not None else _typed(op)
            if op.method == "GET":
                app.router.add_get(op.path, handler)  # and HEAD, as every GET route had
            else:
                app.router.add_route(op.method, op.path, handler)


# ---------------------------------------------------------------------- typed handlers
def _typed(op: Operation) -> RawHandler:
    run = op.run
    assert run is not None

    async def handler(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        principal: Principal | None = None
        caller: Caller | None = None
        # Credentials first, before anything of the request is read.
        if op.auth == "candidate":
            caller = await authenticate(request)
        elif op.auth in ("read", "admin"):
            principal = await require_scope(request, op.auth)
        elif op.auth == "operator":
            await require_operator(request)
            principal = Principal.operator()
        query = _validate_query(op.query, request) if op.query is not None else None
        call = Call(request, services, principal, caller, _query=query)
        if op.body is None and op.method not in ("POST", "PATCH"):
            return _response(await run(call))
        raw = await read_body(request, at_least=op.body_floor_bytes)
        if op.body is not None:
            call._body = _validate_body(op.body, raw, optional=op.body_optional)
        if not op.idempotent:
            return _response(await run(call))

        async def execute() -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
            reply = await run(call)
            return reply.status, _dump(reply.model), reply.headers

        return await idempotency.run(request, _principal_key(principal, caller), raw, execute)

    handler.__name__ = op.operation_id
    return handler


def _principal_key(principal: Principal | None, caller: Caller | None) -> str:
    if principal is not None:
        return principal.key
    if caller is not None:
        return idempotency.candidate_key(caller.token_hash)
    return "anyone"


def _dump(model: BaseModel | None) -> dict[str, Any] | None:
    return None if model is None else model.model_dump(mode="json", by_alias=True)


def _response(reply: Reply) -> web.Response:
    body = _dump(reply.model)
    if body is None:
        return web.Response(status=reply.status, headers=dict(reply.headers))
    return web.json_response(body, status=reply.status, headers=dict(reply.headers))


def _field(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ())) or "body"


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": _field(e), "message": str(e.get("msg", ""))} for e in exc.errors()]


def _validate_body(model: type[BaseModel], raw: bytes, *, optional: bool) -> BaseModel:
    try:
        return validate_json_object(model, raw, allow_empty=optional)
    except ValidationError as exc:
        errors = _errors(exc)
        first = errors[0]
        raise ApiError(
            400,
            "invalid_request",
            f"{first['field']}: {first['message']}",
            details={"errors": errors},
        ) from None


def _validate_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    # A repeated parameter: the first one counts (as for every other reader of the query).
    values = {name: request.query[name] for name in request.query}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = _errors(exc)
        first = errors[0]
        raise ApiError(
            400,
            "invalid_parameter",
            f"'{first['field']}': {first['message']}",
            details={"errors": errors},
        ) from None
