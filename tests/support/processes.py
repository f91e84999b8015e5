"""Child processes of the test session that cannot outlive it, and loopback port helpers.

Servers are spawned from one long-lived thread with the Linux parent-death signal set to
SIGKILL: the signal fires when the *thread* that forked the child exits, so spawning from
short-lived threads (``asyncio.to_thread`` workers, shut down with each test's loop) would
kill servers early. The spawner thread lives until the interpreter exits, so a session
that dies without running its fixture finalizers (SIGKILL, ``os._exit``) leaves no server
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-services-spawner")
_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> None:
    # Runs in the forked child before exec (after any user switch, which would clear it).
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a server process that dies with this test session. Blocking (fork/exec)."""
    if sys.platform.startswith("linux"):
        popen_kwargs.setdefault("preexec_fn", _parent_death_signal)
    # Its own session: a Ctrl-C in the terminal reaches pytest, which then stops it cleanly.
    popen_kwargs.setdefault("start_new_session", True)

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, **popen_kwargs)

    return _SPAWNER.submit(popen).result()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_on_free_port(
    launch: Callable[[int], None], lost_the_port: Callable[[Exception], bool], tries: int = 3
) -> int:
    """Pick a free port and ``launch(port)``; retry when another process took the port
    between our pick and the server's bind (``lost_the_port(error)``). Returns the port."""
    for attempt in range(tries):
        port = free_port()
        try:
            launch(port)
            return port
        except Exception as exc:
            if attempt == tries - 1 or not lost_the_port(exc):
                raise
    raise AssertionError("unreachable")


def exited(pid: int) -> bool:
    """Whether ``pid`` (any process, not only a child) has exited, zombies included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:  # Linux: the state follows the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


async def wait_exited(pid: int, limit_s: float) -> None:
    """Wait until ``pid`` (not necessarily a child) has exited; fail after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not await asyncio.to_thread(exited, pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {limit_s}s")
        await asyncio.sleep(0.02)


def terminate(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL. No-op if it has exited."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    process.wait()
