"""How `relay serve --workers N` starts its workers: no Python code runs in a forked child
before exec (the supervisor has threads by then, and a fork copies only the forking thread,
so a lock another thread held stays locked forever in the child), and a worker still dies
with its supervisor when the supervisor is killed with SIGKILL.

An audit hook (installed through ``sitecustomize`` in every interpreter of the run) records
every audit event raised in a process other than the interpreter that installed it: that
is, in a child forked from it that has not exec'd yet. Running Python there (a
``preexec_fn``, and ``ctypes.util.find_library`` which runs ``ldconfig`` from it) raises
events; a plain fork/exec raises none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.integration.cluster_helpers import (
    Client,
    RelayProcess,
    fresh_connections,
    poll,
    serve_command,
)
from tests.integration.cluster_helpers import relay_env as cluster_relay_env
from tests.support.processes import wait_exited

pytestmark = pytest.mark.slow

AUDIT_LOG_ENV = "RELAY_TEST_FORKED_CHILD_EVENTS"
SITECUSTOMIZE = f"""
import os
import sys

_log = os.environ.get({AUDIT_LOG_ENV!r})
if _log:
    _interpreter = os.getpid()
    _fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _forked_child_events(event, args, _interpreter=_interpreter, _fd=_fd):
        # os.write raises no audit event, so this hook never re-enters itself.
        if os.getpid() != _interpreter:
            os.write(_fd, f"{{os.getpid()}} {{event}}\\n".encode())

    sys.addaudithook(_forked_child_events)
"""


def _audited_env(tmp_path: Path, base: dict[str, str]) -> tuple[dict[str, str], Path]:
    hook_dir = tmp_path / "audit-hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "forked-child-events.log"
    log.touch()
    path = os.pathsep.join(p for p in (str(hook_dir), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, AUDIT_LOG_ENV: str(log)}, log


async def test_workers_start_without_python_in_a_forked_child_and_die_with_a_killed_supervisor(
    traversable_tmp_path: Path, database_url: str
) -> None:
    env, log = _audited_env(
        traversable_tmp_path,
        cluster_relay_env(traversable_tmp_path / "state", {"DATABASE_URL": database_url}),
    )
    relay = await RelayProcess.start(traversable_tmp_path, env, "--workers", "2")
    pids: list[int] = []
    try:
        async with fresh_connections() as http:
            client = Client(http, relay.url)

            async def two_workers() -> list[int] | None:
                view = await client.cluster()
                pids = [m["pid"] for m in view["instances"]]
                return pids if len(pids) == 2 else None

            pids += await poll(two_workers, 30, "two workers in the cluster view")
        # The hook itself is in place: each worker's own interpreter recorded nothing
        # either (it installs its own hook for its own pid), and a fork-without-exec of the
        # supervisor would have been recorded.
        assert log.read_text() == "", "Python ran in a forked child before exec"
        for pid in pids:
            stat = await asyncio.to_thread(Path(f"/proc/{pid}/stat").read_text)
            assert int(stat.rsplit(")", 1)[1].split()[1]) == relay.pid  # the parent pid

        os.kill(relay.pid, signal.SIGKILL)
        for pid in pids:
            await wait_exited(pid, 30)
    finally:
        await relay.stop()
        # Whatever is left of the process group (the workers, if the test failed).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(relay.pid, signal.SIGKILL)


async def test_the_hook_sees_python_run_in_a_forked_child(tmp_path: Path) -> None:
    """The audit hook above sees what it looks for (so an empty log means something): the
    ``preexec_fn`` the supervisor used to pass records its events."""
    env, log = _audited_env(tmp_path, dict(os.environ))
    script = (
        "import ctypes, ctypes.util, subprocess\n"
        "def die_with_parent():\n"
        "    ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "subprocess.run(['true'], preexec_fn=die_with_parent, check=True)\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
    assert await proc.wait() == 0
    assert log.read_text() != ""


async def test_a_worker_whose_supervisor_is_gone_exits_at_once(tmp_path: Path) -> None:
    """The worker sets its own parent-death signal at start; a supervisor that died before
    that (the worker already reparented) is caught by comparing the parent pid."""
    env = cluster_relay_env(tmp_path / "state", {})
    env.update({"RELAY_WORKER_INDEX": "0", "RELAY_SUPERVISOR_PID": "1"})
    proc = await asyncio.create_subprocess_exec(
        *serve_command(0),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    assert "supervisor (pid 1) is gone" in err.decode()
