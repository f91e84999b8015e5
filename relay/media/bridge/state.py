"""The bridge's states and the transitions allowed between them (docs/media.md, "Lifecycle").

``Bridge`` (``core``) is the only writer of its state, through one method per transition
(``start``, ``_activate``, ``_lose_browser``, ``resume``, ``_resumed``, ``_lose_upstream``,
``_upstream_healed``, ``begin_close``,
the end of teardown), each of which goes through
``Bridge._set_state`` and so through ``check_transition`` here: a transition the table does
not allow is a bug, and raises ``InvalidTransition``, in production as in the tests (the
reasons are in docs/media.md).

::

    new ──start──▶ negotiating ──answered──▶ connecting ──both legs──▶ active
     │                  │                        │                     │  ▲
     │                  │                        │         browser lost│  │new browser leg
     │                  │                        │                     ▼  │ connected
     │                  │                        │              browser_lost ⇄ resuming
     │                  │                        │          (or) upstream_lost ──healed──▶ active
     │                  │                        │                     │         │
     └──────────────────┴────── begin_close ─────┴─────────────────────┴─────────┘
                                     ▼
                                  closing ──teardown done──▶ closed

``browser_lost``: the browser's leg dropped and ``session.reconnect_grace_s`` > 0; the
upstream leg is kept, nothing is forwarded, the interview's clock is paused. ``resuming``:
a resume's offer is being answered on a new browser peer; it becomes ``active`` once that
peer is connected, or falls back to ``browser_lost`` if it fails. ``upstream_lost``: the
upstream leg dropped and ``session.upstream_reconnect_attempts`` > 0; the browser's leg is
kept, nothing is forwarded, the clock is paused while a new upstream leg is opened, seeded
and swapped in (``active`` again), or, when every attempt failed, the session closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args

BridgeState = Literal[
    "new",
    "negotiating",
    "connecting",
    "active",
    "browser_lost",
    "resuming",
    "upstream_lost",
    "closing",
    "closed",
]

STATES: Final[tuple[BridgeState, ...]] = get_args(BridgeState)

# Every state's allowed successors. ``closing`` is reachable from every state before it
# (a hang-up, a failure or a shut-down can come at any point), and only teardown leaves it.
TRANSITIONS: Final[Mapping[BridgeState, frozenset[BridgeState]]] = MappingProxyType(
    {
        "new": frozenset({"negotiating", "closing"}),
        "negotiating": frozenset({"connecting", "closing"}),
        "connecting": frozenset({"active", "closing"}),
        "active": frozenset({"browser_lost", "upstream_lost", "closing"}),
        "browser_lost": frozenset({"resuming", "closing"}),
        "resuming": frozenset({"active", "browser_lost", "closing"}),
        "upstream_lost": frozenset({"active", "closing"}),
        "closing": frozenset({"closed"}),
        "closed": frozenset(),
    }
)


class InvalidTransition(RuntimeError):
    """A bridge was asked to move between two states the table does not connect (a bug)."""

    def __init__(self, current: BridgeState, new: BridgeState) -> None:
        super().__init__(f"bridge state {current} -> {new} is not an allowed transition")
        self.current = current
        self.new = new


def check_transition(current: BridgeState, new: BridgeState) -> None:
    """Raise ``InvalidTransition`` unless ``current → new`` is in ``TRANSITIONS``."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(current, new)
