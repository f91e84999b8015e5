"""The command line as a user runs it: `relay serve` prints a URL and a working token;
`relay users add` from the same folder makes a token that the running relay accepts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from relay.cli import _parser
from relay.db.migrate import MIGRATION_LOCK_ID
from tests.integration.relay_harness import NOTICE_CONFIRMED
from tests.support.relay_cli import (
    foreign_free_environ,
    read_banner,
    run_relay,
    start_serving,
    stop_serving,
)

OPERATOR = "cli-test-operator-token-0123456789"


def _env(data_dir: Path) -> dict[str, str]:
    env = foreign_free_environ()
    env["RELAY__SERVER__DATA_DIR"] = str(data_dir)
    env["RELAY__SERVER__DRAIN_TIMEOUT_S"] = "2"
    env["RELAY_OPERATOR_TOKEN"] = OPERATOR
    return env


@contextlib.asynccontextmanager
async def _serving(
    tmp_path: Path,
    extra_env: dict[str, str],
    *args: str,
    banner: list[str] | None = None,
) -> AsyncIterator[tuple[str, str, Path]]:
    """`relay serve --port 0` in a folder: (url, demo token, data dir); SIGTERM → exit 0.

    ``banner`` (if given) receives the lines printed at start."""
    data_dir = tmp_path / "state"
    proc = await start_serving(
        "--port", "0", *args, env={**_env(data_dir), **extra_env}, cwd=tmp_path
    )
    lines: list[str] = [] if banner is None else banner
    try:
        url, token = await read_banner(proc, lines)
        yield url, token, data_dir
    finally:
        await stop_serving(proc)
    assert proc.returncode == 0, lines


@pytest.fixture
async def served(traversable_tmp_path: Path) -> AsyncIterator[tuple[str, str, Path]]:
    async with _serving(traversable_tmp_path, {}) as running:
        yield running


async def test_serve_prints_url_and_token_that_opens_a_session(
    served: tuple[str, str, Path],
) -> None:
    url, token, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + "api/realtime-session",
            headers={"Authorization": f"Bearer {token}"},
            json=NOTICE_CONFIRMED,
        ) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            assert body["request_id"].startswith("req_")
            assert body["processing_time_ms"] > 0
            # Loopback without a key: the simulator, and the candidate is told.
            assert body["simulated"] is True
        async with http.get(url + "readyz") as resp:
            ready = await resp.json()
            assert resp.status == 200, ready
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        async with http.get(url + "api/stats", headers=operator) as resp:
            stats = await resp.json()
            assert resp.status == 200, stats
            assert stats["upstream"]["simulated"] is True
            assert stats["process"]["event_loop"] == "uvloop"  # server.event_loop
        async with http.get(url + "api/stats") as resp:
            assert resp.status == 401
        async with http.get(url) as resp:
            assert resp.status == 200
            assert "Voice interview" in await resp.text()


async def test_serve_on_the_standard_library_event_loop_when_configured(
    traversable_tmp_path: Path,
) -> None:
    extra = {"RELAY__SERVER__EVENT_LOOP": "asyncio"}
    async with (
        _serving(traversable_tmp_path, extra) as (url, token, _),
        aiohttp.ClientSession() as http,
    ):
        auth = {"Authorization": f"Bearer {token}"}
        async with http.post(
            url + "api/realtime-session", headers=auth, json=NOTICE_CONFIRMED
        ) as resp:
            assert resp.status == 201, await resp.text()
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        async with http.get(url + "api/stats", headers=operator) as resp:
            stats = await resp.json()
    assert stats["process"]["event_loop"] == "asyncio"


async def test_with_json_logs_every_start_up_line_is_a_json_entry(
    traversable_tmp_path: Path,
) -> None:
    """A log shipper reading the relay's output (stdout and stderr in one journal) parses
    every line: with log_format json the banner is JSON entries too, and its demo token
    still opens a session."""
    lines: list[str] = []
    extra = {"RELAY__SERVER__LOG_FORMAT": "json"}
    async with (
        _serving(traversable_tmp_path, extra, banner=lines) as (url, token, _),
        aiohttp.ClientSession() as http,
        http.post(
            url + "api/realtime-session",
            headers={"Authorization": f"Bearer {token}"},
            json=NOTICE_CONFIRMED,
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
    entries = [json.loads(line) for line in lines]
    assert {e["logger"] for e in entries} == {"relay.banner"}
    messages = [e["message"] for e in entries]
    assert any(m.startswith("Interview relay listening on ") for m in messages), messages
    assert any(m.startswith("Operator dashboard: ") for m in messages), messages
    assert messages[-1].endswith(token)


async def test_serve_without_a_key_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    code, out, err = await run_relay(
        "serve", "--host", "0.0.0.0", "--port", "0", env=_env(tmp_path / "state"), cwd=tmp_path
    )
    assert code == 2, (out, err)
    assert "upstream.api_key" in err and "--simulate" in err and "Traceback" not in err
    assert "listening" not in out


async def test_serve_with_a_short_operator_token_refuses_to_start(tmp_path: Path) -> None:
    # The token an outside probe guessed in 17 requests.
    env = {**_env(tmp_path / "state"), "RELAY_OPERATOR_TOKEN": "q"}
    code, out, err = await run_relay("serve", "--port", "0", env=env, cwd=tmp_path)
    assert code == 2, (out, err)
    assert "server.operator_token" in err and "32 characters" in err, err
    assert "secrets.token_urlsafe" in err and "Traceback" not in err
    assert "listening" not in out


async def test_explicit_simulation_off_loopback_is_announced_to_operator_and_candidate(
    traversable_tmp_path: Path,
) -> None:
    banner: list[str] = []
    async with (
        _serving(traversable_tmp_path, {}, "--host", "0.0.0.0", "--simulate", banner=banner) as (
            url,
            token,
            _,
        ),
        aiohttp.ClientSession() as http,
    ):
        assert any(line.startswith("SIMULATED upstream") for line in banner), banner
        # The banner names the address actually bound (all interfaces, the real port), then
        # the URL that opens the page from this machine.
        port = url.rstrip("/").rsplit(":", 1)[1]
        assert f"listening on http://0.0.0.0:{port}/ (every IPv4 interface" in banner[0], banner
        assert f"Operator dashboard: http://127.0.0.1:{port}/stats" in banner, banner
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(
            url + "api/realtime-session", headers=headers, json=NOTICE_CONFIRMED
        ) as resp:
            body = await resp.json()
            assert resp.status == 201 and body["simulated"] is True, body
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        async with http.get(url + "api/stats", headers=operator) as resp:
            assert (await resp.json())["upstream"]["simulated"] is True


async def test_users_add_and_revoke_share_the_served_database(
    served: tuple[str, str, Path], traversable_tmp_path: Path
) -> None:
    tmp_path = traversable_tmp_path
    url, _, data_dir = served
    env = _env(data_dir)
    code, out, err = await run_relay(
        "users", "add", "--email", "c@example.test", "--seconds", "90", env=env, cwd=tmp_path
    )
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("rt_") and out.count(token) == 1
    code, _, err = await run_relay(
        "users", "add", "--email", "c@example.test", env=env, cwd=tmp_path
    )
    assert code == 1 and "already exists" in err

    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(
            url + "api/realtime-session", headers=headers, json=NOTICE_CONFIRMED
        ) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            assert body["max_duration_seconds"] == 90

    code, out, err = await run_relay(
        "users", "revoke", "--email", "c@example.test", env=env, cwd=tmp_path
    )
    assert code == 0 and "revoked" in out, err
    code, _, err = await run_relay(
        "users", "revoke", "--email", "nobody@example.test", env=env, cwd=tmp_path
    )
    assert code == 1 and "no user" in err
    code, out, err = await run_relay("db", "migrate", env=env, cwd=tmp_path)
    assert code == 0 and "up to date" in out, err


async def test_a_configured_database_gets_no_demo_user_unless_asked(
    traversable_tmp_path: Path, database_url: str
) -> None:
    """server.create_demo_user = "auto" (the default): the demo user only with the embedded
    PostgreSQL (the `served` tests above); a configured database (production, a cluster)
    gets none, and no token is printed."""
    env = {**_env(traversable_tmp_path / "state"), "DATABASE_URL": database_url}
    proc = await start_serving("--port", "0", env=env, cwd=traversable_tmp_path)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not any("Operator dashboard" in line for line in lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), 90)
            assert raw, lines
            lines.append(raw.decode())
    finally:
        await stop_serving(proc)
    # A stop during the banner drains after it: the rest of it is there.
    lines += (await proc.stdout.read()).decode().splitlines()
    assert proc.returncode == 0, lines
    assert not any("Demo candidate" in line or line.startswith("rt_") for line in lines), lines
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
    finally:
        await conn.close()


async def test_ctrl_c_during_start_up_stops_what_started_and_exits_130_quietly(
    traversable_tmp_path: Path,
) -> None:
    """SIGINT while `serve` is still starting (its database up, not yet listening): the
    embedded PostgreSQL is stopped, one line says so, no traceback, exit status 130."""
    proc = await start_serving(
        "--port", "0",
        env=_env(traversable_tmp_path / "state"),
        cwd=traversable_tmp_path,
        log_piped=True,
    )  # fmt: skip
    assert proc.stderr is not None
    stderr = proc.stderr
    seen: list[str] = []

    async def until_database_ready() -> None:
        while True:
            raw = await stderr.readline()
            assert raw, f"relay exited early: {seen}"
            seen.append(raw.decode())
            if "database ready" in seen[-1]:
                return

    try:
        await asyncio.wait_for(until_database_ready(), 90)
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(asyncio.gather(stderr.read(), proc.wait()), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(seen) + rest.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and text.rstrip().endswith("interrupted"), text
    assert "stopped the embedded PostgreSQL" in text, text


async def test_bad_configuration_exits_with_a_clear_message(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    env["RELAY__SERVER__PORT"] = "not-a-port"
    code, _, err = await run_relay("serve", env=env, cwd=tmp_path)
    assert code == 2
    assert "server.port" in err and "Traceback" not in err


async def test_serve_against_a_separately_run_simulator_in_the_beta_dialect(
    traversable_tmp_path: Path,
) -> None:
    sim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "simulate",
        "--port",
        "0",
        "--dialect",
        "beta",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert sim.stdout is not None
        first = (await asyncio.wait_for(sim.stdout.readline(), timeout=30)).decode()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+/v1)", first)
        assert match, first
        control = ""
        while not control:
            line = (await asyncio.wait_for(sim.stdout.readline(), timeout=30)).decode()
            assert line, "no control token printed"
            if found := re.match(r"control API /_sim/\*: Bearer (\S+)$", line.strip()):
                control = found[1]
        async with aiohttp.ClientSession() as http:
            faults = match[1].removesuffix("/v1") + "/_sim/faults"
            async with http.get(faults) as resp:
                assert resp.status == 401
            async with http.get(faults, headers={"Authorization": f"Bearer {control}"}) as resp:
                assert resp.status == 200
        env = {
            "OPENAI_BASE_URL": match[1],
            "OPENAI_API_KEY": "sk-operator-key-0123456789abcdef",
            "RELAY__UPSTREAM__DIALECT": "beta",
        }
        async with (
            _serving(traversable_tmp_path, env) as (url, token, _),
            aiohttp.ClientSession() as http,
        ):
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(
                url + "api/realtime-session", headers=headers, json=NOTICE_CONFIRMED
            ) as resp:
                body = await resp.json()
                assert resp.status == 201, body
                assert body["model"] == "gpt-4o-realtime-preview-2024-12-17"
            operator = {"Authorization": f"Bearer {OPERATOR}"}
            async with http.get(url + "api/stats", headers=operator) as resp:
                stats = await resp.json()
                upstream = stats["upstream"]
                assert {
                    k: upstream[k]
                    for k in ("dialect", "model", "simulated", "state", "model_currency")
                } == {
                    "dialect": "beta",
                    "model": "gpt-4o-realtime-preview-2024-12-17",
                    "simulated": False,
                    "state": "up",
                    "model_currency": [],
                }
                assert upstream["last_outcome"]["stage"] == "mint"
    finally:
        sim.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.wait(), timeout=30) == 0


async def test_unreachable_embedded_database_folder_exits_with_a_message(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        return  # only root runs PostgreSQL as another user, who cannot enter tmp_path
    code, _, err = await run_relay(
        "users",
        "add",
        "--email",
        "x@example.test",
        "--create",
        env=_env(tmp_path / "state"),
        cwd=tmp_path,
    )
    assert code == 3
    assert err.startswith("embedded PostgreSQL:") and "Traceback" not in err


SIM_CONTROL = "sim-control-from-env-0123456789abcdef"


def test_the_simulator_control_token_has_no_command_line_option() -> None:
    # A process's argv is readable by every local user (ps); its environment is not.
    with pytest.raises(SystemExit) as refused:
        _parser().parse_args(["simulate", "--control-token", SIM_CONTROL])
    assert refused.value.code == 2
    assert "RELAY_SIM_CONTROL_TOKEN" in _parser().format_help()


async def test_the_simulator_control_token_comes_from_the_environment(tmp_path: Path) -> None:
    secret = SIM_CONTROL
    sim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "simulate",
        "--port",
        "0",
        env={**_env(tmp_path), "RELAY_SIM_CONTROL_TOKEN": secret},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert sim.stdout is not None
        printed: list[str] = []
        while not any(line.startswith("control API") for line in printed):
            line = (await asyncio.wait_for(sim.stdout.readline(), timeout=30)).decode()
            assert line, f"no control line printed: {printed}"
            printed.append(line.strip())
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", printed[0])
        assert match, printed
        assert printed[-1] == "control API /_sim/*: Bearer <the given control token>"
        assert secret not in "\n".join(printed)
        faults = match[1] + "/_sim/faults"
        async with aiohttp.ClientSession() as http:
            async with http.get(faults, headers={"Authorization": "Bearer other"}) as resp:
                assert resp.status == 401
            async with http.get(faults, headers={"Authorization": f"Bearer {secret}"}) as resp:
                assert resp.status == 200
    finally:
        sim.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.wait(), timeout=30) == 0


async def test_db_migrate_behind_a_held_lock_gives_up_with_a_message(
    tmp_path: Path, database_url: str
) -> None:
    env = {
        **_env(tmp_path / "state"),
        "DATABASE_URL": database_url,
        "RELAY__DATABASE__MIGRATION_TIMEOUT_S": "0.5",
    }
    blocker = await asyncpg.connect(database_url)
    try:
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        code, _, err = await run_relay("db", "migrate", env=env, cwd=tmp_path)
    finally:
        await blocker.close()
    assert code == 3, err
    assert "database migrations: migrations took over 0.5 s" in err and "Traceback" not in err
