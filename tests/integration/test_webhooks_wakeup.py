"""The dispatcher works when there is work, not on a timer: whole relays on a real
PostgreSQL, with ``webhooks.poll_interval_s`` far longer than any wait below, so every
delivery here happens because the dispatcher was woken (an event written anywhere, a
redelivery asked of another instance) or slept until the due time it read from the
database (a retry's backoff, a crashed holder's lease), or when its listening connection
came back after a loss (a notification may have been missed), never because it polled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.cluster.bus import APPLICATION_NAME
from relay.webhooks.outbox import enqueue
from tests.integration.cluster_helpers import listener_cut_off, poll
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import RelayHarness
from tests.integration.test_webhooks import emit
from tests.integration.webhook_receiver import OPERATOR, receiver, register

# The longest poll the setting allows on every version of it: none happens in a test.
NO_POLL: dict[str, Any] = {"allow_insecure_loopback": True, "poll_interval_s": 60.0}
# Well under NO_POLL's interval, with room for a loaded machine.
PROMPTLY_S = 10.0
DATA = {"end_reason": "time_up"}


def depth(relay: RelayHarness, stage: str) -> float:
    return relay.counter("relay_webhooks_outbox_depth", stage=stage)


async def non_delivering(make_relay: MakeRelay) -> RelayHarness:
    """An instance that manages webhooks but delivers none (``webhooks.deliver = false``):
    another one must be woken to deliver what it writes."""
    return await make_relay(
        overrides={"webhooks": NO_POLL | {"deliver": False}}, instance_id="manager"
    )


async def idle(relay: RelayHarness) -> None:
    """Until the dispatcher's first pass at start has claimed what was due."""

    async def read() -> bool:
        return relay.counter("relay_db_queries_total", query="webhook_claim") >= 1

    await poll(read, PROMPTLY_S, "the dispatcher's first pass")


async def test_an_event_written_by_another_process_is_delivered_at_once(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        relay = await make_relay(overrides={"webhooks": NO_POLL})
        await register(relay, rec, ["interview.completed"])
        await idle(relay)
        # Written on a connection of its own, as another relay or a command would.
        started = time.monotonic()
        [event_id] = await emit(database_url, [("interview.completed", "iv_1", DATA)])
        await rec.wait_for(lambda got: len(got) == 1, PROMPTLY_S)

    assert rec.delivered()[0].webhook_id == event_id
    assert rec.received[0].at - started < PROMPTLY_S


async def test_a_redelivery_asked_of_a_non_delivering_instance_is_delivered_by_another(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        manager = await non_delivering(make_relay)
        deliverer = await make_relay(overrides={"webhooks": NO_POLL}, instance_id="deliverer")
        endpoint = await register(manager, rec, ["interview.completed"])
        await idle(deliverer)
        [event_id] = await emit(database_url, [("interview.completed", "iv_1", DATA)])
        await rec.wait_for(lambda got: len(got) == 1, PROMPTLY_S)

        async def delivered() -> list[Any]:
            return await manager.sql(
                "SELECT id FROM webhook_deliveries WHERE event_id = $1 AND status = 'delivered'",
                event_id,
            )

        [row] = await poll(delivered, PROMPTLY_S, "the delivery recorded")

        async with manager.client.post(
            f"/api/webhooks/{endpoint['id']}/deliveries/{row['id']}/redeliver", headers=OPERATOR
        ) as resp:
            assert resp.status == 202, await resp.text()
        await rec.wait_for(lambda got: len(got) == 2, PROMPTLY_S)

        async def both_attempts() -> list[Any]:
            # The deliverer records an attempt once the receiver has answered it: the
            # second one's row may come a moment after the receiver saw the request.
            rows = await manager.sql(
                "SELECT instance FROM webhook_attempts WHERE delivery_id = $1", row["id"]
            )
            return rows if len(rows) >= 2 else []

        attempts = await poll(both_attempts, PROMPTLY_S, "both attempts recorded")

    assert [r.webhook_id for r in rec.delivered()] == [event_id, event_id]
    assert [a["instance"] for a in attempts] == ["deliverer", "deliverer"]


async def test_a_failed_attempt_is_retried_at_its_due_time(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        rec.answer = lambda got: 503 if len(got) == 1 else 200
        manager = await non_delivering(make_relay)
        await register(manager, rec, ["interview.completed"])
        [event_id] = await emit(database_url, [("interview.completed", "iv_1", DATA)])
        # Its first pass at start attempts the event; the retry (due 1 to 2 s after the
        # failure: relay.webhooks.retry) is announced by nothing but its due time.
        await make_relay(overrides={"webhooks": NO_POLL | {"retry_base_s": 2.0}})
        await rec.wait_for(lambda got: len(got) == 1, PROMPTLY_S)

        async def recorded() -> list[Any]:
            return await manager.sql(
                "SELECT EXTRACT(EPOCH FROM next_attempt_at - last_attempt_at)::float8 AS wait"
                " FROM webhook_deliveries WHERE event_id = $1 AND attempts = 1",
                event_id,
            )

        [row] = await poll(recorded, PROMPTLY_S, "the failed attempt recorded")
        await rec.wait_for(lambda got: len(got) == 2, PROMPTLY_S)

    first, second = rec.received
    assert (first.status, second.status) == (503, 200)
    assert 1.0 <= row["wait"] <= 2.0
    # Not before its due time, and not long after it either.
    gap = second.at - first.at
    assert row["wait"] - 0.05 <= gap <= row["wait"] + 3.0, (gap, row["wait"])


async def test_a_crashed_holders_lease_is_taken_over_when_it_runs_out(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        manager = await non_delivering(make_relay)
        endpoint = await register(manager, rec, ["interview.completed"])
        # What an instance that claimed a delivery and died leaves behind: its lease, 3 s
        # from now. The survivor's first pass at start finds nothing it may claim yet:
        # only the lease's end makes the delivery due.
        started = time.monotonic()
        [row] = await manager.sql(
            """WITH event AS (
                   INSERT INTO webhook_events (id, type, interview_id, data, dispatched_at)
                   VALUES ('evt_' || md5('crashed'), 'interview.completed', 'iv_1', '{}', now())
                   RETURNING id, seq, created_at)
               INSERT INTO webhook_deliveries
                   (id, endpoint_id, event_id, seq, interview_id, give_up_at,
                    claimed_by, claimed_until)
               SELECT 'whd_' || md5('crashed'), $1, id, seq, 'iv_1', created_at + interval '1 day',
                      'crashed', now() + interval '3 seconds'
               FROM event
               RETURNING id""",
            endpoint["id"],
        )
        survivor = await make_relay(overrides={"webhooks": NO_POLL}, instance_id="survivor")
        await idle(survivor)
        await rec.wait_for(lambda got: len(got) == 1, PROMPTLY_S)
        arrived = rec.received[0].at - started

        async def attempts() -> list[Any]:
            return await manager.sql(
                "SELECT instance, outcome FROM webhook_attempts WHERE delivery_id = $1", row["id"]
            )

        logged = await poll(attempts, PROMPTLY_S, "the attempt recorded")

    assert 2.9 <= arrived <= 3.0 + 3.0, arrived  # not before the lease ran out
    assert [(a["instance"], a["outcome"]) for a in logged] == [("survivor", "delivered")]


async def test_the_depth_gauge_follows_the_dispatchers_own_work(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        up = False
        rec.answer = lambda _: 200 if up else 500
        # A retry far away: the delivery stays pending while the gauge is read.
        relay = await make_relay(overrides={"webhooks": NO_POLL | {"retry_base_s": 600.0}})
        endpoint = await register(relay, rec, ["interview.completed"])
        await idle(relay)
        assert (depth(relay, "event"), depth(relay, "delivery")) == (0, 0)
        await emit(database_url, [("interview.completed", "iv_1", DATA)])
        await rec.wait_for(lambda got: len(got) == 1, PROMPTLY_S)

        async def pending_shown() -> bool:
            return depth(relay, "delivery") == 1

        await poll(pending_shown, PROMPTLY_S, "the failed delivery in the gauge")
        assert depth(relay, "event") == 0

        async def failure_recorded() -> Any:
            # The gauge counts a delivery in flight as pending too: a redelivery asked for
            # before the failed attempt is recorded leaves that attempt be (its retry then
            # comes 600 s later), so wait for the record.
            rows = await relay.sql(
                "SELECT id FROM webhook_deliveries WHERE attempts = 1 AND claimed_until IS NULL"
            )
            return rows[0] if rows else None

        row = await poll(failure_recorded, PROMPTLY_S, "the failed attempt recorded")
        up = True
        async with relay.client.post(
            f"/api/webhooks/{endpoint['id']}/deliveries/{row['id']}/redeliver", headers=OPERATOR
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert (await resp.json())["in_flight"] is False
        await rec.wait_for(lambda got: len(got) == 2, PROMPTLY_S)

        async def emptied() -> bool:
            return depth(relay, "delivery") == 0

        await poll(emptied, PROMPTLY_S, "the delivered outbox in the gauge")
        [counts] = await relay.sql(
            "SELECT (SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL) AS e,"
            " (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS d"
        )

    assert (counts["e"], counts["d"]) == (0, 0)
    assert rec.received[-1].status == 200


async def test_an_idle_dispatcher_reads_nothing_between_its_polls(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay()  # webhooks.poll_interval_s as shipped
    await idle(relay)
    statements = ("webhook_fan_out", "webhook_claim", "webhook_outbox_state", "webhook_depth")

    def counts() -> list[float]:
        return [relay.counter("relay_db_queries_total", query=q) for q in statements]

    before = counts()
    # The window measured (shorter than the poll interval): an idle relay's dispatcher
    # sends nothing to the database.
    await asyncio.sleep(3.0)
    assert counts() == before


async def test_an_event_written_while_the_notifications_were_cut_off_is_delivered_when_they_return(
    make_relay: MakeRelay, private_postgres: Any
) -> None:
    dsn = await private_postgres.acreate_database("relaydb")
    async with receiver() as rec:
        relay = await make_relay(dsn=dsn, overrides={"webhooks": NO_POLL})
        await register(relay, rec, ["interview.completed"])
        await idle(relay)
        listener = relay.services.cluster.listener
        # The writer's session is open before the database stops accepting connections;
        # then the relay's listening connection is cut and cannot come back meanwhile.
        async with listener_cut_off(private_postgres.dsn(), dsn, APPLICATION_NAME) as writer:

            async def down() -> bool:
                return not listener.connected.is_set()

            await poll(down, PROMPTLY_S, "the listener to notice its connection was cut")
            # Nobody listens: this event's notification is lost.
            async with writer.transaction():
                event_id = await enqueue(
                    writer, "interview.completed", interview_id="iv_1", data=DATA
                )
        await rec.wait_for(lambda got: len(got) == 1, PROMPTLY_S)

    assert rec.delivered()[0].webhook_id == event_id
