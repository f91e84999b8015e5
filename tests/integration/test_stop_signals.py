"""`relay serve` stopped by a signal as systemd, Kubernetes or a closed terminal stop it:
SIGTERM (or SIGHUP) while it is still starting stops what had started (the embedded
PostgreSQL above all) and exits with the shell's status for the signal (143, 129), like
Ctrl-C's 130; SIGHUP once it serves drains as SIGTERM does, for a single relay and for the
supervisor of `--workers N`, which also leaves no metrics directory behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.relay_cli import foreign_free_environ

pytestmark = pytest.mark.slow

OPERATOR = "stop-signal-test-operator-token-0123456789"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = foreign_free_environ()
    env.update(
        {
            "RELAY__SERVER__DATA_DIR": str(data_dir),
            "RELAY__SERVER__DRAIN_TIMEOUT_S": "2",
            "RELAY_OPERATOR_TOKEN": OPERATOR,
        }
    )
    env.update(extra)
    return env


def _postmaster(data_dir: Path) -> int | None:
    """The pid of the embedded PostgreSQL still running under ``data_dir``, if any."""
    try:
        pid = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


class Served:
    """`relay serve ARGS` with both its output (the banner) and its log read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.log: list[str] = []
        self._seen = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.out)),
            asyncio.create_task(self._read(proc.stderr, self.log)),
        ]

    async def _read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        async for raw in stream:
            async with self._seen:
                lines.append(raw.decode(errors="replace"))
                self._seen.notify_all()

    async def until(self, lines: list[str], text: str, timeout_s: float = 90) -> None:
        async def seen() -> None:
            async with self._seen:
                await self._seen.wait_for(
                    lambda: any(text in line for line in lines) or self.proc.returncode is not None
                )

        await asyncio.wait_for(seen(), timeout_s)
        assert any(text in line for line in lines), f"no {text!r}: {self.text()}"

    async def exit_status(self, timeout_s: float = 60) -> int:
        status = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.gather(*self._readers)
        return status

    def text(self) -> str:
        return "".join(self.out) + "".join(self.log)


@contextlib.asynccontextmanager
async def _serving(cwd: Path, env: dict[str, str], *args: str) -> AsyncIterator[Served]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--port", "0", *args,
        env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    data_dir = Path(env["RELAY__SERVER__DATA_DIR"])
    try:
        yield Served(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # Whatever the outcome, no server outlives the test (without the fix it would).
        if (orphan := _postmaster(data_dir)) is not None:
            os.kill(orphan, signal.SIGQUIT)


@pytest.mark.parametrize(
    ("signum", "status", "moment"),
    [
        (signal.SIGTERM, 143, "started embedded PostgreSQL"),
        (signal.SIGTERM, 143, "database ready"),
        (signal.SIGHUP, 129, "database ready"),
    ],
)
async def test_a_stop_signal_during_start_up_stops_what_started(
    traversable_tmp_path: Path, signum: int, status: int, moment: str
) -> None:
    data_dir = traversable_tmp_path / "state"
    async with _serving(traversable_tmp_path, _env(data_dir)) as served:
        await served.until(served.log, moment)
        served.proc.send_signal(signum)
        code = await served.exit_status()
        text = served.text()
        assert code == status, text
        name = signal.Signals(signum).name
        # (The embedded PostgreSQL may be stopped after this line: at exit, when the signal
        # came while it was starting.)
        assert f"stopped during start-up ({name})\n" in served.log, text
        assert "Traceback" not in text, text
        assert "listening on" not in text, text
        assert _postmaster(data_dir) is None, text


async def test_sighup_drains_a_serving_relay_like_sigterm(traversable_tmp_path: Path) -> None:
    async with _serving(traversable_tmp_path, _env(traversable_tmp_path / "state")) as served:
        await served.until(served.out, "listening on")
        served.proc.send_signal(signal.SIGHUP)
        code = await served.exit_status()
        text = served.text()
        assert code == 0, text
        assert "draining: no new sessions" in text and "Traceback" not in text, text
        assert _postmaster(traversable_tmp_path / "state") is None, text


async def test_sighup_drains_every_worker_and_the_supervisor_leaves_nothing(
    traversable_tmp_path: Path,
) -> None:
    data_dir = traversable_tmp_path / "state"
    # The supervisor's metrics directory is made under TMPDIR (tempfile).
    tmp = traversable_tmp_path / "tmp"
    tmp.mkdir()
    env = _env(data_dir, TMPDIR=str(tmp))
    async with _serving(traversable_tmp_path, env, "--workers", "2") as served:
        await served.until(served.out, "(2 workers)")
        # The banner says what a single relay's says (no key: the simulator).
        await served.until(served.out, "Operator dashboard: http://127.0.0.1:")
        assert any(line.startswith("SIMULATED upstream") for line in served.out), served.out
        assert list(tmp.glob("relay-worker-metrics-*")), served.text()
        served.proc.send_signal(signal.SIGHUP)
        code = await served.exit_status()
        text = served.text()
        assert code == 0, text
        assert text.count("draining: no new sessions") == 2, text
        assert _postmaster(data_dir) is None, text
        assert not list(tmp.glob("relay-worker-metrics-*")), text


async def test_sigterm_while_the_supervisor_starts_stops_what_it_started(
    traversable_tmp_path: Path,
) -> None:
    data_dir = traversable_tmp_path / "state"
    async with _serving(traversable_tmp_path, _env(data_dir), "--workers", "2") as served:
        await served.until(served.log, "started embedded PostgreSQL")
        served.proc.send_signal(signal.SIGTERM)
        code = await served.exit_status()
        text = served.text()
        assert code == 143, text
        assert "stopped during start-up (SIGTERM)\n" in served.log, text
        assert _postmaster(data_dir) is None, text
