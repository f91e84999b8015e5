"""Cursor pagination for the API's lists: ``?limit=&cursor=`` → ``next_cursor``.

Lists are newest first, ordered by (created_at, id) descending; a cursor is the position
of the last item of a page, opaque to clients (base64url of JSON), so a page never skips
or repeats an item when rows are added meanwhile (an offset would). ``next_cursor`` is
null on the last page. A query fetches one row more than it returns to know whether
another page follows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from relay.errors import ApiError
from relay.fields import storable_text

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

T = TypeVar("T")


class PageQuery(BaseModel):
    """``limit`` and ``cursor``; lists add their filters to it. A parameter the list does
    not take is refused (400 ``invalid_parameter``): a misspelt filter (``?statuss=``) would
    otherwise answer the whole unfiltered list as if it had been applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT
    cursor: Annotated[
        str | None,
        Field(
            max_length=512,
            description="The previous page's next_cursor (omit for the first page).",
        ),
    ] = None


def encode_cursor(created_at: datetime, item_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), item_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The position a cursor names; 400 ``invalid_cursor`` for anything not made here."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, item_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(item_id, str):
            raise ValueError("not a cursor")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("not a cursor")
        return at, storable_text(item_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise ApiError(
            400, "invalid_cursor", "'cursor' is not a cursor this list returned."
        ) from None


def page_of(
    rows: Sequence[T], limit: int, position: Callable[[T], tuple[datetime, str]]
) -> tuple[list[T], str | None]:
    """The page (at most ``limit`` rows of the ``limit + 1`` fetched) and its next cursor."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return items, None
    return items, encode_cursor(*position(items[-1]))


class Page(BaseModel):
    """The envelope every list answers with (lists subclass it with typed ``items``)."""

    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )
