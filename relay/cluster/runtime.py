"""This member's part in the cluster: heartbeat, commands, reconciliation.

Commands (``op`` field of a NOTIFY payload, relay.cluster.bus):

- ``revoke_user`` {user_id, token_hash}: end the user's live interviews here (reason
  ``revoked``), fail their pending sessions, drop the user from the caches;
- ``end_session`` {session_id, reason}: the member holding the session hangs it up;
- ``drain`` {member}: that member (or every one, ``"*"``) stops admitting sessions;
- ``claimed`` {session_id, by}: a session created here was exchanged elsewhere, so its
  local pending entry goes (its row and shared lease now belong to the claimer);
- an op of another part of the process (``subscribers``, e.g. ``webhooks_due``, sent by
  the outbox's trigger: relay.webhooks.dispatcher): its callback runs, and runs too at
  every (re)connection of the listening connection, in case one was missed meanwhile.

Every heartbeat also reconciles the local sessions with their rows, so a command lost
while the listening connection was down still takes effect one heartbeat later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from relay.admission.service import Admission
from relay.cluster import members
from relay.cluster.bus import CommandListener, publish
from relay.cluster.limits import SharedLimits
from relay.cluster.members import DEAD_AFTER_HEARTBEATS, MemberState
from relay.config import Settings
from relay.db import RETRYABLE_ERRORS, DatabaseUnavailable, Store
from relay.observability.masking import mask_email
from relay.observability.metrics import MetricsRegistry
from relay.sessions.drain import DrainState
from relay.sessions.registry import SessionEntry, SessionRegistry
from relay.sessions.service import SessionService
from relay.tasks import TaskGroup, idle

log = logging.getLogger("relay.cluster")

_DB_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable, *RETRYABLE_ERRORS)

ALL_MEMBERS = "*"


def _relay_version() -> str:
    try:
        return version("interview-relay")
    except PackageNotFoundError:
        return "unknown"


# Read once at import: it reads package metadata from disk.
RELAY_VERSION = _relay_version()


class ClusterRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        instance_id: str,
        address: str,
        store: Store,
        registry: SessionRegistry,
        sessions: SessionService,
        admission: Admission,
        limits: SharedLimits,
        drain: DrainState,
        metrics: MetricsRegistry,
        subscribers: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.sessions = sessions
        self.admission = admission
        self.limits = limits
        self.drain = drain
        self.instance_id = instance_id
        self.interval_s = settings.cluster.heartbeat_interval_s
        self._recover_after_s = settings.cluster.recover_after_s
        self._resume_grace_s = settings.session.reconnect_grace_s
        self._max_sessions = settings.limits.global_max_sessions
        self.member = MemberState(
            id=instance_id,
            address=address,
            version=RELAY_VERSION,
            pid=os.getpid(),
            started_at=datetime.now(UTC),
        )
        # Other parts' ops: each callback (cheap, not awaited) runs at every message with
        # its op, and at every (re)connection of the listening connection: a message sent
        # while it was down is lost, so each must then look for itself.
        self._subscribers = dict(subscribers or {})
        self.listener = CommandListener(
            store.dsn,
            self.handle,
            check_interval_s=self.interval_s,
            metrics=metrics,
            on_connected=self._caught_up,
        )
        self._tasks = TaskGroup("cluster", log=log, metrics=metrics)
        self._beats = metrics.counter(
            "relay_cluster_heartbeats_total", "Heartbeats written by this member", ["outcome"]
        )
        self._commands = metrics.counter(
            "relay_cluster_commands_total", "Cluster commands received", ["op"]
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.listener.start()
        self._tasks.spawn(self._beat_forever(), name="cluster-heartbeat")

    async def close(self) -> None:
        await self._tasks.close()
        await self.listener.close()
        try:
            await members.leave(self.store, self.member.id)
        except _DB_ERRORS:
            log.warning("could not leave the cluster view; it drops out by itself")

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat_once()
                self._beats.inc(outcome="ok")
            except _DB_ERRORS as exc:
                self._beats.inc(outcome="failed")
                log.warning("heartbeat failed (%s)", type(exc).__name__)
            except Exception:  # the heartbeat must never die; the next one retries
                self._beats.inc(outcome="failed")
                log.exception("heartbeat failed")
            await idle(self.interval_s)

    def snapshot(self) -> MemberState:
        live = self.registry.live()
        member = self.member
        member.draining = self.drain.draining
        member.live = len(live)
        member.load = round(len(live) / self._max_sessions, 4)
        member.sessions = [session_summary(self.instance_id, e) for e in live]
        return member

    async def beat_once(self) -> None:
        store = self.store
        if not store.schema_ready:
            return
        # Redis first: a slow database must not let the leases of live sessions lapse.
        # Only sessions that took a lease (relay.sessions.service), and only leases that
        # still exist: one reserved but not yet past the shared cap has none to renew.
        await self.limits.renew(self.registry.leased())
        await members.beat(store, self.snapshot())
        await self._reconcile()
        recovered = await members.recover_dead(
            store,
            dead_after_s=self.interval_s * DEAD_AFTER_HEARTBEATS + self._recover_after_s,
            resume_grace_s=self._resume_grace_s,
        )
        if recovered.members:
            log.warning(
                "members %s stopped beating: closed %d of their sessions (relay_lost)",
                ", ".join(recovered.members),
                recovered.sessions,
            )

    async def cluster_view(self) -> list[dict[str, Any]]:
        # This member's entry is fresh, not as of its last heartbeat.
        await members.beat(self.store, self.snapshot())
        return await members.view(self.store, self.interval_s)

    # ------------------------------------------------------------------ commands
    def _caught_up(self) -> None:
        for callback in self._subscribers.values():
            callback()

    async def handle(self, message: dict[str, Any]) -> None:
        op = str(message.get("op"))
        subscriber = self._subscribers.get(op)
        self._commands.inc(op=op if op in _OPS or subscriber else "unknown")
        if subscriber is not None:
            subscriber()
        elif op == "revoke_user" and isinstance(message.get("user_id"), int):
            token_hash = message.get("token_hash")
            if isinstance(token_hash, str):
                await self.admission.forget(token_hash)
            await self.end_user_sessions(message["user_id"], "revoked")
        elif op == "end_session" and isinstance(message.get("session_id"), str):
            entry = self.registry.get(message["session_id"])
            if entry is not None:
                await self.end_local(entry, str(message.get("reason") or "operator_hangup"))
        elif op == "drain" and message.get("member") in (ALL_MEMBERS, self.member.id):
            if self.drain.start():
                log.warning("drain requested through the cluster: no new sessions here")
            # The cluster view says so now rather than at the next heartbeat.
            with contextlib.suppress(*_DB_ERRORS):
                await members.beat(self.store, self.snapshot())
        elif op == "claimed" and message.get("by") != self.member.id:
            entry = self.registry.get(str(message.get("session_id")))
            if entry is not None and entry.state == "pending":
                # Its row and its shared lease now belong to the claimer: only forget it.
                self.registry.release(entry.session_id)

    async def end_user_sessions(self, user_id: int, reason: str) -> int:
        entries = [e for e in self.registry.live() if e.user_id == user_id]
        await asyncio.gather(*(self.end_local(e, reason) for e in entries))
        return len(entries)

    async def end_local(self, entry: SessionEntry, reason: str) -> None:
        log.info("session %s: ending (%s)", entry.session_id, reason)
        if entry.bridge is not None:
            await entry.bridge.close(reason)
        else:
            state = "ended" if reason.endswith("hangup") else "failed"
            await self.sessions.finish(entry, state=state, reason=reason, duration_s=0.0)

    async def publish(self, message: dict[str, Any]) -> None:
        await publish(self.store, message)

    async def _reconcile(self) -> None:
        local = {e.session_id: e for e in self.registry.live()}
        if not local:
            return
        for row in await members.session_rows(self.store, list(local)):
            entry = local.get(row["id"])
            if entry is None or self.registry.get(entry.session_id) is not entry:
                continue
            if not row["active"]:
                await self.end_local(entry, "revoked")
            elif row["interview_status"] == "cancelled" and entry.state != "pending":
                # The interview was cancelled and its command did not arrive here.
                await self.end_local(entry, "cancelled")
            elif entry.state == "pending" and row["state"] in ("ended", "failed"):
                # Closed elsewhere (e.g. an exchange on another member that got no answer
                # from its claim closes the row): nothing holds it, nor its lease.
                if self.registry.release(entry.session_id) is entry:
                    await self.limits.release_session(entry.session_id, entry.user_id)
            elif entry.state == "pending" and row["state"] != "pending":
                if row["relay_instance"] != self.member.id:
                    self.registry.release(entry.session_id)  # claimed elsewhere
            elif row["state"] in ("ended", "failed") and entry.bridge is not None:
                # Closed by the cluster (e.g. this member was taken for dead).
                await self.end_local(entry, str(row["end_reason"] or "relay_lost"))
            elif row["end_reason"] is not None and entry.bridge is not None:
                # Hung up on another member, whose command did not arrive here (the hang-up
                # is written on the live row too: SessionRows.request_hangup).
                await self.end_local(entry, str(row["end_reason"]))
            elif entry.bridge is not None and row["relay_instance"] != self.member.id:
                # Taken over by another member that took this one for dead (a resume
                # found it unreachable): that member holds the interview now.
                await self.end_local(entry, "taken_over")


_OPS = ("revoke_user", "end_session", "drain", "claimed")


def session_summary(instance_id: str, entry: SessionEntry) -> dict[str, Any]:
    return {
        "session_id": entry.session_id,
        "member": instance_id,
        # Masked like the dashboard's: the row in relay_members never holds an address.
        "user": mask_email(entry.email),
        "state": entry.state,
        "age_s": round(entry.elapsed_s(), 1),
    }
