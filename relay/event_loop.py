"""Which asyncio event loop ``relay serve`` runs on (``server.event_loop``).

uvloop by default: the relay's media path is one asyncio callback per datagram (a
readiness event, one ``recvfrom``, the forwarder, one ``sendto``), and per callback
uvloop's loop, written in C, costs less than the standard library's selector loop (the
saving on the shipped relay: docs/benchmarks.md, "Figures behind the code's choices").
The test suite runs on the same loop (tests/conftest.py). ``asyncio`` keeps the standard
library's loop, e.g. where uvloop is not available.
"""

from __future__ import annotations

import asyncio
from typing import Literal

EventLoopName = Literal["uvloop", "asyncio"]


def loop_policy(name: EventLoopName) -> asyncio.AbstractEventLoopPolicy:
    if name == "uvloop":
        import uvloop

        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


def install(name: EventLoopName) -> None:
    """Use ``name`` for every ``asyncio.run`` of this process from now on."""
    asyncio.set_event_loop_policy(loop_policy(name))
