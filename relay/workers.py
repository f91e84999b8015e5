"""``relay serve --workers N``: N full relays (worker processes) on one port.

The supervisor (this module) prepares what the workers share, then starts them:

- the upstream: with no OpenAI key, one built-in simulator started here (a child process
  of the supervisor) for all workers (a session minted through one worker is exchanged
  through another);
- the database: the configured one, or the embedded PostgreSQL started here once and
  handed to every worker as its DATABASE_URL (the workers never start their own);
- the state key that seals pending sessions (generated into data_dir once, before any
  worker could race to create it) and the operator token (generated once if none);
- the port: bound here with SO_REUSEPORT (learning it when 0 was asked for) and kept
  bound, not listening, while every worker binds the same port with SO_REUSEPORT; the
  kernel spreads incoming connections over the workers' listening sockets;
- the metrics directory (PROMETHEUS_MULTIPROC_DIR, one per run): each worker writes its
  metric values there, so any worker's /metrics covers all of them
  (relay.observability.worker_metrics).

Each worker is a whole relay (``relay serve`` with RELAY_WORKER_INDEX set): its own
event loop, media sockets, and its own member id
(``<host>:<port>/w<i>``) in the cluster view. They share pending sessions, limits and
commands through PostgreSQL (and Redis when configured), so any worker answers any
request. SIGTERM, SIGHUP or SIGINT to the supervisor is passed on to every worker (as
SIGTERM), which drains as a single relay does; the supervisor then stops the embedded
database. One before the workers are started stops what the supervisor had started. A worker that
exits on its own is started again (at most once per second).

Workers are started with a plain fork/exec: no Python runs in the child between the two.
The supervisor has threads by then (``asyncio.to_thread``), and a fork copies only the
forking thread, so a lock another thread held (the import lock, a logging handler's,
malloc's) would stay locked forever in the child. What the child must arrange for itself
(dying with its supervisor) it does first thing after exec: ``die_with_supervisor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from relay.config import FILE_SUFFIX, Settings
from relay.observability import worker_metrics
from relay.process_lifetime import ParentGone, StopSignals, die_with_parent
from relay.sealing import load_or_create_key
from relay.tasks import TaskGroup
from relay.upstream.simulation import uses_simulator
from relay.upstream.simulator_process import simulator_spec, start_simulator_process

log = logging.getLogger("relay.workers")

# Prints the banner once every worker is ready: (settings, dsn, port, generated operator
# token or None, worker count).
Announce = Callable[[Settings, str, int, str | None, int], Awaitable[None]]

WORKER_ENV = "RELAY_WORKER_INDEX"
# The supervisor's pid, so that a worker can tell it has been orphaned (below).
SUPERVISOR_ENV = "RELAY_SUPERVISOR_PID"
READY_PREFIX = "worker ready:"


def worker_count(value: str) -> int:
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    count = int(value)
    if not 1 <= count <= 256:
        raise ValueError("--workers must be within 1..256 or auto")
    return count


def worker_index() -> int | None:
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw and raw.isdigit() else None


def bind_listener(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to (host, port); listening is left to the caller."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class SupervisorGone(Exception):
    """The supervisor that started this worker has already exited."""


def die_with_supervisor() -> None:
    """In a worker, first thing: receive SIGTERM (and so drain and exit) when the
    supervisor dies, even by SIGKILL, so that no worker outlives it
    (relay.process_lifetime; the supervisor forks from its event loop's thread, which
    lives as long as it does)."""
    expected = os.environ.get(SUPERVISOR_ENV, "")
    try:
        die_with_parent(int(expected) if expected.isdigit() else None, signal.SIGTERM)
    except ParentGone:
        raise SupervisorGone(f"the supervisor (pid {expected}) is gone") from None


class Supervisor:
    def __init__(self, settings: Settings, count: int, argv: Sequence[str]) -> None:
        self.settings = settings
        self.count = count
        # The worker's command line: this `relay serve`'s own options (config, host).
        self._argv = list(argv)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._ready: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(count)}
        # One task per worker, keeping it running (started again if it exits).
        self._watches = TaskGroup("workers", log=log)
        # Where the workers' metric values live for this run (worker_metrics).
        self._metrics_dir: Path | None = None

    async def run(self, announce: Announce) -> int:
        # First: a stop signal while the shared parts start stops them and exits cleanly
        # (the embedded PostgreSQL, the simulator, the metrics directory are not left
        # behind); once the workers are started, it stops them (relay.process_lifetime).
        signals = StopSignals()
        try:
            return await self._run(announce, signals)
        except asyncio.CancelledError:
            signals.raise_if_stopped()
            raise

    async def _run(self, announce: Announce, signals: StopSignals) -> int:
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            dsn = settings.database.url
            if not dsn:
                from relay.db.embedded_pg import start_embedded_postgres

                embedded = await asyncio.to_thread(start_embedded_postgres, settings.data_path)
                stack.push_async_callback(asyncio.to_thread, embedded.stop)
                dsn = embedded.dsn
            await asyncio.to_thread(
                load_or_create_key, settings.cluster.state_key, settings.data_path
            )
            upstream_env: dict[str, str] = {}
            if uses_simulator(settings) and not settings.upstream.simulator_url:
                # One simulator for every worker: a session minted through one worker's
                # upstream must be exchangeable through any other's. The workers still
                # simulate (upstream.simulate), so candidates and operators are told. A
                # child of the supervisor, ended with it (relay.upstream.simulator_process).
                simulator = await start_simulator_process(simulator_spec(settings))
                stack.push_async_callback(simulator.close)
                upstream_env = {
                    "RELAY__UPSTREAM__SIMULATE": "true",
                    "RELAY__UPSTREAM__SIMULATOR_URL": simulator.base_url,
                }
                log.info("the workers share a simulator at %s", simulator.base_url)
            token = settings.server.operator_token or secrets.token_urlsafe(24)
            try:
                anchor = bind_listener(settings.server.host, settings.server.port, reuse_port=True)
            except OSError as exc:
                print(
                    f"cannot listen on {settings.server.host}:{settings.server.port}:"
                    f" {exc.strerror}",
                    file=sys.stderr,
                )
                return 1
            stack.callback(anchor.close)
            port = int(anchor.getsockname()[1])
            # One scrape of any worker covers them all (relay.observability.worker_metrics).
            metrics_dir = self._metrics_dir = worker_metrics.create_directory()
            stack.callback(worker_metrics.remove_directory, metrics_dir)
            env = worker_environment(
                os.environ,
                {
                    worker_metrics.MULTIPROC_ENV: str(metrics_dir),
                    "DATABASE_URL": dsn,
                    "RELAY_OPERATOR_TOKEN": token,
                    "RELAY__SERVER__PORT": str(port),
                    "RELAY__SERVER__CREATE_DEMO_USER": "false",
                    **upstream_env,
                },
            )
            signals.started()
            stop = signals.stop
            for index in range(self.count):
                self._spawn_watch(index, env)
            ready = asyncio.create_task(self._all_ready())
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {ready, waiter}, timeout=180, return_when=asyncio.FIRST_COMPLETED
            )
            ready.cancel()
            status = 0
            if ready in done:
                generated = None if settings.server.operator_token else token
                await announce(settings, dsn, port, generated, self.count)
                await stop.wait()
            elif waiter not in done:
                log.error("workers not ready after 180s; stopping")
                status = 1
            waiter.cancel()
            await self._stop_all()
        return status

    def stopping(self) -> bool:
        return self._stopping

    async def _all_ready(self) -> None:
        for event in self._ready.values():
            await event.wait()

    def _spawn_watch(self, index: int, env: dict[str, str]) -> None:
        self._watches.spawn(self._keep_running(index, env), name=f"worker-{index}")

    async def _keep_running(self, index: int, env: dict[str, str]) -> None:
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay",
                "serve",
                *self._argv,
                env={**env, WORKER_ENV: str(index), SUPERVISOR_ENV: str(os.getpid())},
                stdout=asyncio.subprocess.PIPE,
            )
            self._procs[index] = proc
            if self._metrics_dir is not None:
                await asyncio.to_thread(
                    worker_metrics.worker_started, self._metrics_dir, index, proc.pid
                )
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if line.startswith(READY_PREFIX):
                    self._ready[index].set()
                    log.info("worker %d (pid %d) %s", index, proc.pid, line)
                else:
                    print(line, flush=True)
            code = await proc.wait()
            if self._metrics_dir is not None:
                await asyncio.to_thread(worker_metrics.worker_exited, self._metrics_dir, proc.pid)
            if self.stopping():
                return
            log.error("worker %d exited with %s; starting it again", index, code)
            await asyncio.sleep(1.0)

    async def _stop_all(self) -> None:
        self._stopping = True
        procs = [p for p in self._procs.values() if p.returncode is None]
        log.info("stopping %d workers (each drains its sessions)", len(procs))
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = self.settings.server.drain_timeout_s + 30
        waits = [asyncio.create_task(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=deadline)
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker pid %d did not stop in time; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*waits, return_exceptions=True)
        await self._watches.close()


def worker_environment(base: Mapping[str, str], decided: Mapping[str, str]) -> dict[str, str]:
    """The workers' environment: the supervisor's, with what it decided for them
    (``decided``) in place of the same names given as files (``NAME_FILE``,
    relay.config): a worker that found both (``RELAY_OPERATOR_TOKEN_FILE`` from a Docker
    secret beside the ``RELAY_OPERATOR_TOKEN`` set here) would refuse to start."""
    kept = {
        name: value
        for name, value in base.items()
        if not (name.endswith(FILE_SUFFIX) and name[: -len(FILE_SUFFIX)] in decided)
    }
    return {**kept, **decided}
