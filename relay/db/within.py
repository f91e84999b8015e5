"""A caller's statements at the end of a domain's transaction (``Within``).

Some writes must commit with a row the domain knows nothing of: the HTTP API keeps the
answer to an ``Idempotency-Key`` (relay.web.idempotency) in the transaction of the work it
answers, so that a commit which landed (its reply lost, the database then unreachable)
always has its answer, and a retry replays it instead of doing the work again. A domain
write that takes a ``Within`` calls it last inside its transaction, on the same connection,
with what the write will return; it may raise to roll the work back.

On a retry whose earlier attempt committed, a write that finds its own earlier result
(ids chosen before the first attempt, ``landed_once``) returns it without calling ``Within``
again: what it wrote committed with that attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import asyncpg

T = TypeVar("T")

Within: TypeAlias = Callable[[asyncpg.Connection, T], Awaitable[None]]
