"""The built-in simulator runs in a process of its own, never inside the relay's: `relay
serve` without an OpenAI key starts it as a child (a free loopback port, its control token
in its environment only), serves once it listens, talks to it over HTTP and WebRTC as to
OpenAI, and never imports it; the child ends with the relay however the relay ends
(tests/integration/test_process_lifetimes.py); `--workers N` shares one among the workers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from relay.upstream.simulator_process import (
    CONTROL_TOKEN_ENV,
    SIMULATOR_API_KEY,
    SimulatorSpec,
    SimulatorStartError,
    start_simulator_process,
)
from tests.integration.cluster_helpers import RelayProcess, relay_env
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, wait_until
from tests.integration.relay_harness import NOTICE_CONFIRMED
from tests.support import leftovers
from tests.support.processes import wait_exited
from tests.support.relay_cli import foreign_free_environ, read_banner, stop_serving

OPERATOR = "simulator-process-operator-token"
CHILD = "relay.upstream.simulator.child"
# `relay serve`, then (once it has returned) the relay modules of the simulator that the
# process imported, as one JSON line.
AUDITED_RELAY = """
import json, sys
from relay.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[:3] == ["relay", "upstream", "simulator"])
print("simulator modules: " + json.dumps(loaded), flush=True)
sys.exit(code)
"""
SIMULATOR_AT = re.compile(r"built-in simulator at (http://127\.0\.0\.1:\d+)/v1")


def _simulators_under(root: int) -> dict[int, leftovers.ProcessInfo]:
    processes = leftovers.snapshot()
    return {
        pid: processes[pid]
        for pid in leftovers.descendants(root, processes)
        if CHILD in processes[pid].command and processes[pid].state != "Z"
    }


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


async def test_serve_without_a_key_runs_the_simulator_as_a_child_and_never_imports_it(
    traversable_tmp_path: Path, database_url: str
) -> None:
    env = foreign_free_environ()
    env |= {
        "RELAY__SERVER__DATA_DIR": str(traversable_tmp_path / "state"),
        "RELAY__SERVER__DRAIN_TIMEOUT_S": "2",
        "RELAY_OPERATOR_TOKEN": OPERATOR,
        "DATABASE_URL": database_url,
        # A configured database gets no demo user unless asked for (server.create_demo_user).
        "RELAY__SERVER__CREATE_DEMO_USER": "true",
    }
    log_path = traversable_tmp_path / "relay.log"
    peer = BrowserPeer()
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            AUDITED_RELAY,
            "serve",
            "--port",
            "0",
            env=env,
            cwd=traversable_tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    try:
        banner: list[str] = []
        url, token = await read_banner(proc, banner)
        # The newcomer's output is today's: the SIMULATED line among the banner's.
        assert "SIMULATED upstream: candidates talk to the built-in simulator, not OpenAI." in (
            banner
        )
        simulators = await asyncio.to_thread(_simulators_under, proc.pid)
        assert len(simulators) == 1, simulators
        (child,) = simulators.values()
        assert child.ppid == proc.pid
        # A session of its own: a Ctrl-C in the terminal reaches the relay, which drains
        # its live interviews while the simulator still serves them.
        assert os.getsid(child.pid) == child.pid
        child_env = await asyncio.to_thread(_environment, child.pid)
        control_token = child_env[CONTROL_TOKEN_ENV]
        assert len(control_token) >= 32
        assert control_token not in child.command  # its environment, never its arguments
        # None of the relay's own settings and secrets reach it.
        assert not {"RELAY_OPERATOR_TOKEN", "DATABASE_URL"} & child_env.keys()
        match = SIMULATOR_AT.search(await asyncio.to_thread(log_path.read_text))
        assert match, "the SIMULATED warning names the simulator's URL"
        simulator_root = match[1]

        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + "api/realtime-session", headers=auth, json=NOTICE_CONFIRMED
            ) as resp:
                created = await resp.json()
                assert resp.status == 201, created
                assert created["simulated"] is True
            async with http.post(
                url + "api/webrtc-exchange",
                headers=auth,
                json={
                    "session_id": created["session_id"],
                    "type": "offer",
                    "sdp": await peer.offer(),
                },
            ) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
            await peer.accept(answer["sdp"])
            await peer.wait_connected()
            # The interview's upstream call is that child's (its control API, its token).
            async with http.get(
                simulator_root + "/_sim/calls",
                headers={"Authorization": f"Bearer {control_token}"},
            ) as resp:
                calls = await resp.json()
                assert resp.status == 200, calls
            assert len(calls["calls"]) == 1, calls
            async with http.get(
                url + "api/stats", headers={"Authorization": f"Bearer {OPERATOR}"}
            ) as resp:
                assert (await resp.json())["upstream"]["simulated"] is True

        await stop_serving(proc)
        assert proc.returncode == 0
        assert proc.stdout is not None
        rest = (await proc.stdout.read()).decode().splitlines()
        audit = next(line for line in rest if line.startswith("simulator modules: "))
        assert json.loads(audit.removeprefix("simulator modules: ")) == []
        await wait_exited(child.pid, 10)
    finally:
        await peer.close()
        await stop_serving(proc)


async def test_a_relay_killed_with_sigkill_takes_its_simulator_with_it(
    traversable_tmp_path: Path, database_url: str
) -> None:
    env = relay_env(traversable_tmp_path / "state", {"DATABASE_URL": database_url})
    relay = await RelayProcess.start(traversable_tmp_path, env)
    try:
        simulators = await asyncio.to_thread(_simulators_under, relay.pid)
        assert len(simulators) == 1, simulators
        os.kill(relay.pid, signal.SIGKILL)  # no shut-down sequence at all
        for pid in simulators:
            await wait_exited(pid, 10)
    finally:
        await relay.stop()


async def test_a_relay_in_a_process_reaches_its_simulator_only_over_http(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    simulator = relay.services.simulator
    assert simulator is not None
    assert simulator.pid in await asyncio.to_thread(_simulators_under, os.getpid())
    async with aiohttp.ClientSession() as http:
        faults = simulator.root_url + "/_sim/faults"
        async with http.get(faults) as resp:
            assert resp.status == 401
        bearer = {"Authorization": f"Bearer {simulator.control_token}"}
        async with http.get(faults, headers=bearer) as resp:
            # Started for the GA dialect: the beta shape is refused, as OpenAI does.
            assert (await resp.json())["beta_disabled"] is True
    token = await relay.add_user()
    status, body, _ = await relay.create_session(token)
    assert status == 201 and body["simulated"] is True, body


async def test_a_simulator_that_dies_is_reported_and_the_relay_still_closes(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    simulator = relay.services.simulator
    assert simulator is not None
    os.kill(simulator.pid, signal.SIGKILL)
    await wait_until(
        lambda: any(
            f"simulator (pid {simulator.pid}) exited with status -9" in r.getMessage()
            and r.levelname == "ERROR"
            for r in caplog.records
        ),
        10,
        "the simulator's death in the log",
    )
    await relay.client.close()  # closing a relay whose simulator is gone is no error
    assert simulator.returncode == -9


async def test_the_relays_memory_bounds_reach_its_simulator(make_relay: MakeRelay) -> None:
    """The relay keeps its simulator's history small (relay.upstream.simulator_process):
    with a global cap of one session, it remembers two ephemeral keys, not a thousand."""
    relay = await make_relay(
        overrides={"upstream": {"simulate": True}, "limits": {"global_max_sessions": 1}}
    )
    simulator = relay.services.simulator
    assert simulator is not None
    standard = {"Authorization": f"Bearer {SIMULATOR_API_KEY}"}
    async with aiohttp.ClientSession() as http:
        keys = []
        for _ in range(3):
            async with http.post(
                simulator.base_url + "/realtime/client_secrets", headers=standard, json={}
            ) as resp:
                assert resp.status == 200, await resp.text()
                keys.append((await resp.json())["value"])

        async def offer_with(key: str) -> int:
            async with http.post(
                simulator.base_url + "/realtime/calls",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
                data="not sdp",
            ) as resp:
                return resp.status

        assert await offer_with(keys[0]) == 401  # forgotten: the oldest of three
        assert await offer_with(keys[2]) == 400  # remembered: its offer is then checked


async def test_a_simulator_that_cannot_start_is_a_clear_error() -> None:
    with pytest.raises(SimulatorStartError, match="exited with status 1 before listening"):
        await start_simulator_process(SimulatorSpec(log_level="NOT-A-LEVEL"))
    with pytest.raises(SimulatorStartError, match="not listening after"):
        await start_simulator_process(SimulatorSpec(), start_timeout_s=0.001)


@pytest.mark.slow
async def test_workers_share_one_simulator_that_ends_with_their_supervisor(
    traversable_tmp_path: Path, database_url: str
) -> None:
    env = relay_env(traversable_tmp_path / "state", {"DATABASE_URL": database_url})
    relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    try:
        simulators = await asyncio.to_thread(_simulators_under, relay.pid)
        assert len(simulators) == 1, simulators
        (child,) = simulators.values()
        assert child.ppid == relay.pid  # the supervisor's, none of the workers'
        os.kill(relay.pid, signal.SIGKILL)
        await wait_exited(child.pid, 10)
    finally:
        await relay.stop()
