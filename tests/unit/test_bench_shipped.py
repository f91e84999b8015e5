"""Pure logic of the shipped-relay benchmark: ratios, summaries, bounds."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import pytest

from bench.relay_process import media_totals, wakeups_in_window
from bench.session_setup import first_audio_timeline
from bench.shipped import parse_args
from bench.shipped_report import cpu_ratio, first_audio_table, summary, table


def _row(mode: str, n: int, **values: Any) -> dict[str, Any]:
    base = {
        "mode": mode,
        "sessions": n,
        "frames_missing": 0,
        "seq_missing": 0,
        "packets_not_identical": 0,
        "latency_p50_ms": 0.5,
        "latency_p99_ms": 2.0,
        "endpoint_cpu": 0.4,
    }
    base.update(values)
    return base


def test_cpu_ratio_is_relay_over_the_direct_pair() -> None:
    assert cpu_ratio({"relay_cpu": 0.2}, {"endpoint_cpu": 0.5}) == 0.4
    assert cpu_ratio({"relay_cpu": 0.2}, {}) is None
    assert cpu_ratio({}, {"endpoint_cpu": 0.5}) is None


def test_summary_pairs_runs_and_flags_a_saturated_generator() -> None:
    rows = [
        _row("direct", 40, endpoint_cpu=0.5, latency_p50_ms=0.4),
        _row("fast", 40, relay_cpu=0.2, relay_cpu_ms_per_session_s=5.0, latency_p99_ms=1.4),
        _row("aiortc", 40, relay_cpu=0.5, relay_cpu_ms_per_session_s=12.5, frames_missing=3),
        _row("direct", 40, endpoint_cpu=0.6, latency_p50_ms=0.6, latency_p99_ms=1.0),
        _row("fast", 40, relay_cpu=0.3, relay_cpu_ms_per_session_s=7.5, endpoint_cpu=0.9),
        _row("fast", 80, error="boom"),
    ]
    out = {s["mode"]: s for s in summary(rows)}
    fast, slow = out["fast"], out["aiortc"]
    assert fast["cpu_ratio_vs_direct"] == [0.4, 0.5]
    assert fast["cpu_ratio_vs_generator"] == [0.5, 0.333]
    assert fast["added_p99_ms"] == [0.8, 1.4]  # p99 minus the direct runs' median p50 (0.6)
    # p99 minus the quietest direct run's p99 (2.0 and 1.0: 1.0)
    assert fast["added_p99_over_direct_p99_ms"] == [0.4, 1.0]
    assert fast["generator_saturated"] is True  # one run's generator was above 0.85
    assert slow["cpu_ratio_vs_direct"] == [1.0] and slow["lost"] == [3]
    assert slow["generator_saturated"] is False
    assert all(s["sessions"] == 40 for s in summary(rows))  # the failed point is left out
    text = table(rows)
    assert "| 40 | fast | [0.4, 0.5] |" in text and "boom" in text


def test_media_totals_sum_the_relays_counters() -> None:
    direction = {"fast_path": True, "forwarded": 10, "dropped": {"queue_full": 1}}
    sessions = [{"media": {"browser_to_upstream": direction, "upstream_to_browser": direction}}]
    totals = media_totals(sessions * 2)
    assert totals == {
        "sessions": 2,
        "fast_path_directions": 4,
        "forwarded": 40,
        "dropped_queue_full": 4,
    }


def test_arguments_are_bounded() -> None:
    args = parse_args(["--sessions", "10,40", "--duration", "20"])
    assert args.sessions == [10, 40]
    assert args.modes == ["direct", "fast", "inline", "fast2", "pyfast", "watch", "aiortc", "rec"]
    assert args.generator == "aiortc"
    # The compiled generator carries more sessions (bench/compiled_endpoints.py).
    assert parse_args(["--sessions", "600", "--generator", "compiled"]).sessions == [600]
    assert parse_args(["--mode-max", "direct=30"]).mode_max == {"direct": 30}
    for bad in (
        ["--sessions", "500"],
        ["--sessions", "601", "--generator", "compiled"],
        ["--generator", "gstreamer"],
        ["--mode-max", "decode=30"],
        ["--mode-max", "direct"],
        ["--duration", "600"],
        ["--modes", "decode"],
        ["--relay-env", "PATH=/tmp"],
        ["--relay-env", "RELAY__SERVER__GC_FREEZE"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_relay_env_sets_the_mode_and_the_extra_settings(tmp_path: Any) -> None:
    from bench import relay_process

    parse_args(["--relay-env", "RELAY__SERVER__GC_FREEZE=false"])
    try:
        env = relay_process.relay_env(tmp_path, "rec")
        assert env["RELAY__MEDIA__FAST_PATH"] == "true"
        assert env["RELAY__RECORDING__ENABLED"] == "true"
        assert env["RELAY__SERVER__GC_FREEZE"] == "false"
        assert env["RELAY__MEDIA__COMPILED_FAST_PATH"] == "true"
        env = relay_process.relay_env(tmp_path, "aiortc")
        assert env["RELAY__MEDIA__FAST_PATH"] == "false"
        assert env["RELAY__RECORDING__ENABLED"] == "false"
        env = relay_process.relay_env(tmp_path, "pyfast")
        assert env["RELAY__MEDIA__FAST_PATH"] == "true"
        assert env["RELAY__MEDIA__COMPILED_FAST_PATH"] == "false"
    finally:
        relay_process.EXTRA_RELAY_ENV.clear()


def test_descendants_finds_grandchildren() -> None:
    import subprocess
    import sys

    from bench.cpu_accounting import descendants

    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '30'])"]
    )
    try:
        import time

        deadline = time.monotonic() + 10
        while len(descendants(child.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(descendants(child.pid)) == 1
        assert child.pid in descendants(os.getpid())
    finally:
        # The grandchild too: killing its parent alone left it running its 30 s, an
        # orphan the run's leftover check then found after a later test.
        for pid in descendants(child.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_other_processes_cpu_ignores_exits_and_counts_newcomers() -> None:
    from bench.cpu_accounting import others_cpu_delta

    before = {1: 10.0, 2: 5.0, 3: 7.0}
    after = {1: 10.5, 2: 5.25, 4: 0.5}  # 3 exited, 4 started
    assert others_cpu_delta(before, after) == 1.25


def test_first_audio_timeline_is_ms_since_the_exchange_with_server_timing() -> None:
    out = first_audio_timeline(
        100.0,
        {"answer": 100.03, "browser_connected": 100.061, "upstream_connected": None},
        "db;dur=12.5, answer;dur=4.0, offer;dur=3.5, upstream;dur=7.0, total;dur=30.2",
    )
    assert out == {
        "at_answer_ms": 30.0,
        "at_browser_connected_ms": 61.0,
        "st_db_ms": 12.5,
        "st_answer_ms": 4.0,
        "st_offer_ms": 3.5,
        "st_upstream_ms": 7.0,
        "st_total_ms": 30.2,
    }
    assert first_audio_timeline(0.0, {}, "") == {}


def test_first_audio_samples_are_bounded_and_tabled() -> None:
    assert parse_args(["--first-audio-samples", "15"]).first_audio_samples == 15
    with pytest.raises(SystemExit):
        parse_args(["--first-audio-samples", "500"])
    rows = [{"mode": "fast", "run": 1, "rest_ms_p50": 30.0, "rest_ms_p90": 50.0}]
    assert "| fast | 1 | 30.0 / 50.0 |" in first_audio_table(rows)


def test_datagrams_per_wakeup_come_from_the_window_only() -> None:
    before = {"batch_ms": 2.0, "wakeups": 100, "polls": 400, "datagrams": 900}
    after = {
        "batch_ms": 2.0,
        "wakeups": 110,
        "polls": 900,
        "datagrams": 4900,
        "forwarding": {"path": "compiled"},
    }
    assert wakeups_in_window(before, after) == {
        "relay_receive_batch_ms": 2.0,
        "relay_datagrams_per_wakeup": round(4000 / 510, 2),
        "relay_forwarding_path": "compiled",
    }
    assert wakeups_in_window(None, after) == {}
    idle = wakeups_in_window(after, after)
    assert idle["relay_datagrams_per_wakeup"] is None
