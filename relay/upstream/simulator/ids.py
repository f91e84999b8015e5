"""Identifiers in OpenAI's shapes (``rtc_…``, ``sess_…``, ``event_…``, ``item_…``)."""

from __future__ import annotations

import itertools
import secrets
from typing import Protocol


class IdFactory(Protocol):
    def __call__(self, prefix: str) -> str: ...


def random_id(prefix: str) -> str:
    """``<prefix>_<32 hex>``: unguessable (call ids double as handles for hang-up)."""
    return f"{prefix}_{secrets.token_hex(16)}"


class CountingIds:
    """Deterministic ids for tests of the pure logic: ``item_0001``, ``event_0002``, …"""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter):04d}"
