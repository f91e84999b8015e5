"""The embedded PostgreSQL shared by relay processes started from one folder.

Each "relay process" here is a child Python process that starts (or attaches to) the
embedded server, reports the postmaster's pid and the DSN, then follows commands on stdin:
``stop`` (detach), ``exit`` (leave; the exit hook detaches), or it is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from relay.db.embedded_pg import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    as_os_user,
    postgres_bin_dir,
    postgres_os_user,
    start_embedded_postgres,
)
from relay.private_files import private_dir
from tests.support.processes import exited, wait_exited
from tests.support.workspace import stop_postgres_under

_REPO = Path(__file__).resolve().parents[2]
_TIMEOUT_S = 60.0

_RELAY_PROCESS = """
import json, os, sys
from pathlib import Path
from relay.db.embedded_pg import start_embedded_postgres
pg = start_embedded_postgres(Path(sys.argv[1]))
print(json.dumps({"pid": pg.pid, "dsn": pg.dsn, "xdg": os.environ["XDG_RUNTIME_DIR"]}), flush=True)
for line in sys.stdin:
    if line.strip() == "stop":
        pg.stop()
        print("stopped", flush=True)
    elif line.strip() == "exit":
        break
"""


@dataclass
class RelayProcess:
    process: asyncio.subprocess.Process
    pid: int  # the postmaster's, as this process saw it
    dsn: str
    xdg: str

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def exit(self) -> int:
        await self.command("exit")
        return await asyncio.wait_for(self.process.wait(), _TIMEOUT_S)

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait()


StartRelay = Callable[..., Awaitable[RelayProcess]]


@pytest.fixture
async def start_relay(traversable_tmp_path: Path) -> AsyncIterator[StartRelay]:
    """Starts relay processes; kills any left and stops their server after the test."""
    started: list[RelayProcess] = []

    async def start(data_dir: Path, env: dict[str, str] | None = None) -> RelayProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RELAY_PROCESS,
            str(data_dir),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=_REPO,
            env=env,
        )
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), _TIMEOUT_S)
        if not line:
            err = await process.stderr.read()
            pytest.fail(f"relay process failed: {err.decode()}")
        info = json.loads(line)
        relay = RelayProcess(process, info["pid"], info["dsn"], info["xdg"])
        started.append(relay)
        return relay

    try:
        yield start
    finally:
        for relay in started:
            if relay.process.returncode is None:
                await relay.kill()
        await asyncio.to_thread(stop_postgres_under, traversable_tmp_path)


async def _running(pid: int) -> bool:
    return not await asyncio.to_thread(exited, pid)


async def _wait_gone(pid: int) -> None:
    await wait_exited(pid, _TIMEOUT_S)


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_a_second_process_attaches_and_leaving_does_not_stop_the_server(
    traversable_tmp_path: Path, start_relay: StartRelay
) -> None:
    data_dir = traversable_tmp_path / "state"
    serve = await start_relay(data_dir)
    users_add = await start_relay(data_dir)
    assert users_add.pid == serve.pid and users_add.dsn == serve.dsn
    await _execute(users_add.dsn, "CREATE TABLE users (email text); INSERT INTO users VALUES ('a')")

    assert await users_add.exit() == 0
    assert await _running(serve.pid)
    assert await _fetchval(serve.dsn, "SELECT email FROM users") == "a"

    await serve.command("stop")  # the last user shuts it down
    await _wait_gone(serve.pid)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    assert await serve.exit() == 0


async def test_simultaneous_first_starts_share_one_new_server(
    traversable_tmp_path: Path, start_relay: StartRelay
) -> None:
    data_dir = traversable_tmp_path / "state"
    processes = await asyncio.gather(*(start_relay(data_dir) for _ in range(3)))
    assert len({p.pid for p in processes}) == 1
    assert [p.name for p in data_dir.iterdir() if p.name.startswith("pgdata")] == ["pgdata"]
    assert await _fetchval(processes[0].dsn, "SELECT 1") == 1
    assert [await p.exit() for p in processes] == [0, 0, 0]
    await _wait_gone(processes[0].pid)


async def _answers_then_stops(pg: EmbeddedPostgres) -> None:
    """The server answers a query; stopping the only handle stops it."""
    try:
        assert await _fetchval(pg.dsn, "SELECT 1") == 1
    finally:
        await asyncio.to_thread(pg.stop)
    await _wait_gone(pg.pid)


def _waits_for_flock(lock: Path) -> bool:
    """Whether some process waits for an flock on ``lock``: a "->" line of /proc/locks
    naming its inode (by inode alone: the device there is the superblock's, which is not
    ``st_dev`` on every file system)."""
    inode = f":{lock.stat().st_ino}"
    return any(
        "->" in line and line.split()[-3].endswith(inode)
        for line in Path("/proc/locks").read_text().splitlines()
    )


async def test_another_start_narrowing_data_dir_before_the_lock_does_not_break_initdb(
    traversable_tmp_path: Path,
) -> None:
    """Process B's start-up (private_dir) runs between A's reachability check and A's lock.

    As root the cluster is made by the postgres user, who must enter data_dir; B's
    private_dir takes that away again while data_dir holds nothing of that user's yet.
    (Not as root, postgres runs as us and the test only shows the start still works.)
    """
    data_dir = traversable_tmp_path / "state"
    await asyncio.to_thread(private_dir, data_dir)
    lock = data_dir / "postgres.lock"
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # A stops at the lock, past its check
    starting = asyncio.create_task(asyncio.to_thread(start_embedded_postgres, data_dir))
    interleaved = False
    try:
        deadline = time.monotonic() + _TIMEOUT_S
        while not await asyncio.to_thread(_waits_for_flock, lock):
            assert not starting.done(), starting.result()
            assert time.monotonic() < deadline, "the start never waited for the lock"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(private_dir, data_dir)  # B's start-up
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        interleaved = True
    finally:
        os.close(held)  # lets A go on
        if not interleaved:  # failed above: A's server must not outlive the test
            with contextlib.suppress(Exception):
                started = await asyncio.wait_for(starting, _TIMEOUT_S)
                await asyncio.to_thread(started.stop)
            await asyncio.to_thread(stop_postgres_under, traversable_tmp_path)
    await _answers_then_stops(await asyncio.wait_for(starting, _TIMEOUT_S))


async def test_a_killed_process_leaves_the_server_to_the_next_one(
    traversable_tmp_path: Path, start_relay: StartRelay
) -> None:
    data_dir = traversable_tmp_path / "state"
    killed = await start_relay(data_dir)
    await killed.kill()
    assert await _running(killed.pid)  # orphaned, not stopped: nobody detached it
    nxt = await start_relay(data_dir)
    assert nxt.pid == killed.pid  # adopted
    assert await nxt.exit() == 0  # ...and, being the last user, it stops it
    await _wait_gone(killed.pid)


async def test_a_killed_server_restarts_with_its_data(
    traversable_tmp_path: Path, start_relay: StartRelay
) -> None:
    data_dir = traversable_tmp_path / "state"
    first = await start_relay(data_dir)
    await _execute(first.dsn, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (5)")
    os.kill(first.pid, signal.SIGKILL)
    await first.kill()
    await _wait_gone(first.pid)
    assert (data_dir / "pgdata" / "postmaster.pid").exists()  # stale

    second = await start_relay(data_dir)
    assert second.pid != first.pid
    assert await _fetchval(second.dsn, "SELECT x FROM kept") == 5  # crash recovery
    assert await second.exit() == 0
    await _wait_gone(second.pid)


async def test_a_stale_pid_file_naming_an_unrelated_process_is_replaced(
    traversable_tmp_path: Path, start_relay: StartRelay
) -> None:
    data_dir = traversable_tmp_path / "state"
    first = await start_relay(data_dir)
    pidfile = data_dir / "pgdata" / "postmaster.pid"
    lines = (await asyncio.to_thread(pidfile.read_text)).splitlines()
    await first.command("stop")
    await _wait_gone(first.pid)
    assert await first.exit() == 0
    # As after a container restart: the old pid now belongs to another live process of
    # the server's user, so postgres itself would refuse to start.
    # subprocess.Popen, not asyncio's: uvloop's subprocesses take no user/group.
    user = as_os_user(await asyncio.to_thread(postgres_os_user))
    unrelated: subprocess.Popen[bytes] = await asyncio.to_thread(
        lambda: subprocess.Popen(["sleep", "60"], **user)
    )
    try:
        lines[0] = str(unrelated.pid)
        await asyncio.to_thread(pidfile.write_text, "\n".join(lines) + "\n")
        second = await start_relay(data_dir)
        assert second.pid not in (first.pid, unrelated.pid)
        assert await _fetchval(second.dsn, "SELECT 1") == 1
        assert await second.exit() == 0
        await _wait_gone(second.pid)
    finally:
        unrelated.kill()
        await asyncio.to_thread(unrelated.wait)


async def test_runtime_dir_is_set_privately_when_missing(
    traversable_tmp_path: Path, start_relay: StartRelay
) -> None:
    data_dir = traversable_tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    relay = await start_relay(data_dir, env)
    assert relay.xdg == str(data_dir / "run")
    assert (data_dir / "run").stat().st_mode & 0o777 == 0o700
    assert await relay.exit() == 0
    assert relay.process.stderr is not None
    assert "RuntimeDirWarning" not in (await relay.process.stderr.read()).decode()
    await _wait_gone(relay.pid)


def _modes(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for path in paths for p in [path, *path.parents]}


async def test_no_directory_outside_data_dir_changes_mode(traversable_tmp_path: Path) -> None:
    data_dir = traversable_tmp_path / "state"
    watched = [traversable_tmp_path, await asyncio.to_thread(postgres_bin_dir)]
    before = await asyncio.to_thread(_modes, watched)
    await _answers_then_stops(await asyncio.to_thread(start_embedded_postgres, data_dir))
    assert await asyncio.to_thread(_modes, watched) == before


async def test_a_private_parent_directory_is_refused_not_opened(
    traversable_tmp_path: Path,
) -> None:
    private = traversable_tmp_path / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    data_dir = private / "checkout" / ".relay"
    if postgres_os_user() is None:  # not root: postgres runs as us, the parent is ours
        pg = await asyncio.to_thread(start_embedded_postgres, data_dir)
        await asyncio.to_thread(pg.stop)
        await _wait_gone(pg.pid)
    else:
        with pytest.raises(EmbeddedPostgresError, match=f"cannot enter {private}"):
            await asyncio.to_thread(start_embedded_postgres, data_dir)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


async def test_a_long_data_dir_gets_a_short_private_socket_dir(
    traversable_tmp_path: Path,
) -> None:
    data_dir = traversable_tmp_path / ("d" * 60) / ("e" * 60)
    pg = await asyncio.to_thread(start_embedded_postgres, data_dir)
    try:
        socket_dir = Path(pg.dsn.split("host=")[1].split("&")[0])
        assert socket_dir.parent == Path("/tmp") and socket_dir.name.startswith("relay-pg-")
        info = await asyncio.to_thread(socket_dir.stat)
        assert stat.S_IMODE(info.st_mode) == 0o700
        user = postgres_os_user()
        assert info.st_uid == (user.uid if user else os.geteuid())
        assert await _fetchval(pg.dsn, "SELECT 1") == 1
    finally:
        await asyncio.to_thread(pg.stop)
    assert not await asyncio.to_thread(socket_dir.exists)
