"""The Dockerfile's image, built and run for real: healthy, as the unprivileged user
(uid 10001), without the build stage's compiler, and stopping with exit status 0."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.container import docker
from tests.container.conftest import BuiltImage
from tests.container.docker import say

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

OPERATOR_TOKEN = "op-container-test-token-0123456789abcdef"
HEALTHY_WITHIN_S = 120


def wait_healthy(container: str, within: float) -> float:
    started = time.monotonic()
    while True:
        state = json.loads(docker.run("inspect", "-f", "{{json .State}}", container).stdout)
        health = state.get("Health", {}).get("Status")
        if health == "healthy":
            return time.monotonic() - started
        if not state["Running"] or time.monotonic() - started > within:
            logs = docker.run("logs", "--tail", "40", container, check=False)
            raise AssertionError(
                f"{container}: {health} (running: {state['Running']}) after "
                f"{time.monotonic() - started:.0f}s\n{logs.stdout}{logs.stderr}"
            )
        # Docker runs the HEALTHCHECK on its own schedule; this only polls its verdict.
        time.sleep(1)


def test_the_image_runs_healthy_as_uid_10001_and_stops_with_status_0(
    relay_image: BuiltImage,
) -> None:
    name = f"relay-image-test-{uuid.uuid4().hex[:8]}"
    # No network but the container's own loopback: the embedded PostgreSQL and the
    # built-in simulator (asked for: the image listens on 0.0.0.0) are all it needs.
    docker.run(
        "run", "-d", "--name", name, "--network", "none",
        "-e", "RELAY__UPSTREAM__SIMULATE=true", "-e", f"RELAY_OPERATOR_TOKEN={OPERATOR_TOKEN}",
        relay_image.tag,
    )  # fmt: skip
    try:
        healthy_after = wait_healthy(name, HEALTHY_WITHIN_S)
        say(f"{relay_image.tag} healthy {healthy_after:.0f}s after start")

        status = docker.run("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == ["10001"] * 4, status
        config = json.loads(docker.run("inspect", "-f", "{{json .Config}}", name).stdout)
        assert config["User"] == "relay"
        ready = docker.run(
            "exec", name, "python", "-c",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8080/readyz', timeout=5).read().decode())",
        )  # fmt: skip
        assert json.loads(ready.stdout)["status"] == "ready", ready.stdout
        # The compiler stayed in the build stage.
        compiler = docker.run("exec", name, "sh", "-c", "command -v gcc cc", check=False)
        assert compiler.returncode != 0 and compiler.stdout == "", compiler.stdout

        started = time.monotonic()
        docker.run("stop", "-t", "60", name, timeout=120)
        stopped_after = time.monotonic() - started
        state = json.loads(docker.run("inspect", "-f", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        # Stopped by its own drain, well before docker's SIGKILL deadline.
        assert stopped_after < 50, stopped_after
        logs = docker.run("logs", name)
        assert "shutting down" in logs.stdout + logs.stderr
        say(f"{relay_image.tag} stopped with exit status 0 in {stopped_after:.1f}s")
    finally:
        docker.run("rm", "-f", "-v", name, check=False)
