"""Operator authentication: a bearer token compared in constant time against a hash."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from relay.admission.tokens import bearer_token
from relay.errors import ApiError
from relay.services import SERVICES


def is_operator(request: web.Request) -> bool:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        return False
    presented = hashlib.sha256(token.encode("utf-8")).hexdigest()
    return hmac.compare_digest(presented, request.app[SERVICES].operator_token_hash)


def require_operator(request: web.Request) -> None:
    if bearer_token(request.headers.get("Authorization")) is None:
        raise ApiError(401, "missing_token", "Send 'Authorization: Bearer <operator token>'.")
    if not is_operator(request):
        raise ApiError(401, "invalid_token", "The operator token is not valid.")
