"""The metrics registry on prometheus-client: histograms with their own buckets (the
relay's own fitting the documented ranges of what they time), one
observe feeding both the Prometheus text and the JSON percentiles, bounded label sets,
one isolated registry per instance."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.admission.cache import UserCache
from relay.admission.service import Admission
from relay.admission.users import UserRows
from relay.config import DatabaseConfig, Settings
from relay.db.store import Store
from relay.memory import GcPauseMeter
from relay.observability.metrics import (
    FAST_BUCKETS,
    MAX_SERIES,
    OTHER,
    SLOW_BUCKETS,
    Histogram,
    MetricsRegistry,
    bounded,
)


def families(registry: MetricsRegistry) -> dict[str, object]:
    text = registry.render_prometheus().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_one_observe_feeds_the_histogram_and_the_json_percentiles() -> None:
    registry = MetricsRegistry(process_metrics=False)
    latency = registry.histogram("relay_test_duration_seconds", "t", ["stage"])
    for ms in range(1, 101):  # 1 ms … 100 ms
        latency.observe(ms / 1000, stage="mint")

    family = families(registry)["relay_test_duration_seconds"]
    assert family.type == "histogram"  # type: ignore[attr-defined]
    samples = {
        (s.name, s.labels.get("le")): s.value
        for s in family.samples  # type: ignore[attr-defined]
    }
    assert samples[("relay_test_duration_seconds_count", None)] == 100
    assert samples[("relay_test_duration_seconds_bucket", "0.01")] == 10
    assert samples[("relay_test_duration_seconds_bucket", "0.05")] == 50
    assert samples[("relay_test_duration_seconds_bucket", "+Inf")] == 100
    assert samples[("relay_test_duration_seconds_sum", None)] == pytest.approx(5.05)

    q = latency.quantiles_ms(stage="mint")
    assert q == {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0}
    (row,) = registry.snapshot()["relay_test_duration_seconds"]
    assert row["stage"] == "mint" and row["count"] == 100 and row["p99_ms"] == 99.0


def test_buckets_fit_the_latency_they_measure() -> None:
    registry = MetricsRegistry(process_metrics=False)
    registry.histogram("relay_fast_seconds", "f")
    registry.histogram("relay_slow_seconds", "s", buckets=SLOW_BUCKETS)
    text = registry.render_prometheus().decode()
    assert 'relay_fast_seconds_bucket{le="0.001"}' in text
    assert 'relay_slow_seconds_bucket{le="20.0"}' in text
    assert 'relay_slow_seconds_bucket{le="0.001"}' not in text
    assert min(FAST_BUCKETS) <= 0.001 and max(SLOW_BUCKETS) >= 30


def test_registries_are_isolated_and_names_are_typed() -> None:
    a, b = MetricsRegistry(process_metrics=False), MetricsRegistry(process_metrics=False)
    a.counter("relay_things_total", "n").inc(3)
    b.counter("relay_things_total", "n").inc()
    assert a.counter("relay_things_total", "n").value() == 3
    assert b.snapshot()["relay_things_total"] == 1
    with pytest.raises(ValueError, match="another type"):
        a.gauge("relay_things_total", "n")
    with pytest.raises(ValueError, match="labels"):
        a.counter("relay_things_total", "n").inc(kind="x")


def test_label_sets_are_capped_and_unknown_values_fold_into_other() -> None:
    assert bounded("server_error", {"server_error"}) == "server_error"
    assert bounded("made-up-by-upstream", {"server_error"}) == OTHER
    assert bounded(None, {"server_error"}) == OTHER

    registry = MetricsRegistry(process_metrics=False)
    counter = registry.counter("relay_capped_total", "c", ["code"])
    for i in range(MAX_SERIES + 50):
        counter.inc(code=f"c{i}")
    rows = registry.snapshot()["relay_capped_total"]
    assert len(rows) == MAX_SERIES + 1
    assert next(r for r in rows if r["code"] == OTHER)["value"] == 50


def test_build_info_and_process_metrics_and_no_summaries() -> None:
    registry = MetricsRegistry()
    registry.build_info(version="1.2.3", python="3.11")
    fams = families(registry)
    # The text format has no "info" type: it is a gauge of value 1 with the labels.
    (sample,) = fams["relay_build_info"].samples  # type: ignore[attr-defined]
    assert sample.value == 1 and sample.labels == {"version": "1.2.3", "python": "3.11"}
    assert "process_cpu_seconds" in fams
    assert all(f.type != "summary" for f in fams.values())  # type: ignore[attr-defined]


def _buckets(registry: MetricsRegistry, name: str) -> tuple[float, ...]:
    metric = registry.get(name)
    assert isinstance(metric, Histogram), name
    return metric.buckets


def test_retried_database_work_and_gc_pauses_have_buckets_for_their_whole_range() -> None:
    registry = MetricsRegistry(process_metrics=False)
    settings = Settings()
    store = Store("postgresql://unused", settings.database, registry)
    Admission(settings, UserRows(store), UserCache(settings.cache, registry), registry)
    GcPauseMeter(registry)

    # A statement that times out on every attempt (docs/operations.md, "Failure modes":
    # about 40 s with the defaults) still lands in a bucket, and a fast one in the first.
    db = DatabaseConfig()  # the defaults the docs' figure is for
    backoff = sum(min(db.backoff_max_s, db.backoff_base_s * 2**i) for i in range(db.retries))
    worst = (db.retries + 1) * (db.connect_timeout_s + db.query_timeout_s) + backoff
    assert 35 < worst < 45
    for name in ("relay_db_query_duration_seconds", "relay_admission_duration_seconds"):
        buckets = _buckets(registry, name)
        assert min(buckets) <= 0.001 and max(buckets) >= worst, name
        assert len(buckets) <= 20, name

    # Collections of microseconds (a young generation) to a third of a second (a full one
    # with 500 interviews live: docs/operations.md, "Memory per session").
    gc_buckets = _buckets(registry, "relay_gc_pause_seconds")
    assert min(gc_buckets) <= 0.00001 and max(gc_buckets) >= 0.5
    assert len([b for b in gc_buckets if b < 0.001]) >= 3
    assert len(gc_buckets) <= 20
