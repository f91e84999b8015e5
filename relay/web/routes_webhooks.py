"""Webhook endpoints and their delivery log: operations of the API registry (an admin key or
the operator token to change them, a read key to read them).

GET    /api/webhooks?limit=&cursor=                        newest first, ``next_cursor``
POST   /api/webhooks                                       201, with the secret (shown once)
GET    /api/webhooks/{id}
PATCH  /api/webhooks/{id}                                  url, events, description, enabled
DELETE /api/webhooks/{id}                                  204; its deliveries and log too
POST   /api/webhooks/{id}/rotate-secret                    a new secret (shown once)
POST   /api/webhooks/{id}/test                             a webhook.test event, sent now
GET    /api/webhooks/{id}/deliveries?limit=&cursor=&status=
GET    /api/webhooks/{id}/deliveries/{delivery_id}
POST   /api/webhooks/{id}/deliveries/{delivery_id}/redeliver   202, due now

Bodies are the pydantic models of relay.web.models_webhooks; errors the relay's JSON shape.
"""

from __future__ import annotations

import re

from relay.errors import ApiError
from relay.web.api import Api, Call, NoFields, Operation, PathParam, Reply, Response
from relay.web.models_webhooks import (
    Delivery,
    DeliveryList,
    DeliveryQuery,
    SecretRotation,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookSecretRotated,
    WebhookUpdate,
)
from relay.web.pagination import PageQuery, decode_cursor, page_of
from relay.webhooks.endpoints import Endpoint
from relay.webhooks.service import not_found

_ENDPOINT_PATTERN = r"^wh_[0-9a-f]{32}$"
_DELIVERY_PATTERN = r"^whd_[0-9a-f]{32}$"
_ENDPOINT_ID = re.compile(_ENDPOINT_PATTERN)
_DELIVERY_ID = re.compile(_DELIVERY_PATTERN)
_ENDPOINT = PathParam("id", "The endpoint's id (wh_…).", _ENDPOINT_PATTERN)
_DELIVERY = PathParam("delivery_id", "The delivery's id (whd_…).", _DELIVERY_PATTERN)


def _endpoint_id(call: Call) -> str:
    endpoint_id = call.path("id")
    if not _ENDPOINT_ID.match(endpoint_id):
        raise not_found(endpoint_id)
    return endpoint_id


def _delivery_id(call: Call) -> str:
    delivery_id = call.path("delivery_id")
    if not _DELIVERY_ID.match(delivery_id):
        raise ApiError(404, "delivery_not_found", f"No delivery {delivery_id}.")
    return delivery_id


async def list_webhooks(call: Call) -> Reply:
    query = call.query(PageQuery)
    rows = await call.services.webhooks.endpoints.page(
        limit=query.limit + 1, before=decode_cursor(query.cursor)
    )
    items, cursor = page_of(rows, query.limit, lambda e: (e.created_at, e.id))
    return Reply(200, WebhookList(items=[Webhook.of(e) for e in items], next_cursor=cursor))


async def create_webhook(call: Call) -> Reply:
    body = call.body(WebhookCreate)

    def answer(made: tuple[Endpoint, str]) -> Reply:
        endpoint, secret = made
        created = WebhookCreated(**Webhook.of(endpoint).model_dump(), secret=secret)
        return Reply(201, created, headers={"Location": f"/api/webhooks/{endpoint.id}"})

    made = await call.services.webhooks.register(
        url=body.url,
        events=body.events,
        description=body.description,
        enabled=body.enabled,
        created_by=call.require_principal().id,
        within=call.answer_within(answer),
    )
    return answer(made)


async def get_webhook(call: Call) -> Reply:
    return Reply(200, Webhook.of(await call.services.webhooks.get(_endpoint_id(call))))


async def update_webhook(call: Call) -> Reply:
    body = call.body(WebhookUpdate)
    endpoint = await call.services.webhooks.update(
        _endpoint_id(call),
        url=body.url,
        events=body.events,
        description=body.description,
        enabled=body.enabled,
    )
    return Reply(200, Webhook.of(endpoint))


async def delete_webhook(call: Call) -> Reply:
    await call.services.webhooks.remove(_endpoint_id(call))
    return Reply(204)


async def rotate_secret(call: Call) -> Reply:
    body = call.body(SecretRotation)

    def answer(made: tuple[Endpoint, str]) -> Reply:
        endpoint, secret = made
        return Reply(200, WebhookSecretRotated(**Webhook.of(endpoint).model_dump(), secret=secret))

    made = await call.services.webhooks.rotate_secret(
        _endpoint_id(call),
        expire_previous_in_s=body.expire_previous_in_s,
        within=call.answer_within(answer),
    )
    return answer(made)


async def send_test(call: Call) -> Reply:
    row = await call.services.webhooks.test(_endpoint_id(call))
    return Reply(200, Delivery.of(row))


async def list_deliveries(call: Call) -> Reply:
    query = call.query(DeliveryQuery)
    webhooks = call.services.webhooks
    endpoint_id = _endpoint_id(call)
    await webhooks.get(endpoint_id)  # 404 for an unknown endpoint, not an empty list
    rows = await webhooks.deliveries.page(
        endpoint_id=endpoint_id,
        limit=query.limit + 1,
        status=query.status,
        before=decode_cursor(query.cursor),
    )
    items, cursor = page_of(
        [Delivery.of(r) for r in rows], query.limit, lambda d: (d.created_at, d.id)
    )
    return Reply(200, DeliveryList(items=items, next_cursor=cursor))


async def get_delivery(call: Call) -> Reply:
    row = await call.services.webhooks.delivery(_endpoint_id(call), _delivery_id(call))
    return Reply(200, Delivery.of(row))


async def redeliver(call: Call) -> Reply:
    row = await call.services.webhooks.redeliver(_endpoint_id(call), _delivery_id(call))
    return Reply(202, Delivery.of(row))


def register(api: Api) -> None:
    read = {403: ("insufficient_scope",)}
    admin = {403: ("insufficient_scope",)}
    unknown = {404: ("webhook_not_found",)}
    invalid = {400: ("invalid_request", "invalid_json", "invalid_events", "invalid_url")}
    api.add(
        Operation(
            "GET",
            "/api/webhooks",
            "listWebhooks",
            "Webhook endpoints, newest first (never their secrets)",
            auth="read",
            tag="webhooks",
            run=list_webhooks,
            query=PageQuery,
            responses=(Response(200, "A page of endpoints.", WebhookList),),
            errors={**read, 400: ("invalid_cursor", "invalid_parameter")},
        ),
        Operation(
            "POST",
            "/api/webhooks",
            "createWebhook",
            "Register an endpoint (its signing secret is shown once)",
            auth="admin",
            tag="webhooks",
            run=create_webhook,
            body=WebhookCreate,
            idempotent=True,
            responses=(Response(201, "The endpoint and its secret.", WebhookCreated),),
            errors={**admin, **invalid},
        ),
        Operation(
            "GET",
            "/api/webhooks/{id}",
            "getWebhook",
            "One endpoint",
            auth="read",
            tag="webhooks",
            run=get_webhook,
            path_params=(_ENDPOINT,),
            responses=(Response(200, "The endpoint.", Webhook),),
            errors={**read, **unknown},
        ),
        Operation(
            "PATCH",
            "/api/webhooks/{id}",
            "updateWebhook",
            "Change an endpoint's URL, events, description, or enable/disable it",
            auth="admin",
            tag="webhooks",
            run=update_webhook,
            body=WebhookUpdate,
            path_params=(_ENDPOINT,),
            responses=(Response(200, "The endpoint, changed.", Webhook),),
            errors={**admin, **unknown, **invalid},
        ),
        Operation(
            "DELETE",
            "/api/webhooks/{id}",
            "deleteWebhook",
            "Delete an endpoint with its deliveries and their log",
            auth="admin",
            tag="webhooks",
            run=delete_webhook,
            path_params=(_ENDPOINT,),
            responses=(Response(204, "Deleted."),),
            errors={**admin, **unknown},
        ),
        Operation(
            "POST",
            "/api/webhooks/{id}/rotate-secret",
            "rotateWebhookSecret",
            "A new signing secret; the old one keeps signing beside it for a while",
            auth="admin",
            tag="webhooks",
            run=rotate_secret,
            body=SecretRotation,
            body_optional=True,
            idempotent=True,
            path_params=(_ENDPOINT,),
            description="For a secret that leaked, or a rotation by policy. The new secret "
            "is in this answer only (again with the same Idempotency-Key). For "
            "expire_previous_in_s seconds (default a day, at most 7 days, 0: none) every "
            "delivery's webhook-signature carries a signature with the new secret and one "
            "with the old, so a receiver verifying with either accepts it and may switch "
            "whenever it likes within that time; after it, only the new secret signs. "
            "Rotating again during that time drops the older secret: only the one just "
            "replaced keeps signing. Pending deliveries stay, and are signed the new way.",
            responses=(Response(200, "The endpoint, with its new secret.", WebhookSecretRotated),),
            errors={**admin, **unknown, 400: ("invalid_request", "invalid_json")},
        ),
        Operation(
            "POST",
            "/api/webhooks/{id}/test",
            "testWebhook",
            "Send a webhook.test event to the endpoint now",
            auth="admin",
            tag="webhooks",
            run=send_test,
            body=NoFields,
            body_optional=True,
            idempotent=True,
            path_params=(_ENDPOINT,),
            responses=(Response(200, "The test delivery, attempted.", Delivery),),
            errors={**admin, **unknown},
        ),
        Operation(
            "GET",
            "/api/webhooks/{id}/deliveries",
            "listWebhookDeliveries",
            "An endpoint's delivery log, newest first, each with its attempts",
            auth="read",
            tag="webhooks",
            run=list_deliveries,
            query=DeliveryQuery,
            path_params=(_ENDPOINT,),
            responses=(Response(200, "A page of deliveries.", DeliveryList),),
            errors={**read, **unknown, 400: ("invalid_cursor", "invalid_parameter")},
        ),
        Operation(
            "GET",
            "/api/webhooks/{id}/deliveries/{delivery_id}",
            "getWebhookDelivery",
            "One delivery with its attempts",
            auth="read",
            tag="webhooks",
            run=get_delivery,
            path_params=(_ENDPOINT, _DELIVERY),
            responses=(Response(200, "The delivery.", Delivery),),
            errors={**read, 404: ("webhook_not_found", "delivery_not_found")},
        ),
        Operation(
            "POST",
            "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            "redeliverWebhook",
            "Deliver again, now (a delivered or given-up one too)",
            auth="admin",
            tag="webhooks",
            run=redeliver,
            idempotent=True,
            path_params=(_ENDPOINT, _DELIVERY),
            body=NoFields,
            body_optional=True,
            responses=(Response(202, "The delivery, due now.", Delivery),),
            errors={**admin, 404: ("webhook_not_found", "delivery_not_found")},
        ),
    )
