"""The request and response bodies of ``/api/webhooks`` (relay.web.routes_webhooks), as
pydantic models: the handlers validate with them and build their answers from them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from relay.fields import Text
from relay.web.pagination import Page, PageQuery
from relay.webhooks.endpoints import DEFAULT_PREVIOUS_SECRET_S, MAX_PREVIOUS_SECRET_S, Endpoint
from relay.webhooks.outbox import EVENT_TYPES

DeliveryStatus = Literal["pending", "delivered", "failed"]
Outcome = Literal["delivered", "rejected", "timeout", "network", "refused", "error"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WebhookCreate(_Request):
    url: str = Field(min_length=1, max_length=2048, description="https (or http to loopback)")
    events: list[str] = Field(
        min_length=1,
        max_length=32,
        description=f"event types ({', '.join(EVENT_TYPES)}; docs/webhooks.md), or '*' for "
        "every type",
    )
    description: Text = Field(default="", max_length=500)
    enabled: bool = True


class WebhookUpdate(_Request):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[str] | None = Field(default=None, min_length=1, max_length=32)
    description: Text | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class SecretRotation(_Request):
    expire_previous_in_s: int = Field(
        default=DEFAULT_PREVIOUS_SECRET_S,
        ge=0,
        le=MAX_PREVIOUS_SECRET_S,
        description="how long the replaced secret keeps signing every delivery beside the "
        "new one, in seconds (0: it stops now); at most 7 days",
    )


class Webhook(BaseModel):
    id: str
    url: str
    description: str
    events: list[str]
    enabled: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None = Field(
        description="when the signing secret was last rotated; null: never"
    )
    previous_secret_expires_at: datetime | None = Field(
        description="until when deliveries are signed with the replaced secret too; null: "
        "no rotation's overlap is running"
    )

    @classmethod
    def of(cls, endpoint: Endpoint) -> Webhook:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            events=list(endpoint.events),
            enabled=endpoint.enabled,
            created_by=endpoint.created_by,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
            secret_rotated_at=endpoint.secret_rotated_at,
            previous_secret_expires_at=endpoint.previous_secret_expires_at,
        )


class WebhookCreated(Webhook):
    secret: str = Field(
        description="whsec_…: verifies the webhook-signature header; shown only here"
    )


class WebhookSecretRotated(Webhook):
    secret: str = Field(
        description="the new whsec_…: deliveries are signed with it from now on; shown only here"
    )


class WebhookList(Page):
    items: list[Webhook]


class DeliveryAttempt(BaseModel):
    attempted_at: datetime
    outcome: Outcome
    status_code: int | None
    duration_ms: int
    error: str | None


class Delivery(BaseModel):
    id: str
    endpoint_id: str
    event_id: str = Field(description="also the webhook-id header")
    event_type: str
    interview_id: str | None
    status: DeliveryStatus
    in_flight: bool = Field(description="an instance is attempting it now")
    attempts: int
    next_attempt_at: datetime | None = Field(description="when pending")
    give_up_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[DeliveryAttempt] = Field(description="the newest attempts first")

    @classmethod
    def of(cls, row: asyncpg.Record) -> Delivery:
        fields: dict[str, Any] = dict(row)
        if fields["status"] != "pending":
            fields["next_attempt_at"] = None
        fields["attempt_log"] = [
            DeliveryAttempt.model_validate(a) for a in _json_list(fields["attempt_log"])
        ]
        return cls.model_validate(fields)


class DeliveryList(Page):
    items: list[Delivery]


class DeliveryQuery(PageQuery):
    status: DeliveryStatus | None = Field(default=None, description="Only deliveries in it.")


def _json_list(value: Any) -> list[dict[str, Any]]:
    data = json.loads(value) if isinstance(value, str) else value
    return list(data or [])
