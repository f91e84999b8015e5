"""Admission: ``POST /api/realtime-session`` on the shipped relay at a fixed request rate.

Run inside a private network namespace (loopback only), from the repository root:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.admission'

This process is the load generator (pinned to CPU 1) and the GA-shaped upstream (its
``client_secrets`` answers at once; every admitted request mints an upstream session).
It starts a real PostgreSQL and a real Redis (the tests' helpers, from the wheels), creates
10,000 + ``--cold-users`` candidates with ``relay users import`` and runs ``relay serve``
(pinned to CPU 0) against them. Requests are sent open-loop: request *i* leaves at
``t0 + i / rate`` whether or not earlier ones were answered; how late the generator was
is recorded, so a generator that fell behind is never read as the relay being slow.

Phases, one relay, in this order:

- ``cold``: users never looked up (each once): every lookup misses, the database path;
- ``warm``: the same users again, uniformly: every lookup is a Redis hit;
- ``zipf``: Redis flushed, then requests drawn from Zipf(s) over 10,000 users, a warm-up
  followed by the measured window; the cache hit rate is the relay's own counter
  (``relay_cache_lookups_total`` from ``/metrics``) over the window, next to the hit rate
  a cache that never forgets would have on the same sequence (the ceiling for that many
  requests);
- ``redis_down``: the Redis process killed, the Zipf stream continues: the relay serves
  from its in-process fallback and PostgreSQL.

Server-side latency is the relay's ``Server-Timing`` header (``total``, and its
``cache``, ``db`` and ``upstream`` segments); ``relay`` is total minus upstream (the
mint of our own upstream, which answers at once but is still an HTTP round trip).
Client-side latency is from the moment the request left to its last byte. Every status is
counted; nothing that is not a 201 is dropped from the report.

Sessions are never exchanged, so each admitted one stays pending until it expires:
``session.pending_ttl_s`` is 5 s here (so the relay holds about rate x 5 pending sessions,
the scale of a real instance's live sessions) and the global and per-user caps are raised
far above what the load needs, so no request is refused by a cap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from bench.ga_upstream import UPSTREAM_PORT, GaUpstream
from bench.prometheus import prometheus_samples
from bench.relay_process import RELAY_PORT, RelayProcess, base_relay_env, relay_metrics
from bench.run import RESULTS_DIR
from relay.admission.cache import UserCache
from relay.admission.invalidation import CacheInvalidationListener
from relay.admission.service import Admission
from relay.admission.users import UserRows
from relay.config import CacheConfig, load_settings
from relay.db import Store
from relay.observability.metrics import MetricsRegistry

ZIPF_USERS = 10_000
# Late by more than this, a request counts as sent behind schedule.
LATE_MS = 5.0
_TIMING_PART = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:;(.*))?$")
_DUR = re.compile(r"(?:^|;)\s*dur=([0-9.]+)")


# ---------------------------------------------------------------------- pure helpers


def parse_server_timing(header: str) -> dict[str, float]:
    """``cache;dur=0.4, db;dur=1.2, total;dur=3.0`` → {"cache": 0.4, "db": 1.2, ...}.

    Metrics without a duration are left out; a repeated name adds up."""
    out: dict[str, float] = {}
    for part in header.split(","):
        match = _TIMING_PART.match(part)
        if not match or not match[2]:
            continue
        dur = _DUR.search(match[2])
        if dur:
            out[match[1]] = out.get(match[1], 0.0) + float(dur[1])
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def zipf_users(n_users: int, s: float, count: int, seed: int) -> list[int]:
    """``count`` user indices, the one of popularity rank k drawn with probability
    proportional to k^-s (a Zipf law bounded to ``n_users``). Ranks map to indices
    through a fixed random permutation, so popularity has nothing to do with creation
    order (user ids, table position)."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_users + 1, dtype=np.float64) ** -s
    ranks = rng.choice(n_users, size=count, p=weights / weights.sum())
    permutation = rng.permutation(n_users)
    return [int(i) for i in permutation[ranks]]


def ideal_hit_rate(sequence: Sequence[int], window_start: int) -> float | None:
    """Hit rate over ``sequence[window_start:]`` of a cache that never forgets and starts
    empty at ``sequence[0]``: a request hits when its user came before. The ceiling for a
    cache on that many requests: only first requests miss."""
    seen = set(sequence[:window_start])
    hits = total = 0
    for user in sequence[window_start:]:
        total += 1
        hits += user in seen
        seen.add(user)
    return hits / total if total else None


def ttl_steady_hit_rate(n_users: int, s: float, rate: float, ttl_s: float) -> float:
    """Long-run hit rate of a cache whose entries live ``ttl_s`` from the miss that stored
    them (a hit does not extend them: the relay's Redis ``SET ... EX``), for Poisson
    requests at ``rate`` per second drawn from Zipf(s) over ``n_users``, with no other
    invalidation. User k, asked λ_k = rate·p_k times a second, misses once per cycle and
    hits λ_k·ttl times in it on average: its hit rate is λ_k·ttl / (1 + λ_k·ttl)."""
    weights = np.arange(1, n_users + 1, dtype=np.float64) ** -s
    p = weights / weights.sum()
    per_ttl = rate * p * ttl_s
    return float(np.sum(p * per_ttl / (1 + per_ttl)))


def lookup_delta(
    before: dict[tuple[tuple[str, str], ...], float],
    after: dict[tuple[tuple[str, str], ...], float],
) -> dict[str, int]:
    """``relay_cache_lookups_total`` between two readings, as ``result/source`` → count."""
    out: dict[str, int] = {}
    for labels, value in after.items():
        delta = int(round(value - before.get(labels, 0.0)))
        if delta:
            d = dict(labels)
            out[f"{d.get('result')}/{d.get('source')}"] = delta
    return dict(sorted(out.items()))


def by_labels(snapshot: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    """A labelled counter's in-process ``snapshot()`` keyed as ``prometheus_samples`` keys."""
    return {
        tuple(sorted((k, str(v)) for k, v in row.items() if k != "value")): float(row["value"])
        for row in snapshot
    }


def hit_rate(lookups: dict[str, int]) -> float | None:
    """Known users served from a cache (either layer) over all lookups."""
    total = sum(lookups.values())
    hits = sum(n for key, n in lookups.items() if key.startswith(("hit/", "negative_hit/")))
    return round(hits / total, 4) if total else None


# ---------------------------------------------------------------------- the load


@dataclass
class Sample:
    status: str
    late_ms: float
    client_ms: float
    timing: dict[str, float]


async def request_once(
    http: aiohttp.ClientSession, url: str, token: str, scheduled: float
) -> Sample:
    loop = asyncio.get_running_loop()
    started = loop.time()
    timing: dict[str, float] = {}
    try:
        # As the page says it: the recording notice was shown (required while recording).
        notice = {"recording_notice_shown": True}
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(url, json=notice, headers=headers) as resp:
            await resp.read()
            status = str(resp.status)
            timing = parse_server_timing(resp.headers.get("Server-Timing", ""))
    except Exception as exc:  # counted and reported, like any status
        status = type(exc).__name__
    return Sample(status, (started - scheduled) * 1000, (loop.time() - started) * 1000, timing)


async def drive(
    http: aiohttp.ClientSession, tokens: Sequence[str], rate: float
) -> tuple[list[Sample], float]:
    """Open loop: request i leaves at t0 + i / rate; returns the samples and the seconds
    from the first scheduled send to the last reply."""
    loop = asyncio.get_running_loop()
    url = f"http://127.0.0.1:{RELAY_PORT}/api/realtime-session"
    t0 = loop.time() + 0.05
    pending: list[asyncio.Task[Sample]] = []
    for i, token in enumerate(tokens):
        at = t0 + i / rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(request_once(http, url, token, at)))
    samples = await asyncio.gather(*pending)
    return list(samples), loop.time() - t0


def summarise(samples: Sequence[Sample]) -> dict[str, Any]:
    def ms(values: list[float]) -> dict[str, float | None]:
        p50, p99 = percentile(values, 50), percentile(values, 99)
        return {
            "p50": None if p50 is None else round(p50, 2),
            "p99": None if p99 is None else round(p99, 2),
        }

    ok = [s for s in samples if s.status == "201"]
    totals = [s.timing["total"] for s in ok if "total" in s.timing]
    relay = [s.timing["total"] - s.timing.get("upstream", 0.0) for s in ok if "total" in s.timing]
    late = [s.late_ms for s in samples]
    return {
        "requests": len(samples),
        "statuses": dict(sorted(Counter(s.status for s in samples).items())),
        "server_total_ms": ms(totals),
        "server_relay_ms": ms(relay),
        "cache_ms": ms([s.timing["cache"] for s in ok if "cache" in s.timing]),
        "db_ms": ms([s.timing["db"] for s in ok if "db" in s.timing]),
        "upstream_ms": ms([s.timing["upstream"] for s in ok if "upstream" in s.timing]),
        "client_ms": ms([s.client_ms for s in ok]),
        "without_server_timing": sum(1 for s in samples if "total" not in s.timing),
        "generator_late_ms": ms(late),
        "generator_late_count": sum(1 for v in late if v > LATE_MS),
    }


# ---------------------------------------------------------------------- services


@dataclass
class Services:
    postgres: Any
    redis: Any
    workspace: Path


def start_services() -> Services:
    """A real PostgreSQL and Redis, as the tests start them (blocking; off the loop)."""
    # The tests' helpers: bench runs from the repository root with the test extras.
    from relay.db.embedded_pg import postgres_os_user
    from tests.support.postgres import PostgresServer
    from tests.support.redis_server import RedisServer
    from tests.support.workspace import make_workspace

    workspace = make_workspace(postgres_os_user())
    postgres = PostgresServer(workspace)
    postgres.start()
    redis = RedisServer(workspace)
    redis.start()
    return Services(postgres, redis, workspace)


def stop_services(services: Services) -> None:
    from tests.support.workspace import remove_workspace

    services.redis.destroy()
    services.postgres.destroy()
    remove_workspace(services.workspace)


def relay_env(data_dir: Path, services: Services) -> dict[str, str]:
    """The environment of ``relay serve`` (and ``relay users import``) in this harness."""
    env = base_relay_env(data_dir)
    env.update(
        DATABASE_URL=services.postgres.dsn(),
        REDIS_URL=services.redis.url,
        # Never exchanged, a session is pending until this expires (module docstring).
        RELAY__SESSION__PENDING_TTL_S="5",
        RELAY__LIMITS__GLOBAL_MAX_SESSIONS="100000",
        RELAY__LIMITS__PER_USER_CONCURRENT_SESSIONS="1000",
        RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE="100000",
        RELAY__LIMITS__FAILED_AUTH_PER_MINUTE="100000",
    )
    return env


class AdmissionRelay(RelayProcess):
    """``relay serve`` pinned to one CPU, with this harness's environment (the media
    harness's ``RelayProcess`` for the rest: ready, cpu_seconds, stop)."""

    def __init__(self, env: dict[str, str], cpu: int) -> None:
        # Not RelayProcess.__init__: its environment is the media harness's.
        self.process = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, "-m", "relay", "serve"]
            + ["--port", str(RELAY_PORT)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.pid = self.process.pid


def import_users(count: int, data_dir: Path, env: dict[str, str]) -> list[str]:
    """``relay users import`` of ``count`` candidates; their tokens, in order."""
    source, tokens_file = data_dir / "users.csv", data_dir / "tokens.csv"
    lines = ["email,seconds"] + [f"bench{i}@localhost,100000000" for i in range(count)]
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [sys.executable, "-m", "relay", "users", "import", "--create"]
        + ["--file", str(source), "--tokens-out", str(tokens_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    with tokens_file.open(newline="") as f:
        by_email = {row["email"]: row["token"] for row in csv.DictReader(f)}
    return [by_email[f"bench{i}@localhost"] for i in range(count)]


def db_statements(before: str, after: str, requests: int) -> dict[str, dict[str, float]]:
    """Per query name between two ``/metrics`` readings: statements per request and their
    mean latency (ms, retries included)."""
    counts = [prometheus_samples(t, "relay_db_queries_total") for t in (before, after)]
    sums = [prometheus_samples(t, "relay_db_query_duration_seconds_sum") for t in (before, after)]
    out: dict[str, dict[str, float]] = {}
    for labels, value in counts[1].items():
        n = value - counts[0].get(labels, 0.0)
        if n <= 0:
            continue
        seconds = sums[1].get(labels, 0.0) - sums[0].get(labels, 0.0)
        out[dict(labels).get("query", "?")] = {
            "per_request": round(n / requests, 2),
            "mean_ms": round(1000 * seconds / n, 2),
        }
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------- phases


async def run_admission(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every phase against one relay; one row per phase plus the hit-rate row.

    Raises ValueError for options out of bounds (``Options``)."""
    opts = Options.from_args(args)
    upstream = GaUpstream()
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", UPSTREAM_PORT).start()
    data_dir = Path(tempfile.mkdtemp(prefix="relay-bench-admission-"))
    services = await asyncio.to_thread(start_services)
    relay: AdmissionRelay | None = None
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] = {"harness": "admission", "rate": opts.rate}
    try:
        env = relay_env(data_dir, services)
        cold_users = opts.cold_users or int(opts.rate * opts.phase_s)
        users = ZIPF_USERS + cold_users
        started = time.monotonic()
        tokens = await asyncio.to_thread(import_users, users, data_dir, env)
        import_s = round(time.monotonic() - started, 1)
        zipf_tokens, cold_tokens = tokens[:ZIPF_USERS], tokens[ZIPF_USERS:]
        relay = AdmissionRelay(env, opts.relay_cpu)
        await relay.ready()
        connector = aiohttp.TCPConnector(limit=512)
        timeout = aiohttp.ClientTimeout(total=opts.request_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def phase(name: str, sequence: Sequence[str]) -> dict[str, Any]:
                before = await relay_metrics(http)
                cpu0 = sum(relay.cpu_seconds()) if relay else 0.0
                samples, elapsed = await drive(http, sequence, opts.rate)
                cpu1 = sum(relay.cpu_seconds()) if relay else 0.0
                after = await relay_metrics(http)
                lookups = lookup_delta(
                    prometheus_samples(before, "relay_cache_lookups_total"),
                    prometheus_samples(after, "relay_cache_lookups_total"),
                )
                row = {
                    **base,
                    "section": "latency",
                    "phase": name,
                    **summarise(samples),
                    "elapsed_s": round(elapsed, 1),
                    "cache_lookups": lookups,
                    "cache_hit_rate": hit_rate(lookups),
                    "relay_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / len(sequence), 2),
                    "db_statements": db_statements(before, after, len(sequence)),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                return row

            await phase("cold", cold_tokens)
            rng = np.random.default_rng(opts.seed)
            warm_count = int(opts.rate * opts.phase_s)
            warm = [cold_tokens[int(i)] for i in rng.integers(0, len(cold_tokens), warm_count)]
            await phase("warm", warm)

            # Zipf: from an empty Redis (the local layer answers only when Redis does not).
            await flush_redis(services)
            hit_ttl = CacheConfig().hit_ttl_s  # the shipped default, which the relay runs
            warmup_n = int(opts.rate * opts.zipf_warmup_s)
            window_n = int(opts.rate * opts.zipf_window_s)
            down_n = int(opts.rate * opts.phase_s)
            sequence = zipf_users(ZIPF_USERS, opts.zipf_s, warmup_n + window_n + down_n, opts.seed)
            await phase("zipf_warmup", [zipf_tokens[i] for i in sequence[:warmup_n]])
            window = await phase(
                "zipf", [zipf_tokens[i] for i in sequence[warmup_n : warmup_n + window_n]]
            )
            rows.append(
                {
                    **base,
                    "section": "hit_rate",
                    "users": ZIPF_USERS,
                    "zipf_s": opts.zipf_s,
                    "seed": opts.seed,
                    "warmup_requests": warmup_n,
                    "window_requests": window_n,
                    "distinct_users_so_far": len(set(sequence[: warmup_n + window_n])),
                    "hit_rate": window["cache_hit_rate"],
                    "ideal_hit_rate": round(
                        ideal_hit_rate(sequence[: warmup_n + window_n], warmup_n) or 0.0, 4
                    ),
                    # The long run: a cache whose entries live hit_ttl_s from their miss,
                    # at this rate, with no other invalidation (ttl_steady_hit_rate).
                    "hit_ttl_s": hit_ttl,
                    "steady_hit_rate_at_hit_ttl": round(
                        ttl_steady_hit_rate(ZIPF_USERS, opts.zipf_s, opts.rate, hit_ttl), 4
                    ),
                    "cache_lookups": window["cache_lookups"],
                    "statuses": window["statuses"],
                    "import_s": import_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)

            if opts.long_requests:
                await flush_redis(services)
                rows.append({**base, **await cache_long_run(env, zipf_tokens, opts)})
                print(json.dumps(rows[-1]), flush=True)

            await asyncio.to_thread(services.redis.stop)
            await phase("redis_down", [zipf_tokens[i] for i in sequence[warmup_n + window_n :]])
    finally:
        if relay is not None:
            await relay.stop()
        await runner.cleanup()
        await asyncio.to_thread(stop_services, services)
        shutil.rmtree(data_dir, ignore_errors=True)
    return rows


async def lookup_all(admission: Admission, tokens: list[str], users: Iterator[int]) -> None:
    """One of the long run's concurrent lookers-up: takes users from a shared iterator."""
    for user in users:
        await admission.authenticate(f"Bearer {tokens[user]}")


async def cache_long_run(env: dict[str, str], tokens: list[str], opts: Options) -> dict[str, Any]:
    """The relay's own credential lookup over a long Zipf stream, hit rate per block.

    ``Admission.authenticate`` (the cache, PostgreSQL on a miss, then the fill), built as
    ``relay serve`` builds it from the same settings, with its listener for changes made
    in PostgreSQL (without which entries are kept only ``hit_ttl_without_listener_s``),
    against the same Redis and PostgreSQL, driven from this process as fast as 16
    concurrent lookups go. The HTTP phases cannot reach the steady state: at 25
    requests/s, a Zipf stream over 10,000 users needs about an hour of traffic before
    95 % of its requests come from users already seen.

    Compressing time changes nothing about which lookup hits as long as no entry could
    have expired in the uncompressed run: at ``rate`` the stream would last
    ``long_requests / rate`` seconds, which must be shorter than ``hit_ttl_s`` (checked;
    otherwise this would overstate the hit rate). Credit debits, which evict a user after
    each interview, do not happen here (the HTTP phases never open one either)."""
    settings = load_settings(environ=env)
    equivalent_s = opts.long_requests / opts.rate
    if equivalent_s > settings.cache.hit_ttl_s:
        raise ValueError(
            f"{opts.long_requests} requests at {opts.rate}/s last {equivalent_s:.0f} s, more"
            f" than hit_ttl_s ({settings.cache.hit_ttl_s} s): compressing them would hide"
            " expiries"
        )
    metrics = MetricsRegistry()
    assert settings.database.url
    store = Store(settings.database.url, settings.database, metrics)
    await store.open()
    await store.migrate()  # applied already by relay serve: marks the schema ready
    cache = UserCache(settings.cache, metrics)
    # Listening to PostgreSQL's changes, as relay serve does: only then is a user kept for
    # hit_ttl_s (otherwise for hit_ttl_without_listener_s).
    listener = CacheInvalidationListener(
        settings.database.url,
        cache,
        metrics,
        member="bench-long-run",
        check_interval_s=settings.cluster.heartbeat_interval_s,
        connect_timeout_s=settings.database.connect_timeout_s,
        schema_ready=store.wait_schema_ready,
    )
    listener.start()
    deadline = time.monotonic() + 30
    while listener.state != "up" or listener.flush_pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cache invalidation listener is {listener.state}")
        await asyncio.sleep(0.05)
    admission = Admission(settings, UserRows(store), cache, metrics)
    lookups = metrics.get("relay_cache_lookups_total")
    assert lookups is not None
    sequence = zipf_users(ZIPF_USERS, opts.zipf_s, opts.long_requests, opts.seed + 1)
    blocks: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for at in range(0, len(sequence), opts.long_block):
            block = sequence[at : at + opts.long_block]
            before = lookups.snapshot()
            queue = iter(block)
            await asyncio.gather(*(lookup_all(admission, tokens, queue) for _ in range(16)))
            counted = lookup_delta(by_labels(before), by_labels(lookups.snapshot()))
            blocks.append(
                {
                    "from": at,
                    "requests": len(block),
                    "hit_rate": hit_rate(counted),
                    "ideal_hit_rate": round(
                        ideal_hit_rate(sequence[: at + len(block)], at) or 0.0, 4
                    ),
                }
            )
    finally:
        await listener.close()
        await cache.close()
        await store.close()
    return {
        "section": "hit_rate_long",
        "users": ZIPF_USERS,
        "zipf_s": opts.zipf_s,
        "seed": opts.seed + 1,
        "requests": len(sequence),
        "equivalent_minutes_at_rate": round(equivalent_s / 60, 1),
        "hit_ttl_s": settings.cache.hit_ttl_s,
        "elapsed_s": round(time.monotonic() - started, 1),
        "blocks": blocks,
    }


async def flush_redis(services: Services) -> None:
    """FLUSHALL over a plain socket (the RESP inline form), so the bench needs no client."""
    reader, writer = await asyncio.open_connection(services.redis.host, services.redis.port)
    try:
        writer.write(b"FLUSHALL\r\n")
        await writer.drain()
        reply = await reader.readline()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL: {reply!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# ---------------------------------------------------------------------- the table


def _p(d: dict[str, Any] | None) -> str:
    if not d or d.get("p50") is None:
        return "-"
    return f"{d['p50']} / {d['p99']}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    latency = [r for r in rows if r.get("section") == "latency"]
    hits = [r for r in rows if r.get("section") == "hit_rate"]
    lines = [
        "| phase | rate (req/s) | requests | statuses | server total p50 / p99 (ms) |"
        " relay share (total - upstream) p50 / p99 | cache p50 / p99 | db p50 / p99 |"
        " client p50 / p99 | cache hit rate (lookups) | relay CPU ms / request |"
        " generator late > 5 ms (p99 ms) |",
        "|" + "---|" * 12,
    ]
    for r in latency:
        lookups = ", ".join(f"{k} {v}" for k, v in r.get("cache_lookups", {}).items())
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {r['phase']} | {r['rate']} | {r['requests']} | {statuses} |"
            f" {_p(r['server_total_ms'])} | {_p(r['server_relay_ms'])} |"
            f" {_p(r['cache_ms'])} | {_p(r['db_ms'])} | {_p(r['client_ms'])} |"
            f" {r.get('cache_hit_rate')} ({lookups}) | {r.get('relay_cpu_ms_per_request')} |"
            f" {r['generator_late_count']} ({r['generator_late_ms']['p99']}) |"
        )
    if hits:
        lines += [
            "",
            "| users | Zipf s | warm-up requests | window requests | distinct users seen |"
            " hit rate (relay's counters) | hit rate of a cache that never forgets |"
            " long-run hit rate at this rate, hit_ttl_s (model) |",
            "|" + "---|" * 8,
        ]
        for h in hits:
            lines.append(
                f"| {h['users']} | {h['zipf_s']} | {h['warmup_requests']} |"
                f" {h['window_requests']} | {h['distinct_users_so_far']} | {h['hit_rate']} |"
                f" {h['ideal_hit_rate']} |"
                f" {h.get('steady_hit_rate_at_hit_ttl')} ({h.get('hit_ttl_s')} s) |"
            )
        rate = hits[0]["rate"]
        ttls = sorted({int(hits[0].get("hit_ttl_s") or 300), 300, 3600})
        lines += [
            "",
            f"Long-run hit rate at {rate} requests/s by Zipf s and hit TTL (model, no run):",
            "",
            "| Zipf s | " + " | ".join(f"hit_ttl_s = {t}" for t in ttls) + " |",
            "|" + "---|" * (len(ttls) + 1),
        ]
        for zs in (1.0, 1.1, 1.2):
            cells = " | ".join(f"{ttl_steady_hit_rate(ZIPF_USERS, zs, rate, t):.3f}" for t in ttls)
            lines.append(f"| {zs} | {cells} |")
    for long in (r for r in rows if r.get("section") == "hit_rate_long"):
        lines += [
            "",
            f"The cache-layer long run: {long['requests']} lookups of Zipf s = {long['zipf_s']}"
            f" over {long['users']} users (about {long['equivalent_minutes_at_rate']} minutes"
            f" at {long['rate']} requests/s, within hit_ttl_s = {long['hit_ttl_s']} s), run in"
            f" {long['elapsed_s']} s:",
            "",
            "| lookups | hit rate (relay's counters) | hit rate of a cache that never forgets |",
            "|---|---|---|",
        ]
        for b in long["blocks"]:
            lines.append(
                f"| {b['from']}–{b['from'] + b['requests']} | {b['hit_rate']} |"
                f" {b['ideal_hit_rate']} |"
            )
    if latency:
        lines += [
            "",
            "| phase | database statements per request (mean ms) |",
            "|---|---|",
        ]
        for r in latency:
            db = ", ".join(
                f"{q} {v['per_request']} ({v['mean_ms']})"
                for q, v in r.get("db_statements", {}).items()
            )
            lines.append(f"| {r['phase']} | {db} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


@dataclass(frozen=True)
class Options:
    """The harness's settings; on the command line ``--admission-<name>`` (prefixed, so a
    suite runner can put every harness's options on one parser)."""

    rate: float = 25.0  # requests per second, every phase
    phase_s: float = 20.0  # cold, warm and redis_down
    cold_users: int = 0  # 0: rate x phase_s
    zipf_s: float = 1.1
    zipf_warmup_s: float = 60.0
    zipf_window_s: float = 60.0
    long_requests: int = 100_000  # the cache-layer long run; 0: none
    long_block: int = 10_000
    seed: int = 13
    request_timeout_s: float = 10.0
    relay_cpu: int = 0
    generator_cpu: int = 1

    def __post_init__(self) -> None:
        """Keep it bounded."""
        if not 1 <= self.rate <= 500:
            raise ValueError("rate: 1..500 requests per second")
        for name in ("phase_s", "zipf_warmup_s", "zipf_window_s"):
            if not 1 <= getattr(self, name) <= 300:
                raise ValueError(f"{name}: 1..300 s")
        if not 0.5 <= self.zipf_s <= 3:
            raise ValueError("zipf_s: 0.5..3")
        if not 0 <= self.long_requests <= 500_000 or not 1_000 <= self.long_block <= 100_000:
            raise ValueError("long_requests: 0..500000, long_block: 1000..100000")
        if not 0 <= self.cold_users <= 50_000:
            raise ValueError("cold_users: 0..50000")
        if not 0.1 <= self.request_timeout_s <= 60:
            raise ValueError("request_timeout_s: 0.1..60")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(args, f"admission_{n}") for n in names})


OPTION_HELP = {
    "rate": "requests per second, every phase",
    "phase_s": "seconds of the cold, warm and redis_down phases",
    "cold_users": "users of the cold phase (0: rate x phase-s)",
    "zipf_s": "the Zipf exponent",
    "zipf_warmup_s": "seconds of Zipf requests before the measured window",
    "zipf_window_s": "seconds of the measured Zipf window",
    "long_requests": "lookups of the cache-layer long run (0: none; at most rate x hit_ttl_s)",
    "long_block": "lookups per reported block of the long run",
    "seed": "of the Zipf sequence and the warm phase's draws",
    "request_timeout_s": "per request",
    "relay_cpu": "the CPU relay serve is pinned to",
    "generator_cpu": "the CPU this process is pinned to (standalone runs)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("admission (bench/admission.py)")
    for f in fields(Options):
        default = f.default
        assert isinstance(default, int | float)
        group.add_argument(
            f"--admission-{f.name.replace('_', '-')}",
            dest=f"admission_{f.name}",
            type=type(default),
            default=default,
            help=f"{OPTION_HELP[f.name]} (default {default})",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.admission", description="admission latency and cache hit rate"
    )
    parser.add_argument("--table", metavar="RESULTS", help="only print the table of a results file")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    try:
        options = Options.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    os.sched_setaffinity(0, {options.generator_cpu})
    rows = asyncio.run(run_admission(args))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / time.strftime("admission-%Y%m%d-%H%M%S.jsonl")
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print()
    print(table(rows))
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
