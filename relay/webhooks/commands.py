"""``relay webhooks add | list | test | enable | disable | rotate-secret | remove``: the
endpoints of ``/api/webhooks`` from the command line, on the database the relay uses
(relay.cli opens it as for ``relay users``).

``add`` and ``rotate-secret`` print the endpoint's (new) signing secret alone on the last
line of stdout (shown this once, like ``relay users add``'s token). The secret is sealed
with the state key of the same data directory the relay reads (or ``cluster.state_key``;
``cluster.previous_state_keys`` open the secret ``test`` signs with, as for the relay), so
run the command from the relay's folder, or give it the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from relay.config import Settings
from relay.db import Store
from relay.errors import ApiError
from relay.fields import iso_utc
from relay.observability.metrics import MetricsRegistry
from relay.sealing import load_state_keys
from relay.webhooks.endpoints import DEFAULT_PREVIOUS_SECRET_S, Endpoint
from relay.webhooks.outbox import EVENT_TYPES
from relay.webhooks.service import Webhooks

CREATED_BY = "cli"


def add_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]  # argparse's own generic
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    webhooks = sub.add_parser("webhooks", help="manage webhook endpoints (docs/webhooks.md)")
    commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    add = with_config(
        commands.add_parser("add", help="register an endpoint and print its signing secret")
    )
    add.add_argument("--url", required=True, help="https URL (http only to loopback)")
    add.add_argument(
        "--events",
        required=True,
        help=f"comma-separated event types, or '*' for all: {', '.join(EVENT_TYPES)}",
    )
    add.add_argument("--description", default="")
    add.add_argument("--disabled", action="store_true", help="register it disabled")
    with_config(commands.add_parser("list", help="list endpoints"))
    for name, text in (
        ("test", "send a webhook.test event to the endpoint now and print the outcome"),
        ("enable", "deliver to the endpoint again (its waiting deliveries first)"),
        ("disable", "stop delivering to the endpoint (nothing new is queued for it)"),
        ("remove", "delete the endpoint with its deliveries and their log"),
    ):
        command = with_config(commands.add_parser(name, help=text))
        command.add_argument("id", help="the endpoint's id (wh_…)")
    rotate = with_config(
        commands.add_parser(
            "rotate-secret",
            help="give the endpoint a new signing secret and print it; the old one signs "
            "beside it until --expire-previous-in has passed",
        )
    )
    rotate.add_argument("id", help="the endpoint's id (wh_…)")
    rotate.add_argument(
        "--expire-previous-in",
        type=int,
        default=DEFAULT_PREVIOUS_SECRET_S,
        metavar="SECONDS",
        help="how long deliveries are signed with the old secret too (0: not at all; "
        f"at most 7 days; default {DEFAULT_PREVIOUS_SECRET_S})",
    )


def _line(endpoint: Endpoint) -> str:
    state = "enabled" if endpoint.enabled else "disabled"
    events = ",".join(endpoint.events)
    return f"{endpoint.id}  {state:8}  {events}  {endpoint.url}"


async def run(settings: Settings, store: Store, args: argparse.Namespace) -> int:
    keys = await asyncio.to_thread(load_state_keys, settings.cluster, settings.data_path)
    webhooks = Webhooks(settings.webhooks, store, keys, MetricsRegistry(), "cli")
    command = args.webhooks_command
    try:
        if command == "add":
            events = [e.strip() for e in args.events.split(",") if e.strip()]
            endpoint, secret = await webhooks.register(
                url=args.url,
                events=events,
                description=args.description,
                enabled=not args.disabled,
                created_by=CREATED_BY,
            )
            print(f"created webhook {_line(endpoint)}")
            print("signing secret (shown this once; verify webhook-signature with it):")
            print(secret)
            return 0
        if command == "list":
            page = await webhooks.endpoints.page(limit=1000)
            for endpoint in page:
                print(_line(endpoint))
            if not page:
                print("no webhook endpoints")
            return 0
        if command == "test":
            row = await webhooks.test(args.id)
            if row["status"] == "delivered":
                print(f"delivered {row['event_id']} (HTTP {row['last_status_code']})")
                return 0
            print(f"not delivered: {row['last_error']}", file=sys.stderr)
            return 1
        if command in ("enable", "disable"):
            endpoint = await webhooks.update(args.id, enabled=command == "enable")
            print(_line(endpoint))
            return 0
        if command == "rotate-secret":
            endpoint, secret = await webhooks.rotate_secret(
                args.id, expire_previous_in_s=args.expire_previous_in
            )
            print(f"rotated the secret of {_line(endpoint)}")
            if endpoint.previous_secret_expires_at is None:
                print("the previous secret signs nothing any more")
            else:
                until = iso_utc(endpoint.previous_secret_expires_at)
                print(f"the previous secret also signs every delivery until {until}")
            print("new signing secret (shown this once; verify webhook-signature with it):")
            print(secret)
            return 0
        await webhooks.remove(args.id)
        print(f"removed {args.id}")
        return 0
    except ApiError as exc:
        print(exc.message, file=sys.stderr)
        return 2 if exc.status == 400 else 1
