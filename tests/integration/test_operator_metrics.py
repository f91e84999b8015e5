"""/metrics and /api/stats on a whole relay: prometheus-client's own parser reads the
text, latencies are histograms (no summaries), label sets stay bounded however many
sessions pass, the JSON percentiles come from the same observations, and both refuse a
missing or wrong operator token."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from relay.db.migrate import MIGRATION_LOCK_ID
from tests.integration.conftest import MakeRelay
from tests.integration.live_session import live_session
from tests.integration.media_helpers import wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness
from tests.support.redis_server import RedisServer

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
HISTOGRAMS = {
    "relay_http_request_duration_seconds": "HTTP",
    "relay_db_query_duration_seconds": "database",
    "relay_upstream_duration_seconds": "upstream",
    "relay_media_connect_duration_seconds": "media connect",
    "relay_admission_duration_seconds": "admission",
    "relay_cache_lookup_duration_seconds": "cache",
}


async def scrape(relay: RelayHarness) -> dict[str, Any]:
    async with relay.client.get("/metrics", headers=OPERATOR) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


async def stats(relay: RelayHarness) -> dict[str, Any]:
    async with relay.client.get("/api/stats", headers=OPERATOR) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


def series(families: dict[str, Any]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) pair but histogram buckets' ``le``."""
    out = set()
    for family in families.values():
        sample: Sample
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            out.add((sample.name, labels))
    return out


async def test_operator_data_refuses_a_missing_or_wrong_token(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    for path in ("/metrics", "/api/stats"):
        for headers, code in (
            ({}, "missing_token"),
            ({"Authorization": "Bearer not-the-operator-token"}, "invalid_token"),
            ({"Authorization": f"Bearer {OPERATOR_TOKEN}x"}, "invalid_token"),
        ):
            async with relay.client.get(path, headers=headers) as resp:
                assert resp.status == 401, path
                body = await resp.json()
                assert body["error"]["code"] == code
                assert body["request_id"] == resp.headers["X-Request-ID"]
                assert "relay_" not in await resp.text()
    # The page itself holds no data: it asks /api/stats with the token typed in.
    async with relay.client.get("/stats") as resp:
        assert resp.status == 200
        html = await resp.text()
        assert "/static/stats.js" in html and "relay_" not in html


async def test_metrics_are_histograms_and_feed_the_json_stats(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    async with live_session(relay) as live:
        families = await scrape(relay)
        for name, what in HISTOGRAMS.items():
            assert name in families, what
            assert families[name].type == "histogram", what
            counts = [s.value for s in families[name].samples if s.name == name + "_count"]
            assert counts and sum(counts) >= 1, what
        assert all(f.type != "summary" for f in families.values())
        (build,) = families["relay_build_info"].samples
        assert build.value == 1 and build.labels["version"]
        assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families
        routes = {
            s.labels["route"]
            for s in families["relay_http_request_duration_seconds"].samples
            if s.name.endswith("_count")
        }
        assert "/api/realtime-session" in routes and "/api/webrtc-exchange" in routes

        body = await stats(relay)
        # Same observations, two views: the JSON count is the histogram's count.
        mint_count = next(
            s.value
            for s in families["relay_upstream_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["stage"] == "mint"
        )
        assert body["upstream"]["mint"]["count"] == mint_count == 1
        assert body["upstream"]["mint"]["p50_ms"] > 0
        assert body["admission"]["count"] >= 2 and body["admission"]["p99_ms"] > 0
        assert body["upstream"]["state"] == "up" and body["database"]["state"] == "up"
        (row,) = body["sessions"]
        assert row["session_id"] == live.session_id and row["user"] == "j***e@example.com"
        assert "jane.doe" not in str(body)
        media = row["media"]
        for leg in ("browser_to_upstream", "upstream_to_browser"):
            assert {"packets_in", "bytes_in", "queue_depth", "dropped", "last_media_age_s"} <= set(
                media[leg]
            )
        # The relay's media sockets (both legs of the session) and how they are read.
        receive = body["media_receive"]
        assert receive["batch_ms"] == 1.0 and receive["sockets"] >= 2
        # Every counted wake-up read a datagram; a busy spell's last poll finds none, so
        # with few datagrams the ratio over wake-ups and polls may dip under 1.
        assert receive["datagrams"] >= receive["wakeups"] > 0
        assert receive["datagrams_per_wakeup"] > 0
        await wait_until(
            lambda: (
                relay.services.loop_monitor is not None
                and relay.services.loop_monitor.cpu_percent is not None
            ),
            10,
            "cpu sampled",
        )
        body = await stats(relay)
        assert body["process"]["cpu_percent"] >= 0
        assert body["process"]["loop_lag_p99_ms"] is not None

        async with relay.client.delete(f"/api/sessions/{live.session_id}", headers=OPERATOR) as r:
            assert r.status == 204
        body = await stats(relay)
        assert body["sessions"] == []
        ended = body["recently_ended"][0]
        assert ended["session_id"] == live.session_id and ended["reason"] == "operator_hangup"
        # The recorder (on by default) reports itself; the dashboard lists ``latest``.
        assert body["recordings"]["enabled"] is True and isinstance(
            body["recordings"]["latest"], list
        )


async def test_stats_metrics_and_sessions_say_which_forwarding_path_runs(
    make_relay: MakeRelay, media_path: str
) -> None:
    relay = await make_relay()
    compiled = media_path != "python"
    async with live_session(relay) as live:
        bridges = relay.services.bridges
        assert bridges is not None
        bridge = bridges.get(live.session_id)
        assert bridge is not None
        await wait_until(
            lambda: bridge.browser_to_upstream.forwarded > 5, 10, "the candidate's audio forwarded"
        )
        body = await stats(relay)
        forwarding = body["media_receive"]["forwarding"]
        assert forwarding["path"] == media_path and forwarding["compiled_built"] is True
        assert forwarding["reason"] == (None if compiled else "media.compiled_fast_path = false")
        assert forwarding["srtp"].startswith("libsrtp2 ")
        # At least the candidate's direction is on the compiled loop when it runs.
        assert (forwarding["compiled_routes"] >= 1) is compiled
        (row,) = body["sessions"]
        assert row["media"]["browser_to_upstream"]["compiled"] is compiled
        families = await scrape(relay)
        gauge = {s.labels["path"]: s.value for s in families["relay_media_forwarding_path"].samples}
        assert gauge == {"compiled": float(compiled), "python": float(not compiled)}


async def test_label_sets_stay_bounded_as_sessions_pass(make_relay: MakeRelay) -> None:
    # No heartbeat after the first (at start-up, with no session): a later one that caught
    # a session live would add its fixed-name reconciliation query series between the two
    # scrapes, depending only on timing.
    relay = await make_relay(
        overrides={
            "limits": {"per_user_requests_per_minute": 1000},
            "cluster": {"heartbeat_interval_s": 60},
        }
    )
    token = await relay.add_user(seconds=100_000)

    async def one_round() -> None:
        status, body, _ = await relay.create_session(token)
        assert status == 201, body
        sid = body["session_id"]
        async with relay.client.get(
            f"/api/sessions/{sid}", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200
        async with relay.client.delete(f"/api/sessions/{sid}", headers=OPERATOR) as resp:
            assert resp.status == 204
        # Unknown ids and paths, as scanners send them.
        async with relay.client.get(
            f"/api/sessions/is_{secrets.token_hex(8)}",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 404
        async with relay.client.get(f"/no/such/{secrets.token_hex(8)}") as resp:
            assert resp.status == 404

    await scrape(relay)  # the scrape's own series exist from here on
    for _ in range(10):
        await one_round()
    after_10 = series(await scrape(relay))
    for _ in range(90):
        await one_round()
    after_100 = series(await scrape(relay))
    assert after_100 == after_10
    assert len(after_100) < 1000
    values = {v for _, labels in after_100 for _, v in labels}
    assert not any(v.startswith(("is_", "req_", "/no/")) for v in values)
    assert relay.counter("relay_sessions_ended_total") == 100


async def test_dashboard_page_has_a_strict_csp_and_no_inline_code(make_relay: MakeRelay) -> None:
    relay = await make_relay()
    async with relay.client.get("/stats") as resp:
        assert resp.status == 200
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # Every script is a file; no style element or attribute, no inline handler.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    for asset in ("/static/stats.js", "/static/stats.css", "/static/favicon.svg"):
        async with relay.client.get(asset) as resp:
            assert resp.status == 200, asset


GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "relay-dashboard.json"
DOCS = Path(__file__).resolve().parents[2] / "docs"
_SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _metric_docs() -> str:
    names = ("operations.md", "media.md", "webhooks.md")
    return "".join((DOCS / n).read_text() for n in names) + (DOCS.parent / "README.md").read_text()


async def test_the_dashboard_uses_only_exported_metrics_and_the_docs_name_them_all(
    make_relay: MakeRelay,
) -> None:
    dashboard = json.loads(await asyncio.to_thread(GRAFANA.read_text))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {_base(m) for e in exprs for m in re.findall(r"\b((?:relay|process)_[a-z_]+)\b", e)}
    assert len(used) >= 15
    relay = await make_relay()
    async with live_session(relay):
        families = await scrape(relay)
    exported = {_base(name) for name in families}
    assert used <= exported, used - exported
    # And every relay metric a relay exports with an interview done is in the docs
    # (docs/operations.md, "Metrics"; the media counters in docs/media.md).
    docs = await asyncio.to_thread(_metric_docs)
    named = {_base(m) for m in re.findall(r"`(relay_[a-z0-9_]+)", docs)}
    undocumented = {n for n in exported if n.startswith("relay_")} - named
    assert not undocumented, sorted(undocumented)
    # Latency panels read histograms: quantiles over _bucket series.
    assert all("_bucket" in e for e in exprs if "histogram_quantile" in e)


async def test_counters_alerts_watch_for_a_first_increase_exist_at_zero_from_the_start(
    make_relay: MakeRelay,
) -> None:
    """deploy/prometheus/alerts.yml alerts on ``increase(...) > 0``; Prometheus sees no
    increase in a series' first sample, so a counter whose series appeared only with its
    first failure would never fire for the first failure after a start."""
    relay = await make_relay()
    families = await scrape(relay)
    tasks = {
        s.labels["owner"]: s.value
        for s in families["relay_background_task_failures"].samples
        if s.name == "relay_background_task_failures_total"
    }
    assert {"app", "database", "cluster", "sessions", "webhooks"} <= set(tasks), tasks
    assert set(tasks.values()) == {0.0}
    stages = {
        s.labels["stage"]: s.value
        for s in families["relay_recordings_failed"].samples
        if s.name == "relay_recordings_failed_total"
    }
    assert stages == {"write": 0.0, "render": 0.0, "verify": 0.0, "upload": 0.0}


async def test_more_alerted_series_exist_at_zero_from_the_start(
    make_relay: MakeRelay, redis_server: RedisServer
) -> None:
    """The other series alerts.yml watches for a first increase: the shared limits'
    fallbacks (with Redis configured), the session limits' refusals, no media ports, the
    event channels' stalls."""
    relay = await make_relay(redis_url=redis_server.url)
    families = await scrape(relay)

    def series(family: str, label: str) -> dict[str, float]:
        return {
            s.labels[label]: s.value
            for s in families[family].samples
            if s.name == f"{family}_total"
        }

    assert series("relay_limits_redis_fallback", "limit") == {
        "sessions": 0.0,
        "request_rate": 0.0,
        "failed_auth": 0.0,
    }
    assert series("relay_sessions_rejected", "reason") == {
        "global_cap": 0.0,
        "user_concurrency": 0.0,
    }
    assert series("relay_http_errors", "code") == {"no_media_ports": 0.0}
    assert series("relay_media_event_channel_stalls", "direction") == {
        "upstream_to_browser": 0.0,
        "browser_to_upstream": 0.0,
    }
    # A series declared at 0 is no error to report in /api/stats.
    async with relay.client.get("/api/stats", headers=OPERATOR) as resp:
        assert (await resp.json())["errors_by_code"] == {}


def _gauge(families: dict[str, Any], name: str) -> float:
    (sample,) = families[name].samples
    return float(sample.value)


async def test_pending_migrations_and_a_drain_show_in_the_metrics(
    make_relay: MakeRelay, database_url: str
) -> None:
    """What makes /readyz red for a while, seen by Prometheus too (which does not probe
    /readyz): migrations not yet applied, and a drain (deploy/prometheus/alerts.yml:
    RelayDrainingTooLong)."""
    # Another process holds the migration lock, so this relay starts without its schema.
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        relay = await make_relay()
        families = await scrape(relay)
        assert _gauge(families, "relay_db_migrations_pending") == 1
        assert _gauge(families, "relay_draining") == 0
        await blocker.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        async with asyncio.timeout(10):
            await relay.services.store.wait_schema_ready()
    finally:
        await blocker.close()
    assert _gauge(await scrape(relay), "relay_db_migrations_pending") == 0

    async with relay.client.post(
        "/api/cluster/drain", headers=OPERATOR, json={"member": "*"}
    ) as resp:
        assert resp.status == 202
    await wait_until(lambda: relay.services.drain.draining, 10.0, "the drain to arrive")
    families = await scrape(relay)
    assert _gauge(families, "relay_draining") == 1
    async with relay.client.get("/readyz") as resp:
        assert resp.status == 503  # the same state /readyz reports
