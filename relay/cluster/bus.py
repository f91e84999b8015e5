"""Commands that reach every member: PostgreSQL LISTEN/NOTIFY on one channel.

PostgreSQL is the one store every member and the command line always have (Redis is
optional), so commands travel there: ``relay users revoke`` notifies in the same
transaction that deactivates the user, and a NOTIFY reaches every listening member at
once (well within the 2 s budget). A member whose listening connection dropped
reconnects with backoff; what it missed meanwhile is caught by the heartbeat's
reconciliation against the rows (relay.cluster.runtime), so a lost notification delays
a command by at most one heartbeat instead of losing it.
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
from relay.tasks import cancel_and_wait, spawn

log = logging.getLogger("relay.cluster")

CHANNEL = "relay_commands"
Handler = Callable[[dict[str, Any]], Awaitable[None]]


async def notify(conn: asyncpg.Connection, message: dict[str, Any]) -> None:
    """NOTIFY on ``conn`` (inside the caller's transaction, if any: sent at commit)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps(message))


async def publish(store: Store, message: dict[str, Any]) -> None:
    async def op(conn: asyncpg.Connection) -> None:
        await notify(conn, message)

    await store.run("notify", op)


class CommandListener:
    """One dedicated connection LISTENing on the channel; each message runs ``handler``."""

    def __init__(self, dsn: str, handler: Handler, *, check_interval_s: float) -> None:
        self._dsn = dsn
        self._handler = handler
        self._check_interval_s = check_interval_s
        self._task: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = spawn(self._run(), name="cluster-commands", log=log)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        for task in list(self._handling):
            task.cancel()
        await asyncio.gather(*self._handling, return_exceptions=True)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignoring a malformed cluster command")
            return
        if not isinstance(message, dict):
            return
        task = asyncio.create_task(self._handle(message))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

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
                conn = await asyncpg.connect(self._dsn, timeout=5)
                await conn.add_listener(CHANNEL, self._on_notify)
                self.connected.set()
                delay = 0.2
                while True:
                    await asyncio.sleep(self._check_interval_s)
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
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
