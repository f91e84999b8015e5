"""Users (the candidates): list, read, change credit and status, reissue a token.

GET   /api/users?email=&active=&…     read
GET   /api/users/{user_id}            read
PATCH /api/users/{user_id}            admin  {remaining_seconds | add_seconds, active}
POST  /api/users/{user_id}/token      admin  a new token, shown once (the old one stops)
DELETE /api/users/{user_id}           admin  erase the user and everything of theirs (204)

Deactivating ends the user's live interviews on every member (as ``relay users revoke``);
a reissued token replaces the old one everywhere at once (the database tells every
member's cache: relay.admission.invalidation). This is the recovery of a lost token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.admission.tokens import hash_token, new_token
from relay.admission.users import UserChange, UserDetail
from relay.cluster.bus import notify
from relay.errors import ApiError
from relay.fields import Email
from relay.web.api import Api, Call, NoFields, Operation, PathParam, Reply, Response
from relay.web.pagination import Page, PageQuery, decode_cursor, encode_cursor

MAX_SECONDS = 2**31 - 1


class User(BaseModel):
    id: int
    email: str
    active: bool
    remaining_seconds: int = Field(description="Seconds a plain user token may still talk.")
    created_at: datetime
    revoked_at: datetime | None
    interviews: int = Field(description="Interviews created for this candidate.")
    sessions: int


class UserList(Page):
    items: list[User]


class UserQuery(PageQuery):
    email: Email | None = None
    active: bool | None = None


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remaining_seconds: Annotated[int | None, Field(ge=0, le=MAX_SECONDS)] = Field(
        default=None, description="Set the user's seconds."
    )
    add_seconds: Annotated[int | None, Field(ge=-MAX_SECONDS, le=MAX_SECONDS)] = Field(
        default=None, description="Add to (or, negative, take from) the user's seconds."
    )
    active: bool | None = Field(
        default=None, description="false ends the user's live interviews everywhere."
    )

    @model_validator(mode="after")
    def _one_credit_change(self) -> UserPatch:
        if self.remaining_seconds is not None and self.add_seconds is not None:
            raise ValueError("give remaining_seconds or add_seconds, not both")
        return self


class UserToken(BaseModel):
    user: User
    token: str = Field(description="The new user token (rt_…), shown once.")


def user_view(user: UserDetail) -> User:
    return User(
        id=user.id,
        email=user.email,
        active=user.active,
        remaining_seconds=user.remaining_seconds,
        created_at=user.created_at,
        revoked_at=user.revoked_at,
        interviews=user.interviews,
        sessions=user.sessions,
    )


def _user_id(call: Call) -> int:
    raw = call.path("user_id")
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise ApiError(404, "user_not_found", "No such user.")
    return int(raw)


async def list_users(call: Call) -> Reply:
    query = call.query(UserQuery)
    after = decode_cursor(query.cursor)
    if after is not None and not (after[1].isascii() and after[1].isdigit() and len(after[1]) < 19):
        raise ApiError(400, "invalid_cursor", "'cursor' is not a cursor this list returned.")
    rows = await call.services.user_admin.page(
        limit=query.limit + 1, after=after, email=query.email, active=query.active
    )
    items = rows[: query.limit]
    cursor = (
        encode_cursor(items[-1].created_at, str(items[-1].id)) if len(rows) > query.limit else None
    )
    return Reply(200, UserList(items=[user_view(u) for u in items], next_cursor=cursor))


async def get_user(call: Call) -> Reply:
    user = await call.services.user_admin.get(_user_id(call))
    if user is None:
        raise ApiError(404, "user_not_found", "No such user.")
    return Reply(200, user_view(user))


async def _apply(call: Call, change: UserChange | None) -> UserDetail:
    if change is None:
        raise ApiError(404, "user_not_found", "No such user.")
    # This member's caches at once; the others through the database's notifications.
    await call.services.admission.forget(change.old_token_hash)
    return change.user


async def patch_user(call: Call) -> Reply:
    patch = call.body(UserPatch)
    change = await call.services.user_admin.update(
        _user_id(call),
        notify,
        remaining_seconds=patch.remaining_seconds,
        add_seconds=patch.add_seconds,
        active=patch.active,
    )
    return Reply(200, user_view(await _apply(call, change)))


async def reissue_token(call: Call) -> Reply:
    token = new_token()

    def answer(change: UserChange) -> Reply:
        return Reply(201, UserToken(user=user_view(change.user), token=token))

    change = await call.services.user_admin.update(
        _user_id(call), notify, token_hash=hash_token(token), within=call.answer_within(answer)
    )
    await _apply(call, change)
    assert change is not None  # (_apply answers 404 otherwise)
    return answer(change)


async def delete_user(call: Call) -> Reply:
    user_id = _user_id(call)
    if not await call.services.erasure.request_user(user_id):
        raise ApiError(404, "user_not_found", "No such user.")
    return Reply(204)


_USER_ID = PathParam("user_id", "The user's id.", r"^[0-9]{1,19}$")
_NOT_FOUND = ("user_not_found",)


def register(api: Api) -> None:
    api.add(
        Operation(
            "GET",
            "/api/users",
            "listUsers",
            "Users (candidates), newest first",
            auth="read",
            tag="users",
            run=list_users,
            query=UserQuery,
            responses=(Response(200, "A page of users.", UserList),),
            errors={400: ("invalid_cursor",)},
        ),
        Operation(
            "GET",
            "/api/users/{user_id}",
            "getUser",
            "One user",
            auth="read",
            tag="users",
            run=get_user,
            path_params=(_USER_ID,),
            responses=(Response(200, "The user.", User),),
            errors={404: _NOT_FOUND},
        ),
        Operation(
            "PATCH",
            "/api/users/{user_id}",
            "updateUser",
            "Change a user's seconds, or deactivate / reactivate it",
            auth="admin",
            tag="users",
            run=patch_user,
            body=UserPatch,
            path_params=(_USER_ID,),
            responses=(Response(200, "The user, changed.", User),),
            errors={403: ("insufficient_scope",), 404: _NOT_FOUND},
        ),
        Operation(
            "POST",
            "/api/users/{user_id}/token",
            "reissueUserToken",
            "Give a user a new token (the old one stops working at once)",
            auth="admin",
            tag="users",
            run=reissue_token,
            path_params=(_USER_ID,),
            body=NoFields,
            body_optional=True,
            idempotent=True,
            description="The recovery of a lost token; also gives a user created by an "
            "interview a token of its own.",
            responses=(Response(201, "The user and its new token (shown once).", UserToken),),
            errors={403: ("insufficient_scope",), 404: _NOT_FOUND},
        ),
        Operation(
            "DELETE",
            "/api/users/{user_id}",
            "deleteUser",
            "Erase a user (a candidate, or any token holder) and everything of theirs",
            auth="admin",
            tag="users",
            run=delete_user,
            path_params=(_USER_ID,),
            description="Every interview of the user is erased as DELETE "
            "/api/interviews/{interview_id} erases one (each with its interview.deleted "
            "event), and so are the user's sessions of no interview with their recordings, "
            "and the user's row last. From this answer on the user is gone for the API (404 "
            "user_not_found), its token opens nothing and its live sessions end everywhere "
            "(reason revoked). Until the row is gone, a new interview for the address is "
            "refused (409 user_being_erased).",
            responses=(Response(204, "Erased, or being erased (see the description)."),),
            errors={403: ("insufficient_scope",), 404: _NOT_FOUND},
        ),
    )
