"""A loopback proxy to PostgreSQL on which every cancel request is lost.

asyncpg ends a statement that outlives its timeout by sending a cancel request on a
connection of its own. PostgreSQL drops one that arrives before the statement has started
(a loaded server), and the backend then goes on with the statement after the client gave
up. This proxy makes that deterministic: it carries the first connection and closes every
later one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


@contextlib.asynccontextmanager
async def cancel_requests_lost(database_url: str) -> AsyncIterator[str]:
    """A loopback proxy to PostgreSQL that carries the first connection and closes every
    later one at once: asyncpg's cancel request (a connection of its own) never arrives, as
    when PostgreSQL drops one that comes before the statement has started. Yields the
    proxy's URL."""
    target = urlsplit(database_url)
    pipes: set[asyncio.Task[None]] = set()
    carried = False

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal carried
        if carried:
            writer.close()
            return
        carried = True
        up_r, up_w = await asyncio.open_connection(target.hostname, target.port)
        for task in (pipe(reader, up_w), pipe(up_r, writer)):
            pipes.add(asyncio.create_task(task))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield database_url.replace(f":{target.port}/", f":{port}/", 1)
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
