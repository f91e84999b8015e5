"""Authenticating a request, candidate, API key or operator, with failed attempts limited
per client address.

Each failed authentication (an unknown or malformed token, a wrong operator token) counts
against the client's address over a sliding minute, in this process and, with Redis,
across the cluster; at ``limits.failed_auth_per_minute`` further attempts from that
address get 429 with Retry-After before any token reaches the database, so guessing
tokens costs the guesser time and costs the database nothing. Only credentials known valid
without the database pass a locked address (the operator token, a user token the user
cache holds as a known user): behind a shared NAT, or a proxy not in
``server.trusted_proxies``, one guesser must not keep the operator and the candidates the
relay has seen lately out. They take no place in the budget.

The count cannot be outrun by sending guesses in parallel: each attempt reserves its place
before its token is looked up and settles it afterwards (a failure stays, anything else is
given back), and the reservation is one atomic step in this process
(relay.admission.rate_limit.FailedAuthLimiter) and in Redis (relay.cluster.limits), so at
most the limit's worth of an address's guesses is ever under lookup or failed within the
minute. Requests carrying the same token share one reservation: a page's parallel
requests are not guesses.

A credential that is valid, but not of a kind the route takes (an API key on an
operator-only route, a candidate's credential on the management API, the operator token
on a candidate-only route), is no guess: 403 ``insufficient_scope`` naming what the route
takes, not counted. A token a route refuses is looked up as the kind its prefix says
(``rk_`` an API key, ``ek_`` a client secret, ``rt_``/``ri_`` a candidate's; any token is
compared with the operator token's digest) unless the route looked it up so already: one
store lookup per attempt at most (a guess with such a prefix on an operator route now costs
one), made while the attempt holds its reserved place, so the limit bounds it as before.

The address is the TCP peer, or behind a proxy listed in ``server.trusted_proxies`` the
client it forwarded for (relay.web.forwarded); see docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from aiohttp import web

from relay.admission.api_keys import Principal, Scope
from relay.admission.client_secrets import (
    CLIENT_SECRET_PREFIX,
    ClientSecretGrant,
    ClientSecretRows,
)
from relay.admission.rate_limit import FailedAuthLimiter
from relay.admission.service import Caller
from relay.admission.tokens import (
    API_KEY_PREFIX,
    INVITE_PREFIX,
    USER_TOKEN_PREFIX,
    bearer_token,
    hash_token,
    plausible_token,
)
from relay.config import LimitsConfig
from relay.errors import ApiError
from relay.services import SERVICES
from relay.web import forwarded

# This process's count of failed authentications per client address.
FAILED_AUTH = web.AppKey("failed_auth", FailedAuthLimiter)

# The kinds of credential, each checked against its own store.
Kind = Literal["operator", "api_key", "candidate", "client_secret"]
_KIND_NAMES: dict[Kind, str] = {
    "operator": "the operator token",
    "api_key": "an API key",
    "candidate": "a candidate's credential",
    "client_secret": "a client secret",
}
CANDIDATE: tuple[Kind, ...] = ("candidate",)
CLIENT_SECRET: tuple[Kind, ...] = ("client_secret",)
OPERATOR: tuple[Kind, ...] = ("operator",)
MANAGEMENT: tuple[Kind, ...] = ("api_key", "operator")
OWNER_OR_MANAGEMENT: tuple[Kind, ...] = ("candidate", "api_key", "operator")


def install(app: web.Application, limits: LimitsConfig) -> None:
    app[FAILED_AUTH] = FailedAuthLimiter(limits.failed_auth_per_minute)


def client_address(request: web.Request) -> str:
    proxies = request.app[SERVICES].settings.server.trusted_proxies
    return forwarded.client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), proxies
    )


def failed_auth_key(address: str) -> str:
    """Whose failures ``address`` counts among: itself, or for IPv6 its /64. One IPv6
    host is usually given a whole /64 (SLAAC, privacy addresses, a VPS's range), so a
    guesser keyed by full address would have 2**64 fresh addresses to try from."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an address (a Unix socket's peer): as it is
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


def _too_many(wait: float) -> ApiError:
    return ApiError(
        429,
        "too_many_failed_authentications",
        "Too many failed authentications from this address; try again later.",
        retryable=True,
        retry_after_s=max(1, math.ceil(wait)),
    )


def _kind_by_prefix(token: str) -> Kind | None:
    """The kind a token's prefix says it is (the operator token has no prefix of its own)."""
    if token.startswith(API_KEY_PREFIX):
        return "api_key"
    if token.startswith(CLIENT_SECRET_PREFIX):
        return "client_secret"
    if token.startswith((USER_TOKEN_PREFIX, INVITE_PREFIX)):
        return "candidate"
    return None


def _wrong_kind(kind: Kind, takes: tuple[Kind, ...]) -> ApiError:
    if takes == CLIENT_SECRET:
        wanted = "the ek_ client secret from POST /v1/realtime/client_secrets"
    else:
        wanted = " or ".join(_KIND_NAMES[k] for k in takes)
    return ApiError(
        403,
        "insufficient_scope",
        f"This operation takes {wanted}; the token sent is {_KIND_NAMES[kind]}.",
        details={"credential": kind},
    )


async def _valid_as(request: web.Request, token: str, tried: tuple[Kind, ...]) -> Kind | None:
    """The kind of credential a token the route refused is valid as (None: none, a guess).
    The kinds in ``tried`` were looked up already; at most one other lookup, by prefix."""
    if "operator" not in tried and _operator_token_matches(request, token):
        return "operator"
    kind = _kind_by_prefix(token)
    if kind is None or kind in tried or not plausible_token(token):
        return None
    services = request.app[SERVICES]
    token_hash = hash_token(token)
    if kind == "api_key":
        valid = await services.api_keys.authenticate(token_hash) is not None
    elif kind == "client_secret":
        # An expired one too: the relay issued it, nobody guessed it.
        valid = await ClientSecretRows(services.store).find(token_hash) is not None
    else:
        try:
            await services.admission.authenticate_hash(
                token_hash, invite=token.startswith(INVITE_PREFIX)
            )
        except ApiError as exc:
            if exc.status != 401:
                raise
            return None
        valid = True
    return kind if valid else None


@asynccontextmanager
async def _attempt(
    request: web.Request, token: str | None, takes: tuple[Kind, ...]
) -> AsyncIterator[None]:
    """One authentication attempt with ``token`` from this request's client address, by a
    route that takes the credentials ``takes`` (each looked up inside): 429 when the
    address may not try now. A 401 ``invalid_token`` raised inside counts as a failure,
    unless the token is a valid credential of another kind: then 403
    ``insufficient_scope``, not counted."""
    services = request.app[SERVICES]
    local = request.app[FAILED_AUTH]
    shared = services.cluster.limits
    address = failed_auth_key(client_address(request))
    # The reservation's key: a token's hash, never the token (it may reach Redis).
    key = hash_token(token)[:32] if token is not None else None
    wait = local.reserve(address, key)
    if wait is None:
        shared_wait = await shared.auth_reserve(address, key or "")
        if shared_wait:  # None (Redis undecided: this process decides) or 0.0 go ahead
            local.settle(address, key, failed=False)
            wait = shared_wait
    if wait is not None and (token is None or not await _valid_without_database(request, token)):
        raise _too_many(wait)
    # Whether this attempt holds a place in the address's budget (the lockout's pass holds
    # none: it must not give back, or take, the place of another request with its token).
    held = wait is None
    failed = False
    try:
        yield
    except ApiError as exc:
        if exc.status == 401 and exc.code == "invalid_token":
            kind = await _valid_as(request, token, takes) if token is not None else None
            if kind is not None:
                raise _wrong_kind(kind, takes) from None
            failed = True
        raise
    finally:
        if held:
            local.settle(address, key, failed=failed)
            if key is not None:
                await shared.auth_settle(address, key, failed=failed)
        elif failed:  # known a moment ago, gone since (a cache entry evicted): it counts
            local.settle(address, None, failed=True)
            await shared.auth_settle(address, "", failed=True)


async def _valid_without_database(request: web.Request, token: str) -> bool:
    """Whether a token is known valid without asking PostgreSQL, so that it passes its
    address's lockout: the operator token, or a user token the user cache (Redis, or this
    process's fallback) holds as a known user. Anything else from a locked address waits,
    so the lockout still keeps guesses away from the database; API keys, invites and
    client secrets are read from PostgreSQL only (no cache), so they wait too."""
    if _operator_token_matches(request, token):
        return True
    if not token.startswith(USER_TOKEN_PREFIX) or not plausible_token(token):
        return False
    cached = await request.app[SERVICES].cache.get(hash_token(token))
    return cached is not None and cached.user is not None


def _operator_token_matches(request: web.Request, token: str) -> bool:
    # Compared as SHA-256 digests in constant time: the token itself is not kept.
    presented = hashlib.sha256(token.encode("utf-8")).hexdigest()
    return hmac.compare_digest(presented, request.app[SERVICES].operator_token_hash)


async def authenticate(request: web.Request) -> Caller:
    """The candidate the request's bearer token belongs to (401 otherwise; 403
    ``insufficient_scope`` for another kind of valid credential)."""
    header = request.headers.get("Authorization")
    async with _attempt(request, bearer_token(header), CANDIDATE):
        return await _candidate(request, header)


async def _candidate(request: web.Request, header: str | None) -> Caller:
    token = bearer_token(header)
    if token is not None and _kind_by_prefix(token) in ("api_key", "client_secret"):
        # Never a candidate's: not looked up as one (_attempt looks it up as what it is).
        raise ApiError(401, "invalid_token", "The token is not valid.")
    return await request.app[SERVICES].admission.authenticate(header)


def _client_secret_of(token: str | None) -> str:
    """The request's ``ek_`` client secret (401 for anything else)."""
    if token is None:
        raise ApiError(
            401,
            "missing_token",
            "Send 'Authorization: Bearer <ek_…>' (from POST /v1/realtime/client_secrets).",
        )
    if not token.startswith(CLIENT_SECRET_PREFIX) or not plausible_token(token):
        raise ApiError(
            401,
            "invalid_token",
            "This call needs the ek_ client secret from POST /v1/realtime/client_secrets.",
        )
    return token


async def _client_secret_grant(request: web.Request, token: str) -> ClientSecretGrant:
    services = request.app[SERVICES]
    grant = await ClientSecretRows(services.store).find(hash_token(token))
    if grant is None:
        raise ApiError(401, "invalid_token", "The client secret is not valid.")
    return grant


async def authenticate_client_secret(request: web.Request) -> tuple[ClientSecretGrant, Caller]:
    """The session a request's ``ek_`` client secret opens, and its candidate: the
    credential the secret was asked for with, authenticated again (401 when the secret is
    unknown or expired, or the credential no longer opens anything)."""
    token = bearer_token(request.headers.get("Authorization"))
    async with _attempt(request, token, CLIENT_SECRET):
        grant = await _client_secret_grant(request, _client_secret_of(token))
        if grant.expired:
            raise ApiError(
                401,
                "client_secret_expired",
                "The client secret has expired; POST /v1/realtime/client_secrets for another.",
            )
        caller = await request.app[SERVICES].admission.authenticate_hash(
            grant.credential_hash, invite=grant.invite
        )
    return grant, caller


async def call_owner(request: web.Request) -> tuple[Caller | None, str | None]:
    """Who may hang up a call: a client secret's candidate with the session it opens
    (until the call ends, also past the secret's expiry: the call lasts longer than the
    time to start it), a candidate credential (no session: any of theirs), or the operator
    (None, None). 401 otherwise; whose the call is, is the caller's to check."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None or not token.startswith(CLIENT_SECRET_PREFIX):
        return await owner_or_operator(request), None
    async with _attempt(request, token, CLIENT_SECRET):
        grant = await _client_secret_grant(request, _client_secret_of(token))
        caller = await request.app[SERVICES].admission.authenticate_hash(
            grant.credential_hash, invite=grant.invite
        )
    return caller, grant.session_id


async def require_operator(request: web.Request) -> None:
    """The request carries the operator token (401 otherwise; 403 ``insufficient_scope``
    for another kind of valid credential, an API key included)."""
    token = bearer_token(request.headers.get("Authorization"))
    async with _attempt(request, token, OPERATOR):
        if token is None:
            raise ApiError(401, "missing_token", "Send 'Authorization: Bearer <operator token>'.")
        if not _operator_token_matches(request, token):
            raise ApiError(401, "invalid_token", "The operator token is not valid.")


async def owner_or_operator(request: web.Request) -> Caller | None:
    """The candidate of the request's token, or None for the operator: the operator token
    or an admin API key (the console signed in with one ends sessions as the operator
    does). 401 otherwise, 403 ``insufficient_scope`` for a read key."""
    who = await _owner_or_principal(request)
    if isinstance(who, Caller):
        return who
    if not who.allows("admin"):
        raise ApiError(403, "insufficient_scope", "Ending a session needs an admin key.")
    return None


async def owner_or_reader(request: web.Request) -> Caller | None:
    """The candidate of the request's token, or None for the management API: the operator
    token or an API key of either scope (reading a session is a read). 401 otherwise."""
    who = await _owner_or_principal(request)
    return who if isinstance(who, Caller) else None


async def _owner_or_principal(request: web.Request) -> Caller | Principal:
    header = request.headers.get("Authorization")
    token = bearer_token(header)
    async with _attempt(request, token, OWNER_OR_MANAGEMENT):
        if token is not None and _operator_token_matches(request, token):
            return Principal.operator()
        if token is not None and token.startswith(API_KEY_PREFIX):
            return await _principal(request, token)
        return await _candidate(request, header)


async def require_scope(request: web.Request, needed: Scope) -> Principal:
    """The management API's caller: an API key allowing ``needed`` (``read`` or ``admin``),
    or the operator token (an admin key). 401 for a missing or unknown key, 403
    ``insufficient_scope`` for a read key on an admin operation, or a candidate's
    credential."""
    token = bearer_token(request.headers.get("Authorization"))
    async with _attempt(request, token, MANAGEMENT):
        if token is None:
            raise ApiError(
                401, "missing_token", "Send 'Authorization: Bearer <API key or operator token>'."
            )
        principal = await _principal(request, token)
    if not principal.allows(needed):
        raise ApiError(
            403, "insufficient_scope", f"This operation needs an {needed} key; this key is read."
        )
    return principal


async def _principal(request: web.Request, token: str) -> Principal:
    services = request.app[SERVICES]
    if token.startswith(API_KEY_PREFIX) and plausible_token(token):
        principal = await services.api_keys.authenticate(hash_token(token))
        if principal is not None:
            return principal
    elif _operator_token_matches(request, token):
        return Principal.operator()
    raise ApiError(401, "invalid_token", "The API key is not valid (or was revoked).")
