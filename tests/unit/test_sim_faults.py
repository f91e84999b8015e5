"""Simulator fault knobs and the observable state (forced-status counts, updates, waiting)."""

from __future__ import annotations

import asyncio

import pytest

from relay.upstream.simulator.faults import EndpointFault, FaultError, Faults
from relay.upstream.simulator.state import CallRecord, SimulatorState


def test_forced_status_applies_the_given_number_of_times() -> None:
    fault = EndpointFault(status=503, code="overloaded", times=2)
    assert fault.take_forced() == (503, "overloaded")
    assert fault.take_forced() == (503, "overloaded")
    assert fault.take_forced() is None
    assert (fault.status, fault.code, fault.times) == (None, None, None)


def test_forced_status_without_a_count_applies_every_time() -> None:
    fault = EndpointFault(status=500)
    assert [fault.take_forced() for _ in range(3)] == [(500, None)] * 3


def test_zero_times_means_no_forced_status() -> None:
    assert EndpointFault(status=429, times=0).take_forced() is None


def test_update_merges_endpoint_settings_and_top_level_knobs() -> None:
    faults = Faults()
    faults.update({"mint": {"status": 429, "times": 1}, "beta_disabled": True})
    faults.update({"mint": {"latency_s": 0.5}, "answer_codec": "pcmu"})
    assert (faults.mint.status, faults.mint.times, faults.mint.latency_s) == (429, 1, 0.5)
    assert faults.beta_disabled and faults.answer_codec == "pcmu"
    faults.update({"accepted_models": ["only-this"]})
    assert faults.accepted_models == frozenset({"only-this"})
    json = faults.to_json()
    assert json["mint"]["status"] == 429 and json["accepted_models"] == ["only-this"]


@pytest.mark.parametrize(
    "changes",
    [
        {"mint": {"status": 200}},
        {"mint": {"status": "503"}},
        {"calls": {"latency_s": -1}},
        {"hangup": {"times": -2}},
        {"hangup": {"hang": "yes"}},
        {"mint": {"colour": "red"}},
        {"answer_codec": "g722"},
        {"accepted_models": "gpt-realtime"},
        {"mystery": True},
    ],
)
def test_invalid_updates_are_refused_and_change_nothing(changes: dict[str, object]) -> None:
    faults = Faults()
    faults.update({"calls": {"status": 500}})
    before = faults.to_json()
    with pytest.raises(FaultError):
        faults.update({"beta_disabled": True, **changes})
    assert faults.to_json() == before


def test_copy_is_independent() -> None:
    original = Faults()
    copy = original.copy()
    copy.mint.status = 500
    assert original.mint.status is None


async def test_wait_for_wakes_on_notify_and_times_out() -> None:
    state = SimulatorState(Faults())

    async def later() -> None:
        await asyncio.sleep(0)
        state.count_request("mint")

    task = asyncio.ensure_future(later())
    await state.wait_for(lambda: state.requests["mint"] == 1, timeout=2)
    await task
    with pytest.raises(TimeoutError):
        await state.wait_for(lambda: state.requests["mint"] == 2, timeout=0.05)


async def test_update_faults_calls_listeners() -> None:
    state = SimulatorState(Faults())
    seen: list[bool] = []

    async def listener(faults: Faults) -> None:
        seen.append(faults.beta_disabled)

    state.on_faults_changed(listener)
    await state.update_faults({"beta_disabled": True})
    assert seen == [True]


def test_closed_calls_are_pruned_beyond_the_limit() -> None:
    state = SimulatorState(Faults(), max_closed_calls=2)
    for i in range(4):
        record = CallRecord(call_id=f"rtc_{i}", dialect="ga", model="gpt-realtime")
        record.state = "closed"
        state.add_call(record)
    live = CallRecord(call_id="rtc_live", dialect="ga", model="gpt-realtime")
    state.add_call(live)
    assert list(state.calls) == ["rtc_2", "rtc_3", "rtc_live"]
    assert state.last_call is live
