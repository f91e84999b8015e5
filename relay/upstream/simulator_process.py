"""The built-in simulator as a child process of the relay (no OpenAI key, or
``upstream.simulate`` without ``upstream.simulator_url``), of ``relay serve --workers N``'s
supervisor, which starts one for all its workers, and of ``relay doctor`` without a key.

Why a process of its own: the relay changes aiortc and aioice for its whole process
(relay.media.aiortc_private, port_range, udp, the ICE host addresses). A simulator sharing
that process would run on those changes too, so it could not catch what they break; as
OpenAI's stand-in it runs aiortc as it ships, but for the choice of ICE host addresses
that every peer of the project makes (relay.media.ice). So the relay process never imports
``relay.upstream.simulator``: it starts ``python -m relay.upstream.simulator.child`` and
talks to it over HTTP and WebRTC only, as it talks to OpenAI.

The protocol with the child (relay.upstream.simulator.child is the other side):

* what it needs comes through its environment, never its command line (a process's
  arguments are visible to every user of the machine): the ``/_sim/*`` control token, the
  pid it must die with, and ``SimulatorSpec`` as JSON. The relay's own settings and secrets
  (``RELAY*``, ``OPENAI_*``, ``DATABASE_URL``, ...) are left out of it: the simulator uses
  none of them;
* it listens on a free loopback port of its choosing, then prints one line on stdout,
  ``simulator listening on <base URL>``; the relay serves only once it has read that line;
* it ends with the relay: SIGTERM when the relay closes it, and the parent-death signal
  (relay.process_lifetime) when the relay dies any other way, SIGKILL included. It runs in a
  session of its own, so a Ctrl-C in the terminal reaches the relay (which drains its live
  interviews, still talking to the simulator) and not the simulator directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import Literal

from relay.config import IceConfig, Settings
from relay.event_loop import EventLoopName
from relay.tasks import cancel_and_wait, spawn

log = logging.getLogger("relay.upstream.simulator_process")

CHILD_MODULE = "relay.upstream.simulator.child"
# The standard key the relay presents to its simulator (the simulator accepts it alone).
SIMULATOR_API_KEY = "sk-sim-local"
# The /_sim/* control token (also how `relay simulate` takes one).
CONTROL_TOKEN_ENV = "RELAY_SIM_CONTROL_TOKEN"
# The pid of the process the child must die with.
PARENT_PID_ENV = "RELAY_SIM_PARENT_PID"
# SimulatorSpec as JSON.
SPEC_ENV = "RELAY_SIM_SPEC"
READY_PREFIX = "simulator listening on "
# The child imports aiortc, PyAV and numpy and synthesises its voice before it listens,
# slowly on a loaded machine; this bound is far above that and only turns a hang into a
# clear error.
START_TIMEOUT_S = 60.0
# Closing hangs up every call (bounded by the simulator's own shut-down timeout) before
# the child exits; past this, it is killed.
CLOSE_TIMEOUT_S = 10.0
# Environment variables the simulator has no use for: the relay's settings and secrets.
_RELAY_ONLY = (
    "RELAY",
    "OPENAI_",
    "DATABASE_URL",
    "REDIS_URL",
    "AWS_",
    "SENTRY_",
    "PROMETHEUS_MULTIPROC_DIR",
)


class SimulatorStartError(Exception):
    """The simulator process did not become ready (it exited, or did not answer in time)."""


@dataclass(frozen=True)
class SimulatorSpec:
    """What the relay asks of its simulator (serialised into the child's environment)."""

    # Serve the beta shape; otherwise it answers 400 beta_api_shape_disabled, as OpenAI does.
    beta: bool = False
    # ICE for the simulator's peers: the relay's STUN servers and host addresses, so that
    # both ends gather on the same interfaces (never the relay's TURN secret: OpenAI's
    # side does not use the relay's TURN service).
    ice: IceConfig = field(default_factory=IceConfig)
    # History it keeps (relay.upstream.simulator.options.SimulatorOptions).
    max_closed_calls: int = 200
    max_ephemeral_keys: int = 1000
    # Its log lines join the relay's (the child inherits stderr), in the same format.
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    event_loop: EventLoopName = "uvloop"

    def to_json(self) -> str:
        return json.dumps(
            {
                "beta": self.beta,
                "ice": self.ice.model_dump(mode="json", include={"servers", "host_addresses"}),
                "max_closed_calls": self.max_closed_calls,
                "max_ephemeral_keys": self.max_ephemeral_keys,
                "log_level": self.log_level,
                "log_format": self.log_format,
                "event_loop": self.event_loop,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> SimulatorSpec:
        data = json.loads(raw)
        return cls(
            beta=bool(data["beta"]),
            ice=IceConfig.model_validate(data["ice"]),
            max_closed_calls=int(data["max_closed_calls"]),
            max_ephemeral_keys=int(data["max_ephemeral_keys"]),
            log_level=str(data["log_level"]),
            log_format="json" if data["log_format"] == "json" else "text",
            event_loop="asyncio" if data["event_loop"] == "asyncio" else "uvloop",
        )


def simulator_spec(settings: Settings) -> SimulatorSpec:
    """The simulator a relay with ``settings`` runs as its upstream."""
    return SimulatorSpec(
        # Like the real service, the simulator refuses the beta shape unless asked for it.
        beta=settings.upstream.dialect == "beta",
        ice=settings.ice,
        # Its history is memory per interview on the relay's machine: keep little
        # (docs/operations.md, "Memory per session"). A key is needed until its session is
        # exchanged, so one per admissible session is enough.
        max_closed_calls=20,
        max_ephemeral_keys=2 * settings.limits.global_max_sessions,
        log_level=settings.server.log_level,
        log_format=settings.server.log_format,
        event_loop=settings.server.event_loop,
    )


class SimulatorProcess:
    """A running simulator child: its URLs, its control token, ``close()``."""

    def __init__(self, proc: asyncio.subprocess.Process, base_url: str, control_token: str) -> None:
        self._proc = proc
        self.base_url = base_url
        self._control_token = control_token
        self._closing = False
        self._watch = spawn(self._watch_output(), name="simulator-process", log=log)

    def __repr__(self) -> str:  # the control token stays out of logs and tracebacks
        return f"SimulatorProcess(pid={self.pid}, base_url={self.base_url!r})"

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def root_url(self) -> str:
        """Where ``/_sim/*`` lives, e.g. ``http://127.0.0.1:9000``."""
        return self.base_url.removesuffix("/v1")

    @property
    def control_token(self) -> str:
        """The bearer token of its ``/_sim/*`` control API (faults, call records)."""
        return self._control_token

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def close(self) -> None:
        """SIGTERM (it hangs up every call and exits), SIGKILL if it does not in time."""
        self._closing = True
        proc = self._proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.error("the simulator (pid %d) did not stop in time; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await cancel_and_wait(self._watch)

    async def _watch_output(self) -> None:
        """Pass on anything else it prints; say so when it exits before the relay closes it
        (every interview then fails at the upstream, which /readyz shows)."""
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            log.info("simulator: %s", raw.decode(errors="replace").rstrip())
        code = await self._proc.wait()
        if not self._closing:
            log.error(
                "the simulator (pid %d) exited with status %s; interviews cannot reach their "
                "upstream until the relay is restarted",
                self._proc.pid,
                code,
            )


def _child_environment(control_token: str, spec: SimulatorSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_RELAY_ONLY)}
    env[CONTROL_TOKEN_ENV] = control_token
    env[PARENT_PID_ENV] = str(os.getpid())
    env[SPEC_ENV] = spec.to_json()
    return env


async def start_simulator_process(
    spec: SimulatorSpec, *, start_timeout_s: float = START_TIMEOUT_S
) -> SimulatorProcess:
    """Start a simulator child and wait until it listens. Call it from the event loop's
    thread: the parent-death signal is tied to the thread that forks (relay.process_lifetime).
    """
    control_token = secrets.token_urlsafe(32)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        CHILD_MODULE,
        env=_child_environment(control_token, spec),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base_url = await asyncio.wait_for(_ready(proc), start_timeout_s)
    except BaseException as exc:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise SimulatorStartError(f"not listening after {start_timeout_s:.0f}s") from None
        raise
    log.debug("simulator (pid %d) listening on %s", proc.pid, base_url)
    return SimulatorProcess(proc, base_url, control_token)


async def _ready(proc: asyncio.subprocess.Process) -> str:
    """Its base URL, from the line it prints once it listens."""
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            code = await proc.wait()
            reason = f"signal {-code}" if code < 0 else f"status {code}"
            raise SimulatorStartError(f"exited with {reason} before listening (see its log)")
        line = raw.decode(errors="replace").rstrip()
        if line.startswith(READY_PREFIX):
            return line.removeprefix(READY_PREFIX)
        log.info("simulator: %s", line)
