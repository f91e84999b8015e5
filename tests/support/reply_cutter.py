"""A TCP proxy on loopback that can lose a reply after the server acted on the request.

Between the relay and PostgreSQL it forwards bytes both ways untouched until armed with a
marker (a piece of statement text such as ``b"INSERT INTO interview_sessions"`` or
``b"COMMIT"``). On the first connection whose client sends the marker, the server's
next CommandComplete (or PortalSuspended: the end of a statement asked for one row, as
asyncpg's ``fetchrow`` does) is swallowed together with everything up to the ReadyForQuery
that follows it (by then the statement's transaction is over: committed), and both sides of
that connection are cut. The client sees its connection die without an answer, exactly
as when the network fails between the server's commit and the client: it cannot know
that its statement took effect. ``arm(marker, then=b"COMMIT")`` waits, on the connection
that sent the marker, for the next statement carrying ``then`` and loses *its* reply
instead (the COMMIT of the transaction the marked statement ran in). With
``outage=True`` the cut is the start of an outage: every connection through the proxy is
cut with it and new ones are refused until ``restore()``, so the client's retries find
the database unreachable (a network partition right after the commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

_COMMAND_COMPLETE = ord("C")
# What ends a statement run with a row limit instead (asyncpg's fetchrow and fetchval ask
# for one row): the rows are sent, then this, then ReadyForQuery after the Sync.
_PORTAL_SUSPENDED = ord("s")
_READY_FOR_QUERY = ord("Z")


class _Connection:
    def __init__(self) -> None:
        # The client sent the marker: watch the server's replies for the command's end.
        self.triggered = False
        # The marker was seen and ``then`` is awaited on this connection.
        self.awaiting: bytes | None = None
        self.swallowing = False
        self.pending = bytearray()  # a partial backend message carried between reads


class ReplyCutter:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._marker: bytes | None = None
        self._then: bytes | None = None
        self._outage = False
        self._down = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.cuts = 0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def dsn(self, template: str) -> str:
        """``template`` (a postgresql:// URL of the real server) pointed at this proxy."""
        host, port = self._target
        return template.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    def arm(self, marker: bytes, *, then: bytes | None = None, outage: bool = False) -> None:
        """Lose the reply to the next statement sent with ``marker`` in it (once), or with
        ``then``, to the next statement carrying ``then`` on the same connection; with
        ``outage``, cut every connection then and refuse new ones until ``restore``."""
        self._marker = marker
        self._then = then
        self._outage = outage

    def restore(self) -> None:
        """End the outage: new connections are forwarded again."""
        self._down = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._down:
            client_w.transport.abort()  # as if the server were unreachable
            return
        # Owned by the proxy (not by asyncio's callback), so close() can stop it quietly.
        task = asyncio.create_task(self._serve(client_r, client_w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
            conn = _Connection()
            up = asyncio.create_task(self._requests(client_r, server_w, conn))
            try:
                await self._replies(server_r, client_w, conn)
            finally:
                up.cancel()
                await asyncio.gather(up, return_exceptions=True)
        except OSError:
            pass
        finally:
            client_w.transport.abort()
            if server_w is not None:
                server_w.transport.abort()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if conn.awaiting is not None and conn.awaiting in data:
                    conn.awaiting = None
                    conn.triggered = True
                elif self._marker is not None and self._marker in data:
                    self._marker = None
                    if self._then is None:
                        conn.triggered = True
                    else:
                        conn.awaiting = self._then
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def _replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not conn.triggered:
                    writer.write(data)
                    await writer.drain()
                    continue
                forward, done = self._scan(conn, data)
                if forward:
                    writer.write(forward)
                    await writer.drain()
                if done:
                    self.cuts += 1
                    if self._outage:
                        self._begin_outage()
                    return  # the caller aborts both connections

    def _begin_outage(self) -> None:
        self._down = True
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()  # its _serve aborts both of its connections

    @staticmethod
    def _scan(conn: _Connection, data: bytes) -> tuple[bytes, bool]:
        """Split backend messages: forward those before the CommandComplete; True once
        the ReadyForQuery after it arrived."""
        conn.pending += data
        forward = bytearray()
        while len(conn.pending) >= 5:
            kind = conn.pending[0]
            (length,) = struct.unpack("!I", conn.pending[1:5])
            if len(conn.pending) < 1 + length:
                break
            message = bytes(conn.pending[: 1 + length])
            del conn.pending[: 1 + length]
            if kind in (_COMMAND_COMPLETE, _PORTAL_SUSPENDED):
                conn.swallowing = True
            if conn.swallowing:
                if kind == _READY_FOR_QUERY:
                    return bytes(forward), True
            else:
                forward += message
        return bytes(forward), False
