"""The upstream's health as the relay has seen it, for /readyz and the operator.

Every mint and SDP exchange (the calls an interview cannot start without) records its
outcome here; hang-ups are best effort and do not count. ``/readyz`` turns red only when
``upstream.ready_failure_threshold`` calls in a row have failed and the latest failure is
younger than ``upstream.ready_failure_window_s``; fewer failures in a row are a warning
(``degraded``) that keeps the instance in rotation. A streak older than the window is
reported as ``degraded`` again: nothing reaches an instance that a load balancer took out
of rotation, so without new traffic a red state could never clear. The next request is the
trial (like a breaker's half-open state): a success clears the streak, a failure makes
readiness red again at once.

``/readyz`` is public: it reports the stage and the kind of failure (``timeout`` or
``error``), never the upstream's own error code or message, which can describe the
operator's account.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from relay.config import UpstreamConfig
from relay.fields import iso_utc
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import (
    MintedSession,
    SdpAnswer,
    SessionOverrides,
    Stage,
    UpstreamClient,
    UpstreamFailure,
    UpstreamTimeout,
)

HealthState = Literal["unknown", "ok", "degraded", "down"]
Outcome = Literal["ok", "timeout", "error"]


@dataclass(frozen=True)
class _Last:
    stage: Stage
    outcome: Outcome
    # The upstream's error code (operator information: /api/stats only).
    code: str | None
    at: datetime
    monotonic: float


class UpstreamHealth:
    def __init__(
        self,
        config: UpstreamConfig,
        metrics: MetricsRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = config.ready_failure_threshold
        self._window_s = config.ready_failure_window_s
        self.retry_after_s = config.ready_retry_after_s
        # Public so that a test can drive the window without waiting for it.
        self.clock = clock
        self._last: _Last | None = None
        self._streak = 0
        self._streak_since: datetime | None = None
        self._streak_gauge = metrics.gauge(
            "relay_upstream_consecutive_failures",
            "Mints and SDP exchanges failed in a row (0 after a success)",
        )

    def record(self, stage: Stage, failure: UpstreamFailure | None) -> None:
        now = datetime.now(UTC)
        outcome: Outcome = (
            "ok"
            if failure is None
            else "timeout"
            if isinstance(failure, UpstreamTimeout)
            else "error"
        )
        code = getattr(failure, "code", None) if failure is not None else None
        self._last = _Last(stage, outcome, code, now, self.clock())
        if failure is None:
            self._streak = 0
            self._streak_since = None
        else:
            if self._streak == 0:
                self._streak_since = now
            self._streak += 1
        self._streak_gauge.set(self._streak)

    @property
    def state(self) -> HealthState:
        last = self._last
        if last is None:
            return "unknown"
        if self._streak == 0:
            return "ok"
        recent = self.clock() - last.monotonic < self._window_s
        return "down" if self._streak >= self._threshold and recent else "degraded"

    def report(self, *, operator: bool = False) -> dict[str, Any]:
        """The /readyz check: ``ok`` is False only in state ``down``. ``operator`` adds
        the upstream's last error code (for /api/stats)."""
        state = self.state
        body: dict[str, Any] = {"ok": state != "down", "state": state}
        last = self._last
        if last is not None:
            body["last"] = {
                "stage": last.stage,
                "outcome": last.outcome,
                "at": iso_utc(last.at),
            }
            if operator:
                body["last"]["code"] = last.code
        body["consecutive_failures"] = self._streak
        if self._streak_since is not None:
            body["failing_since"] = iso_utc(self._streak_since)
        return body


class MonitoredUpstream:
    """An ``UpstreamClient`` that records each mint's and exchange's outcome."""

    def __init__(self, inner: UpstreamClient, health: UpstreamHealth) -> None:
        self._inner = inner
        self.health = health

    def __repr__(self) -> str:
        return repr(self._inner)

    @property
    def dialect(self) -> str:
        return self._inner.dialect

    @property
    def model(self) -> str:
        return self._inner.model

    async def mint(
        self, *, request_id: str, overrides: SessionOverrides | None = None
    ) -> MintedSession:
        try:
            minted = await self._inner.mint(request_id=request_id, overrides=overrides)
        except UpstreamFailure as exc:
            self.health.record("mint", exc)
            raise
        self.health.record("mint", None)
        return minted

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        try:
            answer = await self._inner.exchange_sdp(minted, offer_sdp, request_id=request_id)
        except UpstreamFailure as exc:
            self.health.record("sdp", exc)
            raise
        self.health.record("sdp", None)
        return answer

    async def hangup(self, call_id: str) -> None:
        await self._inner.hangup(call_id)

    async def close(self) -> None:
        await self._inner.close()
