"""Pure logic of the benchmark suite: section choice and the one report of a run."""

from __future__ import annotations

from typing import Any

import pytest

from bench import suite, workers


def test_sections_are_checked() -> None:
    assert suite.parse_args([]).sections == list(suite.SECTIONS)
    assert suite.parse_args(["--sections", "memory, workers"]).sections == ["memory", "workers"]
    with pytest.raises(SystemExit):
        suite.parse_args(["--sections", "media,nonsense"])


def _cycles(env: dict[str, str], end_rss: float) -> dict[str, Any]:
    snapshot = {"rss_mb": 120.0, "tasks": 9, "threads": 2, "fds": 11}
    return {
        "suite_section": "memory",
        "harness": "shipped",
        "mode": "cycles",
        "relay_mode": "rec",
        "relay_env": env,
        "cycles": 1000,
        "start": snapshot,
        "after_first_batch": {**snapshot, "rss_mb": 127.0},
        "end": {**snapshot, "rss_mb": end_rss},
        "growth_after_first_batch": {"rss_mb": round(end_rss - 127.0, 1), "tasks": 0},
        "rss_mb_by_batch": [127.0, end_rss],
    }


def test_report_has_every_section_of_the_run() -> None:
    rows: list[dict[str, Any]] = [
        {
            "suite_section": "run",
            "command": "python -m bench.suite",
            "started": "2026-11-28T22:00:00Z",
            "machine": {"cpus": 2},
        },
        _cycles({}, 128.5),
        _cycles({"RELAY__SERVER__GC_FREEZE": "false"}, 150.0),
        {
            "suite_section": "workers",
            "harness": "workers",
            "workers": 1,
            "setups_per_s": 4.0,
            "setup_ms_p50": 500.0,
            "setup_ms_p95": 900.0,
            "completed": 60,
            "errors": 0,
        },
        {
            "suite_section": "workers",
            "harness": "workers",
            "workers": 2,
            "setups_per_s": 6.0,
            "setup_ms_p50": 400.0,
            "setup_ms_p95": 800.0,
            "completed": 60,
            "errors": 0,
        },
        {"suite_section": "memory", "section_s": 300.0},
    ]
    text = suite.report(rows)
    assert "Command: `python -m bench.suite`" in text
    assert "| 1000 | rec, as shipped | RSS (MB) | 120.0 | 127.0 | 128.5 | 1.5 |" in text
    assert "| 1000 | rec, keeper off | RSS (MB) | 120.0 | 127.0 | 150.0 | 23.0 |" in text
    assert "Workers 2 / workers 1 (mean set-ups per second): **1.50**" in text
    assert "memory 300 s" in text
    assert "### Media" not in text  # no media rows in this run


def test_recording_table_is_on_minus_off_over_the_whole_life() -> None:
    def point(mode: str, window: float, life: float) -> dict[str, Any]:
        return {
            "sessions": 10,
            "mode": mode,
            "relay_cpu_ms_per_session_s": window,
            "relay_cpu_ms_per_session_s_life": life,
        }

    rows = [
        point("fast", 10.0, 12.0),
        point("rec", 11.0, 14.0),
        point("fast", 10.0, 12.5),
        point("rec", 11.0, 15.5),
        {"sessions": 10, "mode": "rec", "error": "boom"},
    ]
    table = suite.recording_table(rows)
    assert "| 10 | [10.0, 10.0] | [11.0, 11.0] | [12.0, 12.5] | [14.0, 15.5] | 2.5 |" in table
    assert suite.mean_difference([None], [1.0]) is None


def test_workers_table_without_both_sides_has_no_ratio() -> None:
    one = {
        "workers": 1,
        "setups_per_s": 4.0,
        "setup_ms_p50": 1.0,
        "setup_ms_p95": 2.0,
        "completed": 1,
        "errors": 0,
    }
    assert "Workers 2 / workers 1" not in workers.table([one])


def test_gc_pauses_between_two_scrapes() -> None:
    from bench.prometheus import gc_pauses

    def scrape(count2: int, sum2: float, le5: int) -> str:
        return "\n".join(
            [
                f'relay_gc_pause_seconds_count{{generation="2"}} {count2}',
                f'relay_gc_pause_seconds_sum{{generation="2"}} {sum2}',
                f'relay_gc_pause_seconds_bucket{{generation="2",le="0.005"}} {le5}',
                'relay_gc_pause_seconds_count{generation="0"} 100',
                'relay_gc_pause_seconds_bucket{generation="0",le="0.005"} 100',
            ]
        )

    out = gc_pauses(scrape(3, 0.010, 3), scrape(7, 0.130, 5))
    assert out["gen2_count"] == 4 and out["gen2_total_ms"] == 120.0
    assert out["gen0_count"] == 0
    assert out["over_5ms"] == 2  # four new full collections, two of them at most 5 ms


def test_a_harness_keeps_its_own_section_key() -> None:
    row = {
        "harness": "admission",
        "section": "latency",
        "phase": "cold",
        "rate": 25.0,
        "requests": 10,
        "statuses": {"201": 10},
        "server_total_ms": {"p50": 1.0, "p99": 2.0},
        "server_relay_ms": {"p50": 1.0, "p99": 2.0},
        "cache_ms": {"p50": 0.1, "p99": 0.2},
        "db_ms": {"p50": 0.5, "p99": 0.9},
        "client_ms": {"p50": 1.5, "p99": 2.5},
        "cache_hit_rate": 0.0,
        "relay_cpu_ms_per_request": 9.0,
        "generator_late_count": 0,
        "generator_late_ms": {"p99": 0.1},
    }
    captured: list[dict[str, Any]] = []
    # What main_async's sink does to every row of a section.
    tagged = {**row, "suite_section": "admission"}
    captured.append(tagged)
    assert tagged["section"] == "latency"
    assert "| cold | 25.0 | 10 | 201: 10 |" in suite.report(captured)
