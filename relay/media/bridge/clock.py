"""The interview's clock: the seconds charged, with the time the browser was away left out.

It starts when both legs are connected. ``pause`` (the browser's leg was lost) and
``resume`` (a resumed leg is connected) bracket time that is not charged: it counts
neither towards the interview's limit nor in the duration debited. A session taken over
from a dead member starts with the seconds charged there (``charged_before_s``).
"""

from __future__ import annotations


class InterviewClock:
    def __init__(self, charged_before_s: float = 0.0) -> None:
        self.charged_before_s = max(0.0, charged_before_s)
        self.started_at: float | None = None
        self._paused_total = 0.0
        self._paused_at: float | None = None
        self._stopped_at: float | None = None
        # When the last pause ended (a resumed leg is up).
        self.resumed_at: float | None = None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    @property
    def paused_at(self) -> float | None:
        return self._paused_at

    def start(self, at: float) -> None:
        self.started_at = at

    def pause(self, at: float) -> None:
        if self._paused_at is None and self.started_at is not None:
            self._paused_at = at

    def resume(self, at: float) -> float:
        """End a pause; return its length (0 when not paused)."""
        paused_at, self._paused_at = self._paused_at, None
        if paused_at is None:
            return 0.0
        gap = max(0.0, at - paused_at)
        self._paused_total += gap
        self.resumed_at = at
        return gap

    def stop(self, at: float) -> None:
        """The interview is over: the clock reads the same from now on."""
        if self._stopped_at is None:
            self._stopped_at = at

    def used(self, now: float) -> float:
        """Seconds charged by ``now`` (those of an earlier part included)."""
        started = self.started_at
        if started is None:
            return self.charged_before_s
        end = now if self._stopped_at is None else min(now, self._stopped_at)
        paused = self._paused_total
        if self._paused_at is not None:
            paused += max(0.0, end - self._paused_at)
        return self.charged_before_s + max(0.0, end - started - paused)
