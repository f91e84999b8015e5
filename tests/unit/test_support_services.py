"""The test services' fault controls do what other tests rely on them to do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from blockbuster import BlockingError

from relay.db.embedded_pg import OsUser, unreachable_dirs
from tests.support import leftovers
from tests.support.postgres import PostgresError, PostgresServer
from tests.support.processes import wait_exited
from tests.support.redis_server import RedisServer
from tests.support.workspace import PREFIX, remove_stale_workspaces

_GONE_TIMEOUT_S = 10.0
_REPO = Path(__file__).resolve().parents[2]


async def _wait_gone(pid: int) -> None:
    await wait_exited(pid, _GONE_TIMEOUT_S)


# ---------------------------------------------------------------------- PostgreSQL
async def test_database_url_is_an_empty_database_of_its_own(
    database_url: str, postgres_server: PostgresServer
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'") == 0
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("test_") and name != "postgres"
        await conn.execute("CREATE TABLE t (x int)")
    finally:
        await conn.close()
    other = await postgres_server.acreate_database("test_other_db")
    try:
        conn = await asyncpg.connect(other)
        try:
            assert await conn.fetchval("SELECT to_regclass('t') IS NULL")
        finally:
            await conn.close()
    finally:
        await postgres_server.adrop_database("test_other_db")
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(other)


async def test_the_shared_server_refuses_to_be_stopped(postgres_server: PostgresServer) -> None:
    with pytest.raises(PostgresError, match="private_postgres"):
        await postgres_server.astop()
    with pytest.raises(PostgresError):
        await postgres_server.arestart()
    assert postgres_server.is_running


async def test_private_postgres_stop_refuses_connections_and_start_keeps_data(
    private_postgres: PostgresServer,
) -> None:
    dsn = private_postgres.dsn()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    await private_postgres.astop()
    assert not private_postgres.is_running
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT 1")  # the server said goodbye to it
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(dsn)
    await private_postgres.astart()
    assert private_postgres.dsn() == dsn  # same port: DSNs handed out stay valid
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT x FROM kept") == 42
    finally:
        await conn.close()


async def test_private_postgres_survives_a_crash(private_postgres: PostgresServer) -> None:
    conn = await asyncpg.connect(private_postgres.dsn())
    await conn.execute("CREATE TABLE committed (x int); INSERT INTO committed VALUES (7)")
    await private_postgres.astop("immediate")
    conn.terminate()
    await private_postgres.astart()  # crash recovery
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        assert await conn.fetchval("SELECT x FROM committed") == 7
    finally:
        await conn.close()


async def test_private_postgres_restart_drops_live_connections(
    private_postgres: PostgresServer,
) -> None:
    conn = await asyncpg.connect(private_postgres.dsn())
    await private_postgres.arestart()
    assert private_postgres.is_running
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


# ---------------------------------------------------------------------- Redis
async def test_paused_redis_accepts_connections_but_answers_only_after_resume(
    redis_server: RedisServer,
) -> None:
    redis_server.pause()
    assert redis_server.is_paused
    # The kernel completes the handshake for the frozen server...
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(redis_server.host, redis_server.port), timeout=2
    )
    writer.write(b"PING\r\n")
    await writer.drain()
    # ...but nothing answers until it is resumed; then the queued command is answered.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readline(), timeout=0.3)
    redis_server.resume()
    assert await asyncio.wait_for(reader.readline(), timeout=2) == b"+PONG\r\n"
    writer.close()
    await writer.wait_closed()


async def test_stopped_redis_refuses_and_comes_back_empty_on_the_same_port(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    client = aioredis.from_url(url)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
    await redis_server.astop()
    assert not redis_server.is_running
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(redis_server.host, redis_server.port)
    await redis_server.astart()
    assert redis_server.url == url
    client = aioredis.from_url(url)
    try:
        assert await client.get("k") is None  # no persistence: a fresh, empty server
    finally:
        await client.aclose()


async def test_a_stopped_paused_redis_is_killed(redis_server: RedisServer) -> None:
    redis_server.pause()
    await redis_server.astop()
    assert not redis_server.is_running and not redis_server.is_paused


# ---------------------------------------------------------------------- clean-up
_ABANDONING_SESSION = """
import json, os, sys
from pathlib import Path
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer
root = Path(sys.argv[1])
pg, redis = PostgresServer(root), RedisServer(root)
pg.start()
redis.start()
print(json.dumps([pg._process.pid, redis._process.pid]), flush=True)
os._exit(1)  # like a killed test session: no finalizer runs
"""


async def test_servers_die_with_a_session_that_dies_without_cleaning_up(
    traversable_tmp_path: Path,
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ABANDONING_SESSION,
        str(traversable_tmp_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=_REPO,
    )
    out, _ = await asyncio.wait_for(child.communicate(), timeout=60)
    pids = json.loads(out)
    assert len(pids) == 2
    for pid in pids:
        await _wait_gone(pid)


async def test_stale_workspaces_are_removed_and_their_postgres_stopped(
    traversable_tmp_path: Path,
) -> None:
    parent = traversable_tmp_path
    finished = await asyncio.create_subprocess_exec("true")
    await finished.wait()  # a pid that no longer exists
    stale = parent / f"{PREFIX}{finished.pid}-x"
    live = parent / f"{PREFIX}{os.getpid()}-y"
    for workspace in (stale, live):
        workspace.mkdir()
        workspace.chmod(0o711)
    orphan = await asyncio.to_thread(PostgresServer, stale)
    await orphan.astart()
    process = orphan._process
    assert process is not None
    await asyncio.to_thread(remove_stale_workspaces, parent)
    assert await asyncio.to_thread(process.wait, _GONE_TIMEOUT_S) == 0  # stopped, not killed
    assert not stale.exists() and live.exists()
    await asyncio.to_thread(orphan.destroy)


# ---------------------------------------------------------------------- environment
def test_session_temporary_files_stay_under_pytest_basetemp(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    base = tmp_path_factory.getbasetemp()
    assert Path(tempfile.gettempdir()).is_relative_to(base)
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    assert runtime.is_relative_to(base)
    assert runtime.stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------------- blocking guard
_NOBODY = OsUser("nobody", 65534, 65534)


async def test_blocking_relay_code_on_the_loop_fails() -> None:
    with pytest.raises(BlockingError):
        unreachable_dirs(Path.cwd(), _NOBODY)  # os.stat of every parent directory


async def test_blocking_server_methods_on_the_loop_fail(postgres_server: PostgresServer) -> None:
    with pytest.raises(BlockingError):  # psql runs in a subprocess: always a blocking wait
        postgres_server.drop_database("test_never_created")


async def test_blocking_calls_in_a_worker_thread_are_fine() -> None:
    assert await asyncio.to_thread(unreachable_dirs, Path("/"), _NOBODY) == []


@pytest.mark.allow_blocking
async def test_allow_blocking_opts_out() -> None:
    assert unreachable_dirs(Path("/"), _NOBODY) == []


# ---------------------------------------------------------------------- leftover processes
def test_left_running_finds_children_and_marked_orphans_but_not_older_processes() -> None:
    before = leftovers.snapshot()
    mark = os.environ[leftovers.RUN_MARK_ENV]  # this run's, set by tests/conftest.py
    child = subprocess.Popen(["sleep", "60"])
    # An orphan: its parent (sh) exits at once, so its parent becomes PID 1 (or a
    # subreaper); only the mark in its environment ties it to this run.
    orphan_pid = int(
        subprocess.run(
            ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    try:
        found = {info.pid for info in leftovers.left_running(before, mark)}
        assert {child.pid, orphan_pid} <= found
        # Another run's mark, and processes that were already there, are not this run's.
        assert orphan_pid not in {i.pid for i in leftovers.left_running(before, "other-run")}
        assert not found & set(before)
    finally:
        child.kill()
        child.wait()
        os.kill(orphan_pid, signal.SIGKILL)
    assert child.pid not in {info.pid for info in leftovers.left_running(before, mark)}
