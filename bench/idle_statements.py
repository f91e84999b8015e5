"""The database statements an idle relay starts each second, by name.

Run inside a private network namespace (loopback only), from the repository root:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.idle_statements'

``relay serve`` (as the other benchmarks start it, on its own embedded PostgreSQL) runs
with no interview; after it has settled, the difference of its ``relay_db_queries_total``
counters over ``--window`` seconds is the background work every process does whatever its
load: the webhooks' dispatcher, the cluster heartbeat and its recovery, housekeeping.
Statements are counted, not timed: the count does not depend on the machine's speed, so
two trees compare without a control.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.ga_upstream import UPSTREAM_PORT, GaUpstream
from bench.prometheus import prometheus_samples
from bench.relay_process import RelayProcess, add_user, relay_metrics

# Start-up work (migrations, warming, the first recovery) is over by then.
SETTLE_S = 5.0


def statement_counts(metrics_text: str) -> dict[str, float]:
    """``relay_db_queries_total`` by query name, from a /metrics page."""
    samples = prometheus_samples(metrics_text, "relay_db_queries_total")
    return {dict(labels)["query"]: value for labels, value in samples.items()}


async def measure(window_s: float) -> dict[str, float]:
    """Statements started per second over ``window_s``, by query name."""
    upstream = GaUpstream()
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", UPSTREAM_PORT).start()
    data_dir = Path(tempfile.mkdtemp(prefix="relay-idle-"))
    relay = RelayProcess(data_dir, "fast", 0)
    try:
        await asyncio.to_thread(add_user, data_dir)
        await relay.ready()
        # Waiting for start-up work to end, not for an event: nothing signals it.
        await asyncio.sleep(SETTLE_S)
        async with aiohttp.ClientSession() as http:
            before = statement_counts(await relay_metrics(http))
            await asyncio.sleep(window_s)
            after = statement_counts(await relay_metrics(http))
    finally:
        await relay.stop()
        await runner.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
    rates = {
        name: round((after[name] - before.get(name, 0.0)) / window_s, 2)
        for name in after
        if after[name] != before.get(name, 0.0)
    }
    return dict(sorted(rates.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted")
    args = parser.parse_args()
    rates = asyncio.run(measure(args.window))
    print(f"statements per second: {sum(rates.values()):.2f}")
    for name, rate in rates.items():
        print(f"  {rate:6.2f}  {name}")


if __name__ == "__main__":
    main()
