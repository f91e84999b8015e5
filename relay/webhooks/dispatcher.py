"""The background delivery of webhooks from one relay process.

Each pass: fan the outbox's new events out into deliveries, claim as many due deliveries
as there are free slots (``webhooks.max_in_flight``) and attempt each in a task of its
own; its outcome is recorded, and a failure is retried after the backoff
(relay.webhooks.retry) until the delivery's ``give_up_at``. Every step is a statement on
PostgreSQL, so several instances dispatch together without delivering an event twice
(relay.webhooks.deliveries), and nothing waits in memory: a restart, or a crash, leaves
every delivery in its table (a crash's leases run out; a start lets go of its own).

A pass runs when there is something to do, not on a timer:

* woken (``wake``): an event was written anywhere (the outbox's trigger, migration 011,
  notifies every process through the cluster's command channel, relay.cluster.bus, which
  also wakes it whenever its listening connection comes back, in case one was missed), a
  delivery was made due by a redelivery or an endpoint enabled again (notified likewise),
  or one of this process's attempts ended (a slot is free);
* at the time the next delivery is due: after each pass the dispatcher reads the outbox's
  state (``DeliveryRows.state``), which says when the earliest delivery a claim could take
  is due (a retry's backoff, or a lease of a crashed instance running out), whichever
  instance wrote it;
* otherwise every ``webhooks.poll_interval_s`` it reads that state alone, and passes if
  anything waits that no notification announced (one lost while nobody listened).

Metrics: ``relay_webhooks_attempts_total{outcome}``, the latency histogram
``relay_webhooks_attempt_duration_seconds{outcome}``, ``relay_webhooks_given_up_total``
and the gauge ``relay_webhooks_outbox_depth{stage}`` (``event``: not yet fanned out;
``delivery``: not yet delivered nor given up), from the same state: after each pass (so
after this process's own fan-outs and attempts) and every ``webhooks.poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime, timedelta

import asyncpg

from relay.config import WebhooksConfig
from relay.db import DatabaseUnavailable, Store
from relay.observability.metrics import SLOW_BUCKETS, MetricsRegistry
from relay.sealing import SealError
from relay.tasks import TaskGroup, raise_if_cancelling
from relay.webhooks.deliveries import AttemptRecord, Claimed, DeliveryRows, OutboxState
from relay.webhooks.endpoints import EndpointRows
from relay.webhooks.outbox import TEST_EVENT
from relay.webhooks.retry import retry_delay_s
from relay.webhooks.sender import Attempt, Sender, payload

log = logging.getLogger("relay.webhooks")

# Outbox events turned into deliveries per statement (a pass repeats while it is full).
FAN_OUT_BATCH = 200
# A lease outlasts an attempt (webhooks.timeout_s) by this much: the time to record it.
LEASE_MARGIN_S = 30.0
RETENTION_INTERVAL_S = 3600.0
# Work waits but a pass took none of it (another instance is fanning it out or claiming
# it at this moment): look again after this long rather than at once.
RECHECK_S = 1.0
# Woken for a due time a little after it, so that it has passed by the database's clock.
DUE_MARGIN_S = 0.02
# After a failed pass (the database unreachable), the next one after this long, doubling
# up to webhooks.poll_interval_s.
ERROR_RETRY_S = 0.5
# In-flight attempts get this long at shut-down to finish and record their outcome; the
# rest are cancelled and attempted again by whichever instance claims them next.
CLOSE_GRACE_S = 2.0


class Dispatcher:
    def __init__(
        self,
        config: WebhooksConfig,
        store: Store,
        endpoints: EndpointRows,
        deliveries: DeliveryRows,
        sender: Sender,
        metrics: MetricsRegistry,
        instance_id: str,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._endpoints = endpoints
        self._rows = deliveries
        self._sender = sender
        self._instance = instance_id
        self._rng = rng or random.Random()
        # Two groups, closed at different moments: the loop stops at once, attempts in
        # flight get a moment to finish.
        self._loop_tasks = TaskGroup("webhooks", log=log, metrics=metrics)
        self._attempts = TaskGroup("webhook-attempts", log=log, metrics=metrics)
        self._in_flight: set[str] = set()
        # Endpoints whose previous secret did not open here (warned about once).
        self._previous_unopened: set[str] = set()
        self._wake = asyncio.Event()
        self._attempts_total = metrics.counter(
            "relay_webhooks_attempts_total",
            "Webhook delivery attempts by outcome "
            "(delivered, rejected, timeout, network, refused, error)",
            ["outcome"],
        )
        self._latency = metrics.histogram(
            "relay_webhooks_attempt_duration_seconds",
            "Webhook delivery attempts' duration by outcome",
            ["outcome"],
            buckets=SLOW_BUCKETS,
        )
        self._given_up = metrics.counter(
            "relay_webhooks_given_up_total",
            "Webhook deliveries given up after webhooks.retry_for_s of failures",
        )
        self._depth = metrics.gauge(
            "relay_webhooks_outbox_depth",
            "Webhooks waiting: events not yet fanned out (stage=event), deliveries not yet "
            "delivered nor given up (stage=delivery)",
            ["stage"],
        )

    @property
    def lease_s(self) -> float:
        return self._config.timeout_s + LEASE_MARGIN_S

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        self._loop_tasks.spawn(self._run(), name="webhooks-dispatcher")

    def wake(self) -> None:
        """Look for due work now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        await self._loop_tasks.close()
        await self._attempts.close(grace_s=CLOSE_GRACE_S)
        if not self._store.schema_ready:
            return  # the database never came up: nothing was claimed
        # What was cancelled mid-attempt is due again at once, for any instance.
        try:
            await self._rows.release(self._instance)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning("webhooks: leases not released (%s); they run out on their own", exc)

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        await self._store.wait_schema_ready()
        loop = asyncio.get_running_loop()
        released = False
        retention_at = 0.0
        error_wait = ERROR_RETRY_S
        # The first round passes: whatever waited while no instance ran is due.
        passing = True
        while True:
            self._wake.clear()
            try:
                if not released:
                    # A previous run of this instance that crashed held these.
                    await self._rows.release(self._instance)
                    released = True
                progress = await self._pass() if passing else None
                state = await self.update_depth()
                if loop.time() >= retention_at:
                    retention_at = loop.time() + RETENTION_INTERVAL_S
                    await self._apply_retention()
                wait, passing = self._plan(state, progress)
                error_wait = ERROR_RETRY_S
            except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
                log.warning("webhooks: dispatch pass failed (%s); retrying", exc)
                wait, passing = error_wait, True
                error_wait = min(error_wait * 2, self._config.poll_interval_s)
            wait = min(wait, max(0.0, retention_at - loop.time()))
            raise_if_cancelling()  # a library call of the round may have swallowed a cancel
            if await self._sleep(wait):
                passing = True

    def _plan(self, state: OutboxState, progress: int | None) -> tuple[float, bool]:
        """How long to sleep (unless woken) after a round that read ``state``, having
        fanned out and claimed ``progress`` (None: it did not pass); and whether the round
        after it passes."""
        free = self._config.max_in_flight - len(self._in_flight)
        # With no free slot, an attempt's end wakes the loop: a due time is of no use.
        due_in = state.due_in_s if free > 0 else None
        if state.events > 0 or (due_in is not None and due_in <= 0):
            if progress != 0:
                return 0.0, True
            return RECHECK_S, True
        if due_in is not None and due_in < self._config.poll_interval_s:
            return due_in + DUE_MARGIN_S, True
        return self._config.poll_interval_s, False

    async def _sleep(self, wait_s: float) -> bool:
        """Sleep up to ``wait_s``; True if woken before."""
        if self._wake.is_set():
            return True
        if wait_s <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._wake.wait()
                return True
        return False

    async def _pass(self) -> int:
        """Fan out, claim for the free slots; events fanned out plus deliveries started."""
        fanned = await self._fan_out()
        return fanned + await self._claim()

    async def pump(self) -> int:
        """One pass: fan out the outbox, claim what is due for the free slots, start
        their attempts; how many were started."""
        await self._fan_out()
        return await self._claim()

    async def _fan_out(self) -> int:
        total = 0
        while True:
            count = await self._rows.fan_out(
                limit=FAN_OUT_BATCH, retry_for_s=self._config.retry_for_s
            )
            total += count
            if count < FAN_OUT_BATCH:
                return total

    async def _claim(self) -> int:
        free = self._config.max_in_flight - len(self._in_flight)
        if free <= 0:
            return 0
        claimed = await self._rows.claim(instance=self._instance, limit=free, lease_s=self.lease_s)
        for delivery in claimed:
            self._in_flight.add(delivery.id)
            self._attempts.spawn(self._attempt_claimed(delivery), name=f"webhook-{delivery.id}")
        return len(claimed)

    async def update_depth(self) -> OutboxState:
        """Read the outbox's state and show it in the depth gauge."""
        state = await self._rows.state()
        self._depth.set(state.events, stage="event")
        self._depth.set(state.deliveries, stage="delivery")
        return state

    async def _apply_retention(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=self._config.retention_days)
        while await self._rows.forget_older_than(cutoff):
            pass
        # Unused already (claims ignore them); gone, they are not in the next dump either.
        await self._endpoints.forget_expired_secrets()

    async def _attempt_claimed(self, delivery: Claimed) -> None:
        try:
            await self.attempt(delivery)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            # The lease runs out and the delivery is attempted again (at least once).
            log.warning("webhook delivery %s: outcome not recorded (%s)", delivery.id, exc)
        finally:
            self._in_flight.discard(delivery.id)
            self._wake.set()

    # ------------------------------------------------------------------ one attempt
    def _open_previous(self, delivery: Claimed) -> str | None:
        """The secret a rotation replaced, while its overlap lasts, if it opens. One that
        does not (sealed under a state key this relay lacks: a lost key, the very thing a
        rotation mends) cannot sign; the new secret signs alone rather than not at all."""
        if delivery.previous_secret_sealed is None:
            return None
        try:
            return self._endpoints.open_secret(
                delivery.endpoint_id, delivery.previous_secret_sealed
            )
        except SealError:
            if delivery.endpoint_id not in self._previous_unopened:  # once, not per attempt
                self._previous_unopened.add(delivery.endpoint_id)
                log.warning(
                    "webhook endpoint %s: its previous signing secret does not open with"
                    " this relay's state key; its deliveries are signed with its current"
                    " secret only",
                    delivery.endpoint_id,
                )
            return None

    async def attempt(self, delivery: Claimed) -> tuple[Attempt, str | None]:
        """Attempt a delivery this instance holds the lease of, and record the outcome;
        the attempt and the delivery's status after it."""
        try:
            secret = self._endpoints.open_secret(delivery.endpoint_id, delivery.secret_sealed)
            previous = self._open_previous(delivery)
        except SealError:
            result = Attempt(
                "error",
                None,
                0.0,
                "the endpoint's signing secret does not open with this relay's state key "
                "(cluster.state_key must be the same on every instance)",
            )
        else:
            body = payload(
                delivery.event_id, delivery.event_type, delivery.event_created_at, delivery.data
            )
            result = await self._sender.send(
                delivery.url, secret, delivery.event_id, body, previous=previous
            )
        self._attempts_total.inc(outcome=result.outcome)
        self._latency.observe(result.duration_s, outcome=result.outcome)
        retry_in_s = None
        if result.outcome != "delivered" and delivery.event_type != TEST_EVENT:
            retry_in_s = retry_delay_s(delivery.attempts + 1, self._config, self._rng)
        status = await self._rows.record(
            delivery.id,
            instance=self._instance,
            attempt=AttemptRecord(
                outcome=result.outcome,
                status_code=result.status_code,
                duration_ms=round(result.duration_s * 1000),
                error=result.error,
            ),
            retry_in_s=retry_in_s,
        )
        if status == "failed" and retry_in_s is not None:
            self._given_up.inc()
            log.warning(
                "webhook delivery %s of %s to %s given up after %d attempts: %s",
                delivery.id,
                delivery.event_id,
                delivery.endpoint_id,
                delivery.attempts + 1,
                result.error,
            )
        return result, status
