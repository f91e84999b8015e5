"""API keys: create (the key shown once), list, revoke. Admin only; but any credential of
the management API may ask what it is, and any key may revoke itself.

POST   /api/keys            {name, scope}  201 with the key (rk_…)
GET    /api/keys            newest first (revoked ones with ?include_revoked=true)
GET    /api/keys/current    the calling credential: the operator or a key, and its scope
DELETE /api/keys/current    the calling key revoked at once (204), a read key too: whoever
                            holds a key that may have leaked can end it without an admin
DELETE /api/keys/{key_id}   revoked at once: the key opens nothing from then on
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from relay.admission.api_keys import ApiKeyRecord, Scope, new_key_id
from relay.admission.tokens import hash_token, new_api_key
from relay.errors import ApiError
from relay.fields import Text
from relay.web.api import Api, Call, Operation, PathParam, Reply, Response
from relay.web.pagination import Page, PageQuery, decode_cursor, page_of

_ID = re.compile(r"^key_[0-9a-f]{16}$")


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(min_length=1, max_length=200)] = Field(
        description="What the key is for (shown in lists and logs)."
    )
    scope: Scope = Field(default="admin", description="admin: everything; read: reading.")


class ApiKey(BaseModel):
    id: str
    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_by: str


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key (rk_…), shown once: store it now.")


class ApiKeyList(Page):
    items: list[ApiKey]


class CurrentCredential(BaseModel):
    kind: Literal["operator", "api_key"] = Field(description="The operator token, or a key.")
    id: str = Field(description='The key\'s id ("operator" for the operator token).')
    name: str
    scope: Scope = Field(description="What it may do (the operator token is admin).")


class KeyQuery(PageQuery):
    include_revoked: bool = False


def key_view(record: ApiKeyRecord) -> ApiKey:
    return ApiKey(
        id=record.id,
        name=record.name,
        scope=record.scope,
        created_at=record.created_at,
        last_used_at=record.last_used_at,
        revoked_at=record.revoked_at,
        created_by=record.created_by,
    )


async def create_key(call: Call) -> Reply:
    spec = call.body(KeyCreate)
    key = new_api_key()

    def answer(record: ApiKeyRecord) -> Reply:
        shown = key_view(record).model_dump()
        return Reply(201, ApiKeyCreated(**shown, key=key))

    record = await call.services.api_keys.create(
        key_id=new_key_id(),
        name=spec.name,
        scope=spec.scope,
        key_hash=hash_token(key),
        created_by=call.require_principal().id,
        within=call.answer_within(answer),
    )
    return answer(record)


async def list_keys(call: Call) -> Reply:
    query = call.query(KeyQuery)
    rows = await call.services.api_keys.page(
        limit=query.limit + 1,
        after=decode_cursor(query.cursor),
        include_revoked=query.include_revoked,
    )
    items, cursor = page_of(rows, query.limit, lambda r: (r.created_at, r.id))
    return Reply(200, ApiKeyList(items=[key_view(r) for r in items], next_cursor=cursor))


async def current_key(call: Call) -> Reply:
    # A client (the console) learns what its credential may do without trying an
    # operation that would be refused.
    principal = call.require_principal()
    return Reply(
        200,
        CurrentCredential(
            kind=principal.kind, id=principal.id, name=principal.name, scope=principal.scope
        ),
    )


async def revoke_current_key(call: Call) -> Reply:
    principal = call.require_principal()
    if principal.kind != "api_key":
        # The operator token is configuration (server.operator_token), not a row to revoke.
        raise ApiError(
            403,
            "insufficient_scope",
            "DELETE /api/keys/current revokes the calling API key; the operator token is not"
            " one (change server.operator_token and restart to replace it).",
            details={"credential": "operator"},
        )
    if await call.services.api_keys.revoke(principal.id) is None:
        # Authenticated a moment ago, so the row exists; deleted since by hand in the database.
        raise ApiError(404, "key_not_found", "No such API key.")
    return Reply(204)


async def revoke_key(call: Call) -> Reply:
    key_id = call.path("key_id")
    if not _ID.fullmatch(key_id):
        raise ApiError(404, "key_not_found", "No such API key.")
    record = await call.services.api_keys.revoke(key_id)
    if record is None:
        raise ApiError(404, "key_not_found", "No such API key.")
    return Reply(200, key_view(record))


def register(api: Api) -> None:
    admin_errors: dict[int, tuple[str, ...]] = {403: ("insufficient_scope",)}
    api.add(
        Operation(
            "POST",
            "/api/keys",
            "createApiKey",
            "Create an API key (shown once)",
            auth="admin",
            tag="keys",
            run=create_key,
            body=KeyCreate,
            idempotent=True,
            responses=(Response(201, "The key's record and the key itself.", ApiKeyCreated),),
            errors=admin_errors,
        ),
        Operation(
            "GET",
            "/api/keys",
            "listApiKeys",
            "API keys, newest first (never the keys themselves)",
            auth="admin",
            tag="keys",
            run=list_keys,
            query=KeyQuery,
            responses=(Response(200, "A page of keys.", ApiKeyList),),
            errors={**admin_errors, 400: ("invalid_cursor",)},
        ),
        Operation(
            "GET",
            "/api/keys/current",
            "getCurrentCredential",
            "The calling credential: the operator token or an API key, and its scope",
            auth="read",
            tag="keys",
            run=current_key,
            responses=(Response(200, "Who is asking.", CurrentCredential),),
        ),
        # Right after its GET, so that both share one route: registered after
        # /api/keys/{key_id}, "current" would be taken for a key id there (404).
        Operation(
            "DELETE",
            "/api/keys/current",
            "revokeCurrentApiKey",
            "Revoke the calling API key, at once (a read key too)",
            auth="read",
            tag="keys",
            run=revoke_current_key,
            responses=(Response(204, "The key is revoked: it opens nothing from now on."),),
            errors={403: ("insufficient_scope",), 404: ("key_not_found",)},
        ),
        Operation(
            "DELETE",
            "/api/keys/{key_id}",
            "revokeApiKey",
            "Revoke an API key, at once",
            auth="admin",
            tag="keys",
            run=revoke_key,
            path_params=(PathParam("key_id", "The key's id.", r"^key_[0-9a-f]{16}$"),),
            responses=(Response(200, "The key, revoked.", ApiKey),),
            errors={**admin_errors, 404: ("key_not_found",)},
        ),
    )
