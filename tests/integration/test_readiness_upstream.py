"""/readyz reports what the relay has seen of the upstream: red after N failed mints in a
row (with the configured Retry-After), green again after a success, and a stale streak
lets traffic back in (relay/upstream/health.py)."""

from __future__ import annotations

import time
from typing import Any

from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

MINT_FAILS = {"mint": {"status": 500, "code": "server_error", "retry_after_s": 0.01}}
MINT_SERVES = {"mint": {"status": None, "code": None}}


def overrides(**upstream: Any) -> dict[str, dict[str, Any]]:
    return {
        "upstream": {"mint_retries": 0, "ready_failure_threshold": 2, **upstream},
        "limits": {"per_user_requests_per_minute": 100},
    }


async def readyz(relay: RelayHarness) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with relay.client.get("/readyz") as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def operator_stats(relay: RelayHarness) -> dict[str, Any]:
    async with relay.client.get(
        "/api/stats", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        assert resp.status == 200
        stats: dict[str, Any] = await resp.json()
        return stats


async def test_mint_failures_turn_readyz_red_then_a_success_green(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay(overrides=overrides(ready_retry_after_s=7))
    token = await relay.add_user()
    status, body, _ = await readyz(relay)
    assert status == 200, body
    assert body["checks"]["upstream"] == {"ok": True, "state": "unknown", "consecutive_failures": 0}

    await simulator.state.update_faults(MINT_FAILS)
    assert (await relay.create_session(token))[0] == 502
    status, body, _ = await readyz(relay)
    upstream = body["checks"]["upstream"]
    # One failure is a warning: the instance stays in rotation.
    assert status == 200 and upstream["ok"] is True and upstream["state"] == "degraded", body
    assert upstream["consecutive_failures"] == 1
    assert upstream["last"]["stage"] == "mint" and upstream["last"]["outcome"] == "error"
    assert (await operator_stats(relay))["upstream"]["state"] == "degraded"

    assert (await relay.create_session(token))[0] == 502
    status, body, headers = await readyz(relay)
    upstream = body["checks"]["upstream"]
    assert status == 503, body
    assert upstream["ok"] is False and upstream["state"] == "down"
    assert upstream["consecutive_failures"] == 2 and "failing_since" in upstream
    assert headers["Retry-After"] == "7"
    assert body["error"]["code"] == "not_ready" and body["error"]["retryable"] is True
    assert "server_error" not in str(body)  # the upstream's own code is for the operator
    async with relay.client.get(
        "/api/stats", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        stats = await resp.json()
    assert stats["upstream_health"]["last"]["code"] == "server_error", stats
    assert stats["upstream"]["state"] == "down", stats  # the dashboard's own word

    await simulator.state.update_faults(MINT_SERVES)
    assert (await relay.create_session(token))[0] == 201
    status, body, _ = await readyz(relay)
    upstream = body["checks"]["upstream"]
    assert status == 200, body
    assert upstream["state"] == "ok" and upstream["consecutive_failures"] == 0
    assert upstream["last"]["outcome"] == "ok" and "failing_since" not in upstream
    assert (await operator_stats(relay))["upstream"]["state"] == "up"


class Clock:
    """A monotonic clock the test moves (the health window without waiting for it)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


async def test_a_stale_failure_streak_lets_traffic_back_in(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay(overrides=overrides(ready_failure_window_s=60))
    clock = Clock()
    health = relay.services.upstream_health
    assert health is not None
    health.clock = clock
    token = await relay.add_user()
    await simulator.state.update_faults(MINT_FAILS)
    for _ in range(2):
        assert (await relay.create_session(token))[0] == 502
    assert (await readyz(relay))[0] == 503
    clock.now += 59  # still within the window: still red
    assert (await readyz(relay))[0] == 503

    # No traffic reaches an instance out of rotation: once the streak is older than the
    # window, readiness is a warning again so that a request can try.
    clock.now += 2
    status, body, _ = await readyz(relay)
    assert status == 200, body
    upstream = body["checks"]["upstream"]
    assert upstream["state"] == "degraded" and upstream["consecutive_failures"] == 2
    # The trial request fails again: red at once.
    assert (await relay.create_session(token))[0] == 502
    assert (await readyz(relay))[0] == 503
