from __future__ import annotations

import pytest

from bench.admission import (
    hit_rate,
    ideal_hit_rate,
    lookup_delta,
    parse_server_timing,
    percentile,
    ttl_steady_hit_rate,
    zipf_users,
)
from bench.prometheus import prometheus_samples


def test_server_timing_segments_and_total() -> None:
    header = "cache;dur=0.4, db;dur=1.25, upstream;dur=3.0, total;dur=5.5"
    assert parse_server_timing(header) == {"cache": 0.4, "db": 1.25, "upstream": 3.0, "total": 5.5}


def test_server_timing_ignores_parts_without_a_duration() -> None:
    assert parse_server_timing('miss, x;desc="a", total;dur=2') == {"total": 2.0}
    assert parse_server_timing("") == {}


def test_percentile_is_an_observed_value() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_zipf_users_is_seeded_bounded_and_skewed() -> None:
    a = zipf_users(1000, 1.1, 20_000, seed=5)
    assert a == zipf_users(1000, 1.1, 20_000, seed=5)
    assert a != zipf_users(1000, 1.1, 20_000, seed=6)
    assert all(0 <= u < 1000 for u in a)
    counts = sorted((a.count(u) for u in set(a)), reverse=True)
    # Rank 1 has probability 1/H(1000, 1.1) ≈ 0.17, rank 2 about half of that.
    assert 0.14 < counts[0] / len(a) < 0.20
    assert 1.7 < counts[0] / counts[1] < 2.6


def test_ideal_hit_rate_counts_first_requests_as_misses() -> None:
    assert ideal_hit_rate([1, 2, 1, 3, 1, 2], 0) == pytest.approx(3 / 6)
    assert ideal_hit_rate([1, 2, 1, 3, 1, 2], 3) == pytest.approx(2 / 3)
    assert ideal_hit_rate([1], 1) is None


def test_ttl_steady_hit_rate_one_user_and_limits() -> None:
    # One user at 2 requests/s, 10 s TTL: 1 miss then 20 hits per cycle.
    assert ttl_steady_hit_rate(1, 1.0, 2.0, 10.0) == pytest.approx(20 / 21)
    low = ttl_steady_hit_rate(10_000, 1.1, 40.0, 300.0)
    assert low < ttl_steady_hit_rate(10_000, 1.1, 40.0, 3600.0) < 1.0
    assert low < ttl_steady_hit_rate(10_000, 1.1, 400.0, 300.0)


def test_cache_lookups_from_prometheus_text() -> None:
    before_text = (
        "# HELP relay_cache_lookups_total User cache lookups\n"
        "# TYPE relay_cache_lookups_total counter\n"
        'relay_cache_lookups_total{result="hit",source="redis"} 10.0\n'
        'relay_cache_lookups_total{result="miss",source="redis"} 5.0\n'
        'relay_cache_lookups_created{result="hit",source="redis"} 1.7e9\n'
    )
    after_text = before_text.replace("10.0", "100.0") + (
        'relay_cache_lookups_total{source="local",result="hit"} 4.0\n'
    )
    before = prometheus_samples(before_text, "relay_cache_lookups_total")
    after = prometheus_samples(after_text, "relay_cache_lookups_total")
    assert len(before) == 2
    delta = lookup_delta(before, after)
    assert delta == {"hit/local": 4, "hit/redis": 90}
    assert hit_rate(delta) == 1.0
    assert hit_rate({"hit/redis": 3, "miss/redis": 1}) == 0.75
    assert hit_rate({}) is None


def test_table_shows_every_phase_status_and_the_hit_rate() -> None:
    from bench.admission import table

    ms = {"p50": 1.0, "p99": 2.0}
    latency = {
        "harness": "admission",
        "section": "latency",
        "rate": 25.0,
        "requests": 10,
        "statuses": {"201": 9, "503": 1},
        "server_total_ms": ms,
        "server_relay_ms": ms,
        "cache_ms": ms,
        "db_ms": {"p50": None, "p99": None},
        "client_ms": ms,
        "cache_lookups": {"hit/redis": 10},
        "cache_hit_rate": 1.0,
        "relay_cpu_ms_per_request": 5.0,
        "generator_late_count": 0,
        "generator_late_ms": ms,
        "db_statements": {"create_session": {"per_request": 1.0, "mean_ms": 1.5}},
    }
    rows = [
        {**latency, "phase": "warm"},
        {**latency, "phase": "redis_down"},
        {
            "harness": "admission",
            "section": "hit_rate",
            "rate": 25.0,
            "users": 10_000,
            "zipf_s": 1.1,
            "warmup_requests": 5,
            "window_requests": 5,
            "distinct_users_so_far": 3,
            "hit_rate": 0.9,
            "ideal_hit_rate": 0.95,
            "hit_ttl_s": 300,
            "steady_hit_rate_at_hit_ttl": 0.85,
        },
    ]
    text = table(rows)
    assert "| warm |" in text and "| redis_down |" in text
    assert "503: 1" in text
    assert "| 0.9 | 0.95 | 0.85 (300 s) |" in text
    assert "create_session 1.0 (1.5)" in text


def test_options_are_prefixed_and_bounded() -> None:
    import argparse

    from bench.admission import Options, add_arguments

    parser = argparse.ArgumentParser()
    parser.add_argument("--rate")  # another harness's option: no clash
    add_arguments(parser)
    options = Options.from_args(parser.parse_args(["--admission-rate", "50"]))
    assert options.rate == 50.0 and options.zipf_s == 1.1
    with pytest.raises(ValueError, match="rate"):
        Options.from_args(parser.parse_args(["--admission-rate", "5000"]))
    with pytest.raises(ValueError, match="zipf_window_s"):
        Options(zipf_window_s=1000)
    with pytest.raises(ValueError, match="long_requests"):
        Options(long_requests=600_000)


def test_in_process_counter_snapshot_matches_the_prometheus_keys() -> None:
    from bench.admission import by_labels

    snapshot = [
        {"result": "hit", "source": "redis", "value": 7.0},
        {"result": "miss", "source": "redis", "value": 3.0},
    ]
    text = (
        'relay_cache_lookups_total{result="hit",source="redis"} 7.0\n'
        'relay_cache_lookups_total{result="miss",source="redis"} 3.0\n'
    )
    assert by_labels(snapshot) == prometheus_samples(text, "relay_cache_lookups_total")
    assert hit_rate(lookup_delta({}, by_labels(snapshot))) == 0.7


def test_table_shows_the_long_run_per_block() -> None:
    from bench.admission import table

    long = {
        "harness": "admission",
        "section": "hit_rate_long",
        "rate": 25.0,
        "users": 10_000,
        "zipf_s": 1.1,
        "requests": 20_000,
        "equivalent_minutes_at_rate": 13.3,
        "hit_ttl_s": 21600,
        "elapsed_s": 9.5,
        "blocks": [
            {"from": 0, "requests": 10_000, "hit_rate": 0.81, "ideal_hit_rate": 0.82},
            {"from": 10_000, "requests": 10_000, "hit_rate": 0.9, "ideal_hit_rate": 0.9},
        ],
    }
    text = table([long])
    assert "20000 lookups" in text and "within hit_ttl_s = 21600 s" in text
    assert "| 10000–20000 | 0.9 | 0.9 |" in text
