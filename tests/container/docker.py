"""The docker CLI against the private daemon tests/run.sh starts (never the machine's own).

tests/run.sh exports ``DOCKER_HOST`` (the private daemon's socket), ``DOCKER_CONFIG`` (a
directory holding the compose plugin) and ``RELAY_TEST_CACHE`` (where the base image's
recipe inputs and the daemon's data root are kept between runs). Run directly, without
them, these tests fail with that explanation rather than touch another daemon.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("tests.container")

REQUIRED_ENV = ("DOCKER_HOST", "DOCKER_CONFIG", "RELAY_TEST_CACHE")


class DockerUnavailable(RuntimeError):
    pass


class CommandFailed(RuntimeError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        tail = (result.stdout[-3000:] + "\n" + result.stderr[-3000:]).strip()
        super().__init__(f"{shlex.join(args)} exited with {result.returncode}:\n{tail}")
        self.result = result


def environment() -> dict[str, str]:
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise DockerUnavailable(
            f"{', '.join(missing)} not set: run these tests through `bash tests/run.sh "
            "tests/container` (as root), which installs docker and starts a private daemon"
        )
    return {
        **os.environ,
        # The legacy builder: BuildKit fetches a frontend image, and no registry is needed
        # or reachable here.
        "DOCKER_BUILDKIT": "0",
        "COMPOSE_DOCKER_CLI_BUILD": "0",
    }


def cache_dir() -> Path:
    return Path(environment()["RELAY_TEST_CACHE"])


def run(
    *args: str,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    unset: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``docker ARGS`` with the private daemon; output captured, logged when slow.
    ``env`` adds to this process's environment, after ``unset`` names are removed."""
    command = ["docker", *args]
    started = time.monotonic()
    base = {k: v for k, v in environment().items() if k not in set(unset)}
    result = subprocess.run(
        command,
        env={**base, **(env or {})},
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - started
    if elapsed > 5:
        log.info("%.1fs: %s", elapsed, shlex.join(command[:6]))
    if check and result.returncode != 0:
        raise CommandFailed(command, result)
    return result


def image_exists(tag: str) -> bool:
    return run("image", "inspect", tag, check=False).returncode == 0


def say(message: str) -> None:
    """Printed (pytest shows it with -s and in the log of a failing test) and logged."""
    print(f"[container tests] {message}", flush=True)
    log.info("%s", message)
