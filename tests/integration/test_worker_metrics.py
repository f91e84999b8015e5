"""`relay serve --workers 2` and its metrics: whichever worker answers a scrape, /metrics
covers both (counts summed, gauges and process metrics one series per worker), a restarted
worker neither loses the counts of the one it replaces nor leaves its gauges behind, and
/api/stats says which worker answered."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cluster_helpers import (
    OPERATOR,
    Client,
    RelayProcess,
    fresh_connections,
    poll,
    relay_env,
)

pytestmark = pytest.mark.slow

SCRAPES = 8
# Unlabelled gauges nothing sets in these tests: a single process exports them at 0 from its
# start, so every worker must too (docs: ``max(relay_upstream_consecutive_failures)``).
UNSET_GAUGES = (
    "relay_upstream_consecutive_failures",
    "relay_admission_inflight",
    "relay_admission_waiting",
)


async def _scrape(client: Client) -> dict[str, Any]:
    status, text, _ = await client.call("GET", "metrics", headers=OPERATOR)
    assert status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def _stats_requests(families: dict[str, Any]) -> float:
    return float(
        sum(
            s.value
            for s in families["relay_http_requests"].samples
            if s.name == "relay_http_requests_total"
            and s.labels["route"] == "/api/stats"
            and s.labels["status"] == "200"
        )
    )


def _workers_of(families: dict[str, Any], name: str) -> list[str]:
    return sorted({s.labels["worker"] for s in families[name].samples})


def _unset_gauges(families: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each of ``UNSET_GAUGES``: its value by worker (empty: no series at all)."""
    return {
        name: {s.labels["worker"]: s.value for s in families[name].samples}
        if name in families
        else {}
        for name in UNSET_GAUGES
    }


async def _ask_stats_until_both_answered(client: Client) -> tuple[dict[int, int], dict[int, int]]:
    """/api/stats on fresh connections until both workers have answered; (answers, pids)
    by worker index."""
    answers: dict[int, int] = {}
    pids: dict[int, int] = {}
    for _ in range(60):
        status, body, _ = await client.call("GET", "api/stats", headers=OPERATOR)
        assert status == 200, body
        worker = body["worker"]
        assert worker["metrics_cover_all_workers"] is True
        assert body["instance"].endswith(f"/w{worker['index']}")
        answers[worker["index"]] = answers.get(worker["index"], 0) + 1
        pids[worker["index"]] = worker["pid"]
        if len(answers) == 2 and sum(answers.values()) >= 6:
            break
    assert sorted(answers) == [0, 1], f"only worker(s) {sorted(answers)} answered"
    return answers, pids


async def test_one_scrape_covers_every_worker_and_stats_say_which_answered(
    traversable_tmp_path: Path, database_url: str
) -> None:
    env = relay_env(traversable_tmp_path / "state", {"DATABASE_URL": database_url})
    relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    try:
        async with fresh_connections() as http:
            client = Client(http, relay.url)
            answers, pids = await _ask_stats_until_both_answered(client)
            view = await client.cluster()
            assert sorted(m["pid"] for m in view["instances"]) == sorted(pids.values())
            asked = sum(answers.values()) + 1  # and the cluster view: /api/stats too

            # Several scrapes, each on a fresh connection (so either worker answers): every
            # one counts every worker's requests, and shows both workers' gauges.
            for _ in range(SCRAPES):
                families = await _scrape(client)
                assert _stats_requests(families) == asked
                assert _workers_of(families, "relay_media_capability_available") == ["0", "1"]
                assert _workers_of(families, "process_resident_memory_bytes") == ["0", "1"]
                assert _unset_gauges(families) == dict.fromkeys(UNSET_GAUGES, {"0": 0, "1": 0})
                (build,) = families["relay_build_info"].samples
                assert build.value == 1

            # A worker killed and started again: its counts stay in the totals, and only the
            # new process's gauges remain (each capability is 1 per worker, not 1 + 1).
            victim = pids[1]
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> bool:
                members = (await client.cluster())["instances"]
                return len(members) == 2 and victim not in {m["pid"] for m in members}

            await poll(restarted, 60, "worker 1 to be started again")
            families = await _scrape(client)
            assert _stats_requests(families) >= asked
            capability = families["relay_media_capability_available"].samples
            assert {s.labels["worker"] for s in capability} == {"0", "1"}
            assert all(s.value == 1 for s in capability), capability
            assert _workers_of(families, "process_resident_memory_bytes") == ["0", "1"]
            # The new worker's unlabelled gauges are there before anything sets them.
            assert _unset_gauges(families) == dict.fromkeys(UNSET_GAUGES, {"0": 0, "1": 0})
    finally:
        await relay.stop()


async def test_the_workers_metric_files_are_private_whatever_the_umask(
    traversable_tmp_path: Path, database_url: str
) -> None:
    # The supervisor makes the run's metrics directory under TMPDIR: here, to look in it.
    tmp = traversable_tmp_path / "tmp"
    tmp.mkdir()
    env = relay_env(
        traversable_tmp_path / "state", {"DATABASE_URL": database_url, "TMPDIR": str(tmp)}
    )
    umask = os.umask(0o022)  # the usual one, inherited by the relay: files would be 0644
    try:
        relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    finally:
        os.umask(umask)
    try:
        async with fresh_connections() as http:
            # Both workers answered: each has written counters, histograms and gauges.
            await _ask_stats_until_both_answered(Client(http, relay.url))
        (directory,) = tmp.glob("relay-worker-metrics-*")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert sum(name.endswith(".db") for name in modes) == 6, modes  # 3 kinds, 2 workers
        assert sum(name.endswith(".pid") for name in modes) == 2, modes
        assert {n: oct(m) for n, m in modes.items() if m != 0o600} == {}
    finally:
        await relay.stop()
