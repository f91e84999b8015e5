"""Running the relay's command line as a real process (`python -m relay ...`) in tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

# The line `relay serve` prints once it listens.
# A loopback bind prints its URL; a wildcard bind names itself, then the URL to open here.
URL_LINE = re.compile(
    r"listening on (?:http://0\.0\.0\.0:\d+/ \(.*from this machine: )?(http://127\.0\.0\.1:\d+/)"
)


def foreign_free_environ() -> dict[str, str]:
    """This process's environment without the relay's own settings (``RELAY…``,
    ``OPENAI…``, ``DATABASE…``, ``REDIS…``): a relay started with it and the test's settings
    sees those alone, whatever the machine running the tests has set."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY", "OPENAI", "DATABASE", "REDIS"))
    }


async def run_relay(
    *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 90
) -> tuple[int, str, str]:
    """Run one command to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start_serving(
    *args: str, env: dict[str, str], cwd: Path, log_piped: bool = False
) -> asyncio.subprocess.Process:
    """`relay serve ARGS` with stdout piped (read it with ``read_banner``); with
    ``log_piped``, its log (stderr) piped instead, and SIGINT as a terminal leaves it (a
    test runner's worker may ignore it, and children inherit that)."""
    piped, dropped = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", *args, env=env, cwd=cwd,
        stdout=dropped if log_piped else piped,
        stderr=piped if log_piped else dropped,
        preexec_fn=_sigint_as_from_a_terminal if log_piped else None,
    )  # fmt: skip


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def read_banner(
    proc: asyncio.subprocess.Process, lines: list[str], timeout_s: float = 90
) -> tuple[str, str]:
    """The start-up lines up to the demo token: (page URL, demo token); every line read is
    appended to ``lines``. With ``server.log_format = "json"`` each is a JSON log entry,
    read by its message (the demo token ends the entry that names it)."""
    assert proc.stdout is not None
    stdout = proc.stdout

    async def banner() -> tuple[str, str]:
        url = ""
        while True:
            raw = await stdout.readline()
            assert raw, f"relay exited early: {lines}"
            line = raw.decode().strip()
            lines.append(line)
            text = str(json.loads(line)["message"]) if line.startswith("{") else line
            if match := URL_LINE.search(text):
                url = match[1]
            last = text.rsplit(" ", 1)[-1]
            if last.startswith("rt_") and url:
                return url, last

    return await asyncio.wait_for(banner(), timeout=timeout_s)


async def stop_serving(proc: asyncio.subprocess.Process, timeout_s: float = 30) -> None:
    """SIGTERM (the relay drains), then SIGKILL if it does not exit in time."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
