"""Commands that reach every member: PostgreSQL LISTEN/NOTIFY on one channel.

PostgreSQL is the one store every member and the command line always have (Redis is
optional), so commands travel there: ``relay users revoke`` notifies in the same
transaction that deactivates the user, and a NOTIFY reaches every listening member at
once (well within the 2 s budget). A member whose listening connection dropped
reconnects with backoff; what it missed meanwhile is caught by the heartbeat's
reconciliation against the rows (relay.cluster.runtime), so a lost notification delays
a command by at most one heartbeat instead of losing it. Whoever must catch up in
another way after such a gap passes ``on_connected``: it runs at every (re)connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from relay.db import Store
from relay.observability.metrics import MetricsRegistry
from relay.tasks import TaskGroup, idle

log = logging.getLogger("relay.cluster")

CHANNEL = "relay_commands"
# How the listening connection shows in pg_stat_activity.
APPLICATION_NAME = "relay-cluster-commands"
Handler = Callable[[dict[str, Any]], Awaitable[None]]


async def notify(conn: asyncpg.Connection, message: dict[str, Any]) -> None:
    """NOTIFY on ``conn`` (inside the caller's transaction, if any: sent at commit)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps(message))


async def publish(store: Store, message: dict[str, Any]) -> None:
    async def op(conn: asyncpg.Connection) -> None:
        await notify(conn, message)

    await store.run("notify", op)


class CommandListener:
    """One dedicated connection LISTENing on the channel; each message runs ``handler``
    in a task of its own (a slow command does not hold up the next), and ``close`` stops
    the listening and every command still running."""

    def __init__(
        self,
        dsn: str,
        handler: Handler,
        *,
        check_interval_s: float,
        metrics: MetricsRegistry | None = None,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._handler = handler
        self._on_connected = on_connected
        self._check_interval_s = check_interval_s
        self._tasks = TaskGroup("cluster-commands", log=log, metrics=metrics)
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._tasks.spawn(self._run(), name="cluster-commands")

    async def close(self) -> None:
        await self._tasks.close()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignoring a malformed cluster command")
            return
        if not isinstance(message, dict):
            return
        # asyncpg calls this after close() may have started: a late message is dropped
        # (the heartbeat's reconciliation catches up with whatever it said).
        with contextlib.suppress(RuntimeError):
            self._tasks.spawn(self._handle(message), name="cluster-command")

    async def _handle(self, message: dict[str, Any]) -> None:
        try:
            await self._handler(message)
        except Exception:  # one bad command must not stop the listener
            log.exception("cluster command %s failed", message.get("op"))

    async def _run(self) -> None:
        delay = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME}
                )
                await conn.add_listener(CHANNEL, self._on_notify)
                self.connected.set()
                if self._on_connected is not None:
                    # What was sent while nobody listened here is caught up with now.
                    self._on_connected()
                delay = 0.2
                while True:
                    await idle(self._check_interval_s)
                    # A half-dead connection delivers nothing and says nothing: probe it.
                    await conn.fetchval("SELECT 1", timeout=self._check_interval_s + 1)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.connected.clear()
                log.warning(
                    "cluster command channel lost (%s); reconnecting in %.1fs",
                    type(exc).__name__,
                    delay,
                )
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2):
                            await conn.close()
            await idle(delay)
            delay = min(delay * 2, 5.0)
