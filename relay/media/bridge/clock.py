"""The interview's clock: the seconds charged, with the time the browser was away left out.

It starts when both legs are connected. ``pause`` (the browser's leg was lost) and
``resume`` (a resumed leg is connected) bracket time that is not charged: it counts
neither towards the interview's limit nor in the duration debited. A session taken over
from a dead member starts with the seconds charged there (``charged_before_s``).

A leg is often found lost well after the browser went (a network that vanished is noticed
when ICE consent fails, about 30 s later; a page that resumes before that replaces a leg
that looked alive): ``pause(at, away_since=…)`` leaves that stretch uncharged too, while
``paused_at`` (from which the reconnect grace runs) stays the moment the loss was noticed.
"""

from __future__ import annotations


class InterviewClock:
    def __init__(self, charged_before_s: float = 0.0) -> None:
        self.charged_before_s = max(0.0, charged_before_s)
        self.started_at: float | None = None
        self._paused_total = 0.0
        self._paused_at: float | None = None
        # Since when the current pause is not charged (``away_since``, else ``_paused_at``).
        self._uncharged_from: float | None = None
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

    def pause(self, at: float, *, away_since: float | None = None) -> None:
        """The browser's leg was found lost ``at``; ``away_since``: when it really went
        (uncharged from then, never before the clock started or last resumed)."""
        if self._paused_at is None and self.started_at is not None:
            self._paused_at = at
            since = at if away_since is None else min(at, away_since)
            self._uncharged_from = max(since, self.started_at, self.resumed_at or since)

    def resume(self, at: float) -> float:
        """End a pause; return how long the browser was away, uncharged (0 when not
        paused)."""
        paused_at, self._paused_at = self._paused_at, None
        if paused_at is None:
            return 0.0
        since = paused_at if self._uncharged_from is None else self._uncharged_from
        gap = max(0.0, at - since)
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
            since = self._paused_at if self._uncharged_from is None else self._uncharged_from
            paused += max(0.0, end - since)
        return self.charged_before_s + max(0.0, end - started - paused)
