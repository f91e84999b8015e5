"""Webhooks end to end: whole relays on a real PostgreSQL deliver the outbox's events to a
real receiver on loopback, which verifies every signature with the `standardwebhooks`
package. Events are enqueued the way the code that changes an interview does it: with
``enqueue`` inside the transaction of the change."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from relay.observability.metrics import MetricsRegistry
from relay.sealing import decode_key
from relay.webhooks.outbox import enqueue
from relay.webhooks.service import Webhooks
from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import STATE_KEY, RelayHarness, migrated_store, relay_settings
from tests.integration.webhook_receiver import (
    OPERATOR,
    Received,
    deliveries,
    receiver,
    register,
)

# Deliveries to the receiver on loopback, looked for every 0.1 s.
LOOPBACK: dict[str, Any] = {"allow_insecure_loopback": True, "poll_interval_s": 0.1}


async def emit(dsn: str, events: Sequence[tuple[str, str | None, dict[str, Any]]]) -> list[str]:
    """Enqueue (type, interview_id, data) events, each in a transaction of its own."""
    conn = await asyncpg.connect(dsn)
    ids = []
    try:
        for event_type, interview_id, data in events:
            async with conn.transaction():
                ids.append(await enqueue(conn, event_type, interview_id=interview_id, data=data))
    finally:
        await conn.close()
    return ids


async def test_signed_retried_and_delivered_by_the_next_relay_after_a_restart(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        rec.answer = lambda got: 500 if len(got) <= 2 else 200
        # Retries 2-4 s, then 4-8 s apart: time enough to stop the first relay in between.
        settings = {"webhooks": LOOPBACK | {"retry_base_s": 4.0}}
        first = await make_relay(overrides=settings, instance_id="relay-a")
        endpoint = await register(first, rec, ["interview.completed"])
        data = {
            "interview_id": "iv_1",
            "duration_s": 61.5,
            "end_reason": "time_up",
            "ended_at": "2030-01-01T10:00:00Z",
        }
        [event_id] = await emit(database_url, [("interview.completed", "iv_1", data)])

        async def second_failure_recorded() -> bool:
            rows = await first.sql(
                "SELECT attempts FROM webhook_deliveries WHERE event_id = $1", event_id
            )
            return bool(rows) and rows[0]["attempts"] == 2

        await poll(second_failure_recorded, 20, "two failed attempts recorded")
        await first.client.close()  # the relay stops (its shut-down, in full)
        [row] = await first.sql(
            "SELECT status, claimed_by, next_attempt_at > now() AS later FROM webhook_deliveries"
            " WHERE event_id = $1",
            event_id,
        )
        assert (row["status"], row["claimed_by"], row["later"]) == ("pending", None, True)
        assert len(rec.received) == 2

        second = await make_relay(overrides=settings, instance_id="relay-b")
        await rec.wait_for(lambda got: len(got) == 3, 20)

        async def delivered() -> list[asyncpg.Record]:
            return [
                r
                for r in await second.sql(
                    "SELECT outcome, status_code, instance FROM webhook_attempts a"
                    " JOIN webhook_deliveries d ON d.id = a.delivery_id"
                    " WHERE d.event_id = $1 AND d.status = 'delivered' ORDER BY a.id",
                    event_id,
                )
            ]

        attempts = await poll(delivered, 10, "the delivery marked delivered")

    got = rec.verified()
    assert [r.status for r in got] == [500, 500, 200]
    assert {r.webhook_id for r in got} == {event_id}  # one id across retries and relays
    timestamps = [int(r.headers["webhook-timestamp"]) for r in got]
    assert timestamps == sorted(timestamps)
    assert got[-1].payload == {
        "id": event_id,
        "type": "interview.completed",
        "timestamp": got[-1].payload["timestamp"] if got[-1].payload else None,
        "data": data,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", got[-1].payload["timestamp"])
    assert [(a["outcome"], a["status_code"], a["instance"]) for a in attempts] == [
        ("rejected", 500, "relay-a"),
        ("rejected", 500, "relay-a"),
        ("delivered", 200, "relay-b"),
    ]
    log = await deliveries(second, endpoint["id"])
    assert len(log) == 1 and log[0]["status"] == "delivered" and log[0]["attempts"] == 3
    assert [a["outcome"] for a in log[0]["attempt_log"]] == ["delivered", "rejected", "rejected"]
    assert log[0]["attempt_log"][1]["error"] == "HTTP 500: nope"


async def test_an_interviews_events_arrive_in_order_under_retries(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        failures: dict[str, int] = {}

        def answer(got: list[Received]) -> int:
            # The first event of interview a fails twice; everything else succeeds.
            this = got[-1]
            if this.data.get("n") == "a1" and failures.get(this.webhook_id, 0) < 2:
                failures[this.webhook_id] = failures.get(this.webhook_id, 0) + 1
                return 503
            return 200

        rec.answer = answer
        relay = await make_relay(overrides={"webhooks": LOOPBACK | {"retry_base_s": 0.3}})
        await register(relay, rec)
        ids = await emit(
            database_url,
            [
                ("interview.started", "iv_a", {"n": "a1"}),
                ("interview.started", "iv_b", {"n": "b1"}),
                ("interview.completed", "iv_a", {"n": "a2"}),
                ("recording.ready", "iv_a", {"n": "a3"}),
                ("interview.completed", "iv_b", {"n": "b2"}),
            ],
        )
        await rec.wait_for(lambda got: len([r for r in got if r.status == 200]) == 5, 30)

    got = rec.verified()
    order = [r.data["n"] for r in got]
    delivered = [r.data["n"] for r in got if r.status == 200]
    assert [n for n in delivered if n.startswith("a")] == ["a1", "a2", "a3"]
    assert [n for n in delivered if n.startswith("b")] == ["b1", "b2"]
    # Nothing of interview a went out while its first event was still failing...
    first_success = next(i for i, r in enumerate(got) if r.data["n"] == "a1" and r.status == 200)
    assert order[:first_success].count("a1") == 2
    assert "a2" not in order[:first_success] and "a3" not in order[:first_success]
    # ...while interview b was not held up by it.
    assert order.index("b2") < first_success
    assert len(got) == 7 and {r.webhook_id for r in got} == set(ids)


async def test_two_relays_sharing_a_database_deliver_each_event_once(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        settings = {"webhooks": LOOPBACK | {"poll_interval_s": 0.05}}
        relays = [await make_relay(overrides=settings, instance_id=f"relay-{i}") for i in range(2)]
        await register(relays[0], rec)
        events = [
            ("interview.started" if i % 2 else "interview.completed", f"iv_{i % 6}", {"i": i})
            for i in range(60)
        ]
        ids = await emit(database_url, events)
        await rec.wait_for(lambda got: len(got) >= 60, 60)
        # Both relays go on polling: a duplicate would arrive now if one were coming.
        await asyncio.sleep(1.0)
        instances = await relays[0].sql("SELECT DISTINCT instance FROM webhook_attempts")

    got = rec.delivered()
    assert len(got) == 60
    assert sorted(r.webhook_id for r in got) == sorted(ids)
    for interview in range(6):
        mine = [r.data["i"] for r in got if r.data["i"] % 6 == interview]
        assert mine == sorted(mine), (interview, mine)
    assert {r["instance"] for r in instances} <= {"relay-0", "relay-1"}


@asynccontextmanager
async def tcp_listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP port on 127.0.0.1 counting the connections it accepts: (port, counts)."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.1.2.3/hook", "10.1.2.3 is private or reserved"),
        ("https://192.168.1.20:8443/hook", "is private or reserved"),
        ("https://100.64.0.7/hook", "is private or reserved"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
        ("https://[fe80::1]/hook", "fe80::1 is link-local"),
        ("https://[::ffff:10.0.0.1]/hook", "10.0.0.1 is private or reserved"),
        # Through a NAT64 gateway or a 6to4 relay, to the address embedded in them.
        ("https://[64:ff9b::a9fe:a9fe]/hook", "169.254.169.254 is link-local"),
        ("https://[64:ff9b::a00:1]/hook", "10.0.0.1 is private or reserved"),
        # (127.0.0.1 behind a 6to4 relay is not this host's loopback: refused as any
        # other address outside the public internet.)
        ("https://[2002:7f00:1::1]/hook", "127.0.0.1 is private or reserved"),
        ("https://[64:ff9b:1::a9fe:a9fe]/hook", "local-use NAT64"),
        # Reserved IPv6 ranges Python 3.11's is_global lets through.
        ("https://[::127.0.0.1]/hook", "is private or reserved"),
        ("https://[fec0::1]/hook", "is private or reserved"),
        ("https://127.0.0.1:9/hook", "127.0.0.1 is loopback"),
        ("https://localhost:9/hook", "is loopback"),
        ("https://0.0.0.0/hook", "not a unicast address"),
        ("http://93.184.216.34/hook", "plain http is allowed only to loopback"),
        ("http://127.0.0.1:9/hook", "plain http is allowed only to loopback"),
        ("ftp://93.184.216.34/hook", "must be an https URL"),
        ("https://user:secret@93.184.216.34/hook", "must not carry credentials"),
        ("https://2130706433/hook", "neither a name nor an IP address"),
        ("https://127.1/hook", "neither a name nor an IP address"),
    ],
)
async def test_endpoint_urls_into_the_operators_network_are_refused(
    make_relay: MakeRelay, url: str, why: str
) -> None:
    relay = await make_relay()
    async with relay.client.post(
        "/api/webhooks", json={"url": url, "events": ["*"]}, headers=OPERATOR
    ) as resp:
        body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["code"] == "invalid_url" and why in body["error"]["message"], body
    assert body["request_id"].startswith("req_")
    assert "secret" not in str(body)
    assert await relay.sql("SELECT id FROM webhook_endpoints") == []


async def test_configured_networks_and_insecure_loopback_open_exactly_what_they_name(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(
        overrides={
            "webhooks": {"allowed_networks": ["10.20.0.0/16"], "allow_insecure_loopback": True}
        }
    )

    async def status(url: str) -> int:
        async with relay.client.post(
            "/api/webhooks", json={"url": url, "events": ["*"]}, headers=OPERATOR
        ) as resp:
            return resp.status

    assert await status("https://10.20.3.4/hook") == 201
    assert await status("https://10.21.3.4/hook") == 400
    assert await status("http://127.0.0.1:9/hook") == 201
    assert await status("http://localhost:9/hook") == 201
    assert await status("http://10.20.3.4/hook") == 400  # plain http stays loopback-only


async def test_an_address_refused_at_delivery_is_never_connected_to(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with tcp_listener() as (port, accepted):
        # Registered by a relay whose configuration allowed loopback...
        lenient = await make_relay(
            overrides={"webhooks": {"allowed_networks": ["127.0.0.0/8", "::1/128"]}},
            instance_id="lenient",
        )
        endpoint = await register_url(lenient, f"https://localhost:{port}/hook")
        await lenient.client.close()
        # ...delivered by one whose configuration does not: the addresses are checked again.
        strict = await make_relay(overrides={"webhooks": {"poll_interval_s": 0.1}})
        await emit(database_url, [("interview.cancelled", "iv_x", {"interview_id": "iv_x"})])

        async def refused() -> list[dict[str, Any]]:
            log = await deliveries(strict, endpoint["id"])
            return log if log and log[0]["attempts"] >= 1 else []

        [delivery] = await poll(refused, 15, "a refused attempt")
        assert accepted == []

    assert delivery["status"] == "pending"  # retried: the configuration may change
    attempt = delivery["attempt_log"][0]
    assert attempt["outcome"] == "refused"
    assert "localhost resolves to 127.0.0.1 is loopback" in attempt["error"], attempt
    assert strict.counter("relay_webhooks_attempts_total", outcome="refused") >= 1


async def register_url(relay: RelayHarness, url: str, events: list[str] | None = None) -> Any:
    async with relay.client.post(
        "/api/webhooks", json={"url": url, "events": events or ["*"]}, headers=OPERATOR
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return body


class ScriptedDns(AbstractResolver):
    """A DNS server whose answers change: each lookup gets the next address of
    ``answers`` (the last one repeats).

    The one stand-in of these tests: the namespace the tests run in has no DNS server and
    the system's files (/etc/hosts) are the machine's, so a real name cannot be made to
    resolve one way at registration and another at delivery. It sits where the system's
    resolver sits (``Webhooks(resolver=...)``): the guard and the connection are the
    relay's own."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        return None


async def test_a_name_rebound_to_loopback_after_registration_is_refused_at_delivery(
    database_url: str,
) -> None:
    settings = relay_settings(database_url, "http://127.0.0.1:9/v1")
    metrics = MetricsRegistry(process_metrics=False)
    key = decode_key(STATE_KEY)
    async with migrated_store(database_url, metrics) as store, tcp_listener() as (port, accepted):
        dns = ScriptedDns(["93.184.216.34", "127.0.0.1"])
        webhooks = Webhooks(settings.webhooks, store, key, metrics, "strict", resolver=lambda: dns)
        endpoint, _ = await webhooks.register(
            url=f"https://hooks.example.test:{port}/hook", events=["*"], created_by="test"
        )
        await emit(database_url, [("interview.started", "iv_r", {"interview_id": "iv_r"})])
        assert await webhooks.dispatcher.pump() == 1
        await wait_until(lambda: webhooks.dispatcher.in_flight == 0, 15, "the attempt")
        await webhooks.close()
        [row] = await webhooks.deliveries.page(endpoint_id=endpoint.id, limit=10)
        assert accepted == []
        assert dns.lookups == ["hooks.example.test", "hooks.example.test"]

        # Where loopback is allowed, the same answer is what the delivery connects to:
        # the address checked is the address used.
        allowing = settings.replace("webhooks", allowed_networks=["127.0.0.0/8"])
        lenient = Webhooks(allowing.webhooks, store, key, metrics, "lenient", resolver=lambda: dns)
        tried = await lenient.test(endpoint.id)
        await lenient.close()
        assert accepted == [1]

    attempt = json.loads(row["attempt_log"])[0]
    assert attempt["outcome"] == "refused"
    assert attempt["error"] == "refused: hooks.example.test resolves to 127.0.0.1 is loopback " + (
        "(webhooks.allow_insecure_loopback is off)"
    )
    assert (
        metrics.counter("relay_webhooks_attempts_total", "", ["outcome"]).value(outcome="refused")
        == 1
    )
    assert tried["status"] == "failed" and tried["last_error"].startswith("ClientConnector")
