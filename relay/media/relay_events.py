"""The relay's own events to the page: the ``relay.*`` namespace of the events channel.

They are sent by the relay itself on the browser's data channel and never forwarded
upstream; a page that sends one is refused like any other type off the allow-list
(``events.browser_allowed`` cannot name them: no schema). The protocol (docs/operations.md,
"Continuity"):

* ``relay.session.time_left {seconds}``: when the interview becomes active, then at each
  whole minute left, and at 60, 30 and 10 s left (disconnected time is not charged);
* ``relay.session.wrap_up {seconds}``: the interviewer has been asked to close;
* ``relay.session.ending {reason, message}``: before every hang-up the relay decides, the
  reason being one of ``PAGE_REASONS``' values;
* ``relay.session.reconnected {gap_ms}``: first on a resumed leg's channel;
* ``relay.transcript {items: [{role, text, at_s}]}``: the conversation so far, after a resume;
* ``relay.upstream.reconnecting {attempt}``: the interviewer's connection (the upstream leg)
  dropped and the relay is opening a new one (the reply in progress is cut); sent again
  before each further attempt;
* ``relay.upstream.reconnected {gap_ms}``: the new one is up and goes on from the
  conversation so far (the time without it is not charged).

Pure logic: no I/O, no aiortc.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from relay.media.conversation import TranscriptItem

NAMESPACE = "relay."

# End reasons (the session row's ``end_reason``) → the reason the page is told. Reasons
# missing here are not announced: the candidate's own hang-up, a browser leg that is gone
# (nobody would read it), or a copy of a session another member took over.
PAGE_REASONS: Final[Mapping[str, str]] = {
    "max_duration": "time_up",
    "operator_hangup": "operator",
    "revoked": "revoked",
    "relay_shutdown": "relay_shutdown",
    "relay_lost": "internal_error",
    "upstream_disconnected": "upstream_error",
    "upstream_failed": "upstream_error",
    "upstream_channel_closed": "upstream_error",
    "upstream_silent": "upstream_error",
    "upstream_connect_failed": "upstream_error",
    "upstream_error": "upstream_error",
    "upstream_timeout": "upstream_error",
    "idle_media": "idle",
    "connect_timeout": "connect_timeout",
    "browser_gone": "browser_gone",
    "cancelled": "cancelled",
    "interview_cancelled": "cancelled",
    "event_flood": "event_flood",
    "internal_error": "internal_error",
}
# Not the relay's decision, or nobody on the browser's side to tell.
UNANNOUNCED: Final[frozenset[str]] = frozenset(
    {
        "hangup",
        "browser_disconnected",
        "browser_failed",
        "browser_channel_closed",
        "browser_connect_failed",
        "taken_over",
    }
)

MESSAGES: Final[Mapping[str, str]] = {
    "time_up": "The time for this interview is up. Thank you!",
    "operator": "The interview was ended by the organiser.",
    "revoked": "Access to this interview was withdrawn.",
    "relay_shutdown": "The interview service is restarting; the interview has ended.",
    "upstream_error": "The interviewer could not be reached; the interview has ended.",
    "idle": "No audio was received for a while; the interview has ended.",
    "connect_timeout": "The connection could not be established in time.",
    "browser_gone": "The connection was lost for too long; the interview has ended.",
    "cancelled": "This interview was cancelled.",
    "event_flood": "Too many invalid messages were received; the interview has ended.",
    "internal_error": "Something went wrong on our side; the interview has ended.",
}


def page_reason(end_reason: str) -> str | None:
    """What the page is told for ``end_reason``, or None when nothing is announced."""
    if end_reason in UNANNOUNCED:
        return None
    return PAGE_REASONS.get(end_reason, "internal_error")


def ending(reason: str) -> dict[str, Any]:
    return {
        "type": "relay.session.ending",
        "reason": reason,
        "message": MESSAGES.get(reason, MESSAGES["internal_error"]),
    }


def time_left(seconds: float) -> dict[str, Any]:
    return {"type": "relay.session.time_left", "seconds": whole_seconds(seconds)}


def wrap_up(seconds: float) -> dict[str, Any]:
    return {"type": "relay.session.wrap_up", "seconds": whole_seconds(seconds)}


def reconnected(gap_s: float) -> dict[str, Any]:
    return {"type": "relay.session.reconnected", "gap_ms": max(0, round(gap_s * 1000))}


def upstream_reconnecting(attempt: int) -> dict[str, Any]:
    return {"type": "relay.upstream.reconnecting", "attempt": attempt}


def upstream_reconnected(gap_s: float) -> dict[str, Any]:
    return {"type": "relay.upstream.reconnected", "gap_ms": max(0, round(gap_s * 1000))}


def transcript(items: Iterable[TranscriptItem]) -> dict[str, Any]:
    return {"type": "relay.transcript", "items": [item.to_json() for item in items]}


def whole_seconds(seconds: float) -> int:
    return max(0, round(seconds)) if math.isfinite(seconds) else 0


class TimeLeftSchedule:
    """When ``relay.session.time_left`` is due: whole minutes left, then 30 and 10 s.

    ``due(remaining)`` is True once for each mark ``remaining`` has reached (several marks
    passed at once count once: the page gets the current figure, not a backlog)."""

    def __init__(self, total_s: float) -> None:
        marks = {*range(60, max(60, math.ceil(total_s)), 60), 30, 10}
        self._marks = sorted((m for m in marks if m < total_s), reverse=True)

    def next_mark(self) -> int | None:
        """The next mark (seconds left) to announce at, if any."""
        return self._marks[0] if self._marks else None

    def due(self, remaining_s: float) -> bool:
        fired = False
        # A tick a few milliseconds early still counts (remaining is read between ticks).
        while self._marks and remaining_s <= self._marks[0] + 0.05:
            self._marks.pop(0)
            fired = True
        return fired
