"""`relay serve --workers 2` on the embedded defaults: one port, two full relays sharing
one embedded PostgreSQL; sessions spread over both and go live on each; the cluster view
lists both workers; SIGTERM drains both."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from relay.db.embedded_pg import start_embedded_postgres
from tests.integration.cluster_helpers import (
    Client,
    RelayProcess,
    fresh_connections,
    poll,
    relay_env,
    sql,
)
from tests.integration.media_helpers import BrowserPeer
from tests.support.processes import wait_exited

pytestmark = pytest.mark.slow

# Sessions tried before both workers must have one (each lands on either with p = 1/2).
MAX_TRIES = 20


async def test_two_workers_share_one_port_and_one_embedded_database(
    traversable_tmp_path: Path,
) -> None:
    data_dir = traversable_tmp_path / "state"
    env = relay_env(
        data_dir,
        {
            "RELAY__SERVER__CREATE_DEMO_USER": "true",
            "RELAY__LIMITS__PER_USER_CONCURRENT_SESSIONS": "50",
            "RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE": "1000",
            # The demo user's 1800 s are shared by every session it runs at once.
            "RELAY__SESSION__MAX_DURATION_S": "60",
        },
    )
    env.pop("RELAY__CLUSTER__STATE_KEY")  # the embedded default: generated into data_dir
    relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    browsers: list[BrowserPeer] = []
    # Attaching to the embedded server keeps it up after the relay stops, to read the rows.
    embedded = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        assert any("(2 workers)" in line for line in relay.lines)

        async def demo_token() -> str | None:
            return next((line for line in relay.lines if line.startswith("rt_")), None)

        token = await poll(demo_token, 30, "the demo token")
        assert (data_dir / "state.key").stat().st_mode & 0o777 == 0o600

        async with fresh_connections() as http:
            client = Client(http, relay.url)

            # A worker that dies is started again, under the same member id.
            async def two_workers() -> dict[str, int] | None:
                view = await client.cluster()
                pids = {m["id"]: m["pid"] for m in view["instances"]}
                return pids if len(pids) == 2 else None

            before = await poll(two_workers, 15, "two workers in the cluster view")
            victim = sorted(before)[1]
            os.kill(before[victim], signal.SIGKILL)

            async def restarted() -> bool:
                now = await two_workers()
                return bool(now and now[victim] != before[victim])

            await poll(restarted, 60, f"{victim} to be started again")

            live_on: dict[str, str] = {}  # member -> a session live there
            for _ in range(MAX_TRIES):
                status, created, _ = await client.create(token)
                assert status == 201, created
                # No OpenAI key: the workers' one shared simulator, and candidates are told.
                assert created["simulated"] is True
                sid = created["session_id"]
                browser, _ = await client.go_live(token, sid)
                browsers.append(browser)

                async def holder(sid: str = sid) -> str | None:
                    view = await client.cluster()
                    return next(
                        (
                            s["member"]
                            for s in view["sessions"]
                            if s["session_id"] == sid and s["state"] == "active"
                        ),
                        None,
                    )

                member = await poll(holder, 15, f"session {sid} to be active")
                live_on.setdefault(member, sid)
                if len(live_on) == 2:
                    break
            assert len(live_on) == 2, f"every session landed on {list(live_on)}"

            view = await client.cluster()
            workers = sorted(m["id"] for m in view["instances"])
            port = relay.url.rstrip("/").rsplit(":", 1)[1]
            host = os.uname().nodename
            assert workers == [f"{host}:{port}/w0", f"{host}:{port}/w1"]
            assert sorted(live_on) == workers
            pids = [m["pid"] for m in view["instances"]]
            assert relay.pid not in pids and len(set(pids)) == 2

        # SIGTERM drains both workers, then the supervisor exits cleanly.
        assert await relay.stop() == 0
        for pid in pids:
            await wait_exited(pid, 10)
        rows = await sql(
            embedded.dsn,
            "SELECT state, end_reason, relay_instance FROM interview_sessions"
            " WHERE id = ANY($1::text[])",
            list(live_on.values()),
        )
        assert sorted(r["relay_instance"] for r in rows) == workers
        assert {(r["state"], r["end_reason"]) for r in rows} == {("ended", "relay_shutdown")}
        left = await sql(embedded.dsn, "SELECT count(*) AS n FROM relay_members")
        assert left[0]["n"] == 0
    finally:
        for browser in browsers:
            await browser.close()
        await relay.stop()
        await asyncio.to_thread(embedded.stop)
