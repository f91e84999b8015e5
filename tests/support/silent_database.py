"""A database address whose server accepts connections and never answers: what a client
meets when PostgreSQL is stopped with SIGSTOP, or its host hangs behind a live TCP stack.
A real listener (asyncio's), not a mock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def silent_database() -> AsyncIterator[str]:
    """A DSN on 127.0.0.1 whose connections are held open, unanswered, until the end."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://relay@127.0.0.1:{port}/relay"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
