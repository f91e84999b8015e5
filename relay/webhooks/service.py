"""Webhooks as the API and the CLI use them: register, change, remove and test endpoints,
read the delivery log, redeliver; and the dispatcher that delivers in the background.

Validation errors are ``ApiError`` (400 ``invalid_url`` / ``invalid_events``, 404
``webhook_not_found`` / ``delivery_not_found``), rendered as JSON by the web layer and as
a message by the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver

from relay.config import WebhooksConfig
from relay.db import Store, Within
from relay.errors import ApiError
from relay.observability.metrics import MetricsRegistry
from relay.sealing import SecretBox, StateKeys, count_previous_opens
from relay.webhooks.deliveries import DeliveryRows
from relay.webhooks.dispatcher import Dispatcher
from relay.webhooks.endpoints import (
    DEFAULT_PREVIOUS_SECRET_S,
    MAX_PREVIOUS_SECRET_S,
    Endpoint,
    EndpointRows,
    unknown_events,
)
from relay.webhooks.outbox import EVENT_TYPES
from relay.webhooks.sender import Sender
from relay.webhooks.ssrf import UrlRefused, check_url

MAX_EVENTS = 32


def not_found(endpoint_id: str) -> ApiError:
    return ApiError(404, "webhook_not_found", f"No webhook endpoint {endpoint_id}.")


class Webhooks:
    def __init__(
        self,
        config: WebhooksConfig,
        store: Store,
        state_keys: StateKeys | bytes,
        metrics: MetricsRegistry,
        instance_id: str,
        *,
        resolver: Callable[[], AbstractResolver] = aiohttp.ThreadedResolver,
    ) -> None:
        self.config = config
        box = SecretBox(state_keys, count_previous_opens(metrics, "webhook_secret"))
        self.endpoints = EndpointRows(store, box)
        self.deliveries = DeliveryRows(store)
        self.sender = Sender(config, resolver)
        self.instance_id = instance_id
        self.dispatcher = Dispatcher(
            config, store, self.endpoints, self.deliveries, self.sender, metrics, instance_id
        )

    def start(self) -> None:
        """Deliver from this process (unless ``webhooks.deliver`` is off)."""
        if self.config.deliver:
            self.dispatcher.start()

    async def close(self) -> None:
        await self.dispatcher.close()

    # ------------------------------------------------------------------ endpoints
    async def check_url(self, url: str) -> None:
        """400 ``invalid_url`` unless a delivery may go to ``url`` now (relay.webhooks.ssrf)."""
        try:
            await check_url(url, self.sender.policy, self.sender.resolver())
        except UrlRefused as exc:
            raise ApiError(400, "invalid_url", f"url: {exc}.") from None

    @staticmethod
    def check_events(events: Sequence[str]) -> list[str]:
        if not events:
            raise ApiError(400, "invalid_events", "events: name at least one event type.")
        if len(events) > MAX_EVENTS:
            raise ApiError(400, "invalid_events", f"events: at most {MAX_EVENTS}.")
        unknown = unknown_events(events)
        if unknown:
            raise ApiError(
                400,
                "invalid_events",
                f"events: unknown {', '.join(sorted(set(unknown)))}; known: "
                f"{', '.join(EVENT_TYPES)}, or * for all.",
            )
        return list(dict.fromkeys(events))  # without repeats, in the given order

    async def register(
        self,
        *,
        url: str,
        events: Sequence[str],
        description: str = "",
        enabled: bool = True,
        created_by: str,
        within: Within[tuple[Endpoint, str]] | None = None,
    ) -> tuple[Endpoint, str]:
        """A new endpoint and its signing secret (shown this once); ``within`` as
        ``EndpointRows.create``."""
        checked = self.check_events(events)
        await self.check_url(url)
        return await self.endpoints.create(
            url=url,
            events=checked,
            description=description,
            enabled=enabled,
            created_by=created_by,
            within=within,
        )

    async def get(self, endpoint_id: str) -> Endpoint:
        endpoint = await self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise not_found(endpoint_id)
        return endpoint

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> Endpoint:
        checked = None if events is None else self.check_events(events)
        if url is not None:
            await self.check_url(url)
        endpoint = await self.endpoints.update(
            endpoint_id, url=url, events=checked, description=description, enabled=enabled
        )
        if endpoint is None:
            raise not_found(endpoint_id)
        if enabled:
            self.dispatcher.wake()  # its backlog is due again
        return endpoint

    async def rotate_secret(
        self,
        endpoint_id: str,
        *,
        expire_previous_in_s: int = DEFAULT_PREVIOUS_SECRET_S,
        within: Within[tuple[Endpoint, str]] | None = None,
    ) -> tuple[Endpoint, str]:
        """A new signing secret (shown this once); the replaced one also signs every
        delivery for ``expire_previous_in_s`` seconds (0: not at all)."""
        if not 0 <= expire_previous_in_s <= MAX_PREVIOUS_SECRET_S:
            raise ApiError(
                400,
                "invalid_request",
                f"expire_previous_in_s: from 0 to {MAX_PREVIOUS_SECRET_S} (7 days).",
            )
        rotated = await self.endpoints.rotate_secret(
            endpoint_id, expire_previous_in_s=expire_previous_in_s, within=within
        )
        if rotated is None:
            raise not_found(endpoint_id)
        return rotated

    async def remove(self, endpoint_id: str) -> None:
        if not await self.endpoints.delete(endpoint_id):
            raise not_found(endpoint_id)

    # ------------------------------------------------------------------ deliveries
    async def test(self, endpoint_id: str) -> asyncpg.Record:
        """Send a ``webhook.test`` event to the endpoint now, once (no retries); the
        delivery as the log shows it."""
        await self.get(endpoint_id)
        try:
            claimed = await self.deliveries.create_test(
                endpoint_id=endpoint_id,
                instance=self.instance_id,
                lease_s=self.dispatcher.lease_s,
            )
        except LookupError:
            raise not_found(endpoint_id) from None
        await self.dispatcher.attempt(claimed)
        row = await self.deliveries.get(endpoint_id=endpoint_id, delivery_id=claimed.id)
        if row is None:
            # The endpoint was deleted while its test was sent (its deliveries went too).
            raise not_found(endpoint_id)
        return row

    async def delivery(self, endpoint_id: str, delivery_id: str) -> asyncpg.Record:
        row = await self.deliveries.get(endpoint_id=endpoint_id, delivery_id=delivery_id)
        if row is None:
            raise ApiError(
                404, "delivery_not_found", f"No delivery {delivery_id} of {endpoint_id}."
            )
        return row

    async def redeliver(self, endpoint_id: str, delivery_id: str) -> asyncpg.Record:
        """Deliver again (the same event and ``webhook-id``), due now, with a fresh
        ``retry_for_s``."""
        row = await self.deliveries.redeliver(
            endpoint_id=endpoint_id,
            delivery_id=delivery_id,
            retry_for_s=self.config.retry_for_s,
        )
        if row is None:
            raise ApiError(
                404, "delivery_not_found", f"No delivery {delivery_id} of {endpoint_id}."
            )
        self.dispatcher.wake()
        return row
