"""Authenticating a candidate's request, with failed attempts limited per client address.

Each failed authentication (an unknown or malformed token) counts against the client's
address over a sliding minute, in this process and, with Redis, across the cluster;
at ``limits.failed_auth_per_minute`` further attempts from that address get 429 with
Retry-After before any token is looked at, so guessing tokens costs the guesser time and
costs the database nothing. The address is the TCP peer, or behind a proxy listed in
``server.trusted_proxies`` the client it forwarded for (relay.web.forwarded); see
docs/deploy.md.
"""

from __future__ import annotations

import math

from aiohttp import web

from relay.admission.service import Caller
from relay.errors import ApiError
from relay.services import SERVICES
from relay.web import forwarded

_FAILED = ("invalid_token",)


def client_address(request: web.Request) -> str:
    proxies = request.app[SERVICES].trusted_proxies
    return forwarded.client_address(
        request.remote, request.headers.getall("X-Forwarded-For", []), proxies
    )


async def authenticate(request: web.Request) -> Caller:
    services = request.app[SERVICES]
    cluster = services.cluster
    address = client_address(request)
    if cluster is not None:
        wait = cluster.failed_auth.peek(address)
        shared = await cluster.limits.auth_blocked(address)
        if shared:
            wait = max(wait or 0.0, shared)
        if wait:
            raise ApiError(
                429,
                "too_many_failed_authentications",
                "Too many failed authentications from this address; try again later.",
                retryable=True,
                retry_after_s=max(1, math.ceil(wait)),
            )
    try:
        return await services.admission.authenticate(request.headers.get("Authorization"))
    except ApiError as exc:
        if cluster is not None and exc.status == 401 and exc.code in _FAILED:
            cluster.failed_auth.record(address)
            await cluster.limits.auth_failed(address)
        raise
