"""Webhook endpoints and their delivery log (operator token on every route).

GET    /api/webhooks?limit=&cursor=                        newest first, ``next_cursor``
POST   /api/webhooks                                       201, with the secret (shown once)
GET    /api/webhooks/{id}
PATCH  /api/webhooks/{id}                                  url, events, description, enabled
DELETE /api/webhooks/{id}                                  204; its deliveries and log too
POST   /api/webhooks/{id}/test                             a webhook.test event, sent now
GET    /api/webhooks/{id}/deliveries?limit=&cursor=&status=
GET    /api/webhooks/{id}/deliveries/{delivery_id}
POST   /api/webhooks/{id}/deliveries/{delivery_id}/redeliver   202, due now

Bodies are the pydantic models of relay.web.models_webhooks; errors the relay's JSON shape.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.errors import ApiError
from relay.observability.request_context import current_request_id
from relay.services import SERVICES
from relay.web.body import read_json_object
from relay.web.caller import require_operator
from relay.web.models_webhooks import (
    Delivery,
    DeliveryList,
    DeliveryResponse,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookResponse,
    WebhookUpdate,
)
from relay.webhooks.deliveries import STATUSES
from relay.webhooks.service import Webhooks, not_found

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_ENDPOINT_ID = re.compile(r"^wh_[0-9a-f]{32}$")
_DELIVERY_ID = re.compile(r"^whd_[0-9a-f]{32}$")
# Who registered an endpoint through the API (the operator token is the one credential
# of these routes for now).
CREATED_BY = "operator"

M = TypeVar("M", bound=BaseModel)


async def _webhooks(request: web.Request) -> Webhooks:
    await require_operator(request)
    return request.app[SERVICES].webhooks


def _endpoint_id(request: web.Request) -> str:
    endpoint_id = request.match_info["id"]
    if not _ENDPOINT_ID.match(endpoint_id):
        raise not_found(endpoint_id)
    return endpoint_id


def _delivery_id(request: web.Request) -> str:
    delivery_id = request.match_info["delivery_id"]
    if not _DELIVERY_ID.match(delivery_id):
        raise ApiError(404, "delivery_not_found", f"No delivery {delivery_id}.")
    return delivery_id


async def _body(request: web.Request, model: type[M]) -> M:
    data = await read_json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, "invalid_field", f"{field}: {first['msg']}.") from None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_parameter", f"'limit' must be within 1..{MAX_LIMIT}.")
    return int(raw)


def _encode_cursor(created_at: datetime, item_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{item_id}".encode()).decode()


def _cursor(request: web.Request) -> tuple[datetime, str] | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        when, item_id = base64.urlsafe_b64decode(raw.encode()).decode().split("|", 1)
        return datetime.fromisoformat(when), item_id
    except (binascii.Error, UnicodeError, ValueError):
        raise ApiError(400, "invalid_parameter", "'cursor' is not one this API gave.") from None


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=model.model_dump_json(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def list_webhooks(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    limit = _limit(request)
    page = await webhooks.endpoints.page(limit=limit + 1, before=_cursor(request))
    more = len(page) > limit
    page = page[:limit]
    return _json(
        WebhookList(
            items=[Webhook.of(e) for e in page],
            next_cursor=_encode_cursor(page[-1].created_at, page[-1].id) if more else None,
            request_id=current_request_id(),
        )
    )


async def create_webhook(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    body = await _body(request, WebhookCreate)
    endpoint, secret = await webhooks.register(
        url=body.url,
        events=body.events,
        description=body.description,
        enabled=body.enabled,
        created_by=CREATED_BY,
    )
    created = WebhookCreated(
        **Webhook.of(endpoint).model_dump(), secret=secret, request_id=current_request_id()
    )
    response = _json(created, 201)
    response.headers["Location"] = f"/api/webhooks/{endpoint.id}"
    return response


async def get_webhook(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    endpoint = await webhooks.get(_endpoint_id(request))
    return _json(
        WebhookResponse(**Webhook.of(endpoint).model_dump(), request_id=current_request_id())
    )


async def update_webhook(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    endpoint_id = _endpoint_id(request)
    body = await _body(request, WebhookUpdate)
    endpoint = await webhooks.update(
        endpoint_id,
        url=body.url,
        events=body.events,
        description=body.description,
        enabled=body.enabled,
    )
    return _json(
        WebhookResponse(**Webhook.of(endpoint).model_dump(), request_id=current_request_id())
    )


async def delete_webhook(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    await webhooks.remove(_endpoint_id(request))
    return web.Response(status=204)


def _delivery(delivery: Delivery) -> DeliveryResponse:
    return DeliveryResponse(**delivery.model_dump(), request_id=current_request_id())


async def send_test(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    row = await webhooks.test(_endpoint_id(request))
    return _json(_delivery(Delivery.of(row)))


async def list_deliveries(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    endpoint_id = _endpoint_id(request)
    limit = _limit(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_parameter", f"'status' must be one of {', '.join(STATUSES)}.")
    await webhooks.get(endpoint_id)  # 404 for an unknown endpoint, not an empty list
    rows = await webhooks.deliveries.page(
        endpoint_id=endpoint_id, limit=limit + 1, status=status, before=_cursor(request)
    )
    more = len(rows) > limit
    items = [Delivery.of(r) for r in rows[:limit]]
    return _json(
        DeliveryList(
            items=items,
            next_cursor=_encode_cursor(items[-1].created_at, items[-1].id) if more else None,
            request_id=current_request_id(),
        )
    )


async def get_delivery(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    row = await webhooks.delivery(_endpoint_id(request), _delivery_id(request))
    return _json(_delivery(Delivery.of(row)))


async def redeliver(request: web.Request) -> web.Response:
    webhooks = await _webhooks(request)
    row = await webhooks.redeliver(_endpoint_id(request), _delivery_id(request))
    return _json(_delivery(Delivery.of(row)), 202)


def register(app: web.Application) -> None:
    app.router.add_get("/api/webhooks", list_webhooks)
    app.router.add_post("/api/webhooks", create_webhook)
    app.router.add_get("/api/webhooks/{id}", get_webhook)
    app.router.add_patch("/api/webhooks/{id}", update_webhook)
    app.router.add_delete("/api/webhooks/{id}", delete_webhook)
    app.router.add_post("/api/webhooks/{id}/test", send_test)
    app.router.add_get("/api/webhooks/{id}/deliveries", list_deliveries)
    app.router.add_get("/api/webhooks/{id}/deliveries/{delivery_id}", get_delivery)
    app.router.add_post("/api/webhooks/{id}/deliveries/{delivery_id}/redeliver", redeliver)
