"""The readiness rule for the upstream (relay/upstream/health.py), on a controlled clock."""

from __future__ import annotations

import pytest

from relay.config import Settings
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import (
    MintedSession,
    SdpAnswer,
    SessionOverrides,
    UpstreamError,
    UpstreamTimeout,
)
from relay.upstream.health import MonitoredUpstream, UpstreamHealth

MINTED = MintedSession(secret="ek_test", expires_at=0, model="gpt-realtime")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedUpstream:
    """Answers from a script: an exception to raise or None to succeed."""

    dialect = "ga"
    model = "gpt-realtime"

    def __init__(self) -> None:
        self.next_failure: Exception | None = None

    async def mint(
        self, *, request_id: str, overrides: SessionOverrides | None = None
    ) -> MintedSession:
        if self.next_failure is not None:
            raise self.next_failure
        return MINTED

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        if self.next_failure is not None:
            raise self.next_failure
        return SdpAnswer(sdp="v=0\r\n")

    async def hangup(self, call_id: str) -> None:
        raise AssertionError("hang-ups are not part of readiness")

    async def close(self) -> None:
        return None


def monitored(clock: Clock) -> tuple[MonitoredUpstream, ScriptedUpstream]:
    config = Settings().upstream.model_copy(
        update={"ready_failure_threshold": 2, "ready_failure_window_s": 30.0}
    )
    inner = ScriptedUpstream()
    return MonitoredUpstream(inner, UpstreamHealth(config, MetricsRegistry(), clock)), inner


def state(upstream: MonitoredUpstream) -> str:
    # A call, so that mypy does not narrow the property between two readings.
    return upstream.health.state


async def test_failures_in_a_row_within_the_window_make_it_down() -> None:
    clock = Clock()
    upstream, inner = monitored(clock)
    assert state(upstream) == "unknown"
    inner.next_failure = UpstreamError("mint", "boom", status=503, code="server_error")
    with pytest.raises(UpstreamError):
        await upstream.mint(request_id="r1")
    assert state(upstream) == "degraded"
    inner.next_failure = UpstreamTimeout("sdp", "slow")
    with pytest.raises(UpstreamTimeout):
        await upstream.exchange_sdp(MINTED, "offer", request_id="r2")
    report = upstream.health.report()
    assert state(upstream) == "down" and report["ok"] is False
    assert report["last"]["stage"] == "sdp" and report["last"]["outcome"] == "timeout"
    assert report["consecutive_failures"] == 2
    assert "code" not in report["last"]  # public report: no upstream codes
    assert upstream.health.report(operator=True)["last"]["code"] is None  # a timeout has none

    clock.now += 29.9
    assert state(upstream) == "down"
    clock.now += 0.2  # the streak is stale: a trial request may come in
    assert state(upstream) == "degraded"
    inner.next_failure = None
    await upstream.exchange_sdp(MINTED, "offer", request_id="r3")
    assert state(upstream) == "ok"
    assert upstream.health.report()["consecutive_failures"] == 0
