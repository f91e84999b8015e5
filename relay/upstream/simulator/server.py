"""Running the simulator: ``start_simulator`` (in-process, for tests and the relay's local
mode) and ``run_simulator`` (blocking, for ``relay simulate``)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from dataclasses import dataclass

from aiohttp import web

from relay.upstream.simulator.app import SIM_STATE_KEY, SIMULATOR_KEY, create_simulator_app
from relay.upstream.simulator.options import SimulatorOptions
from relay.upstream.simulator.state import SimulatorState

# Handlers still running at shutdown are hanging-request faults; do not wait for them long.
_SHUTDOWN_TIMEOUT_S = 2.0


@dataclass
class RunningSimulator:
    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """What OpenAI clients take as their base URL, e.g. ``http://127.0.0.1:9000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> SimulatorState:
        return self.app[SIM_STATE_KEY]

    @property
    def control_token(self) -> str:
        """The bearer token of the ``/_sim/*`` control API."""
        return self.app[SIMULATOR_KEY].control_token

    async def close(self) -> None:
        """Hang up every call, release hanging requests and stop the server."""
        await self.runner.cleanup()


async def start_simulator(
    host: str = "127.0.0.1", port: int = 0, options: SimulatorOptions | None = None
) -> RunningSimulator:
    """Serve a new simulator on ``host:port`` (0: any free port)."""
    app = create_simulator_app(options)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return RunningSimulator(app=app, runner=runner, host=str(bound_host), port=int(bound_port))


def run_simulator(
    host: str = "127.0.0.1", port: int = 9000, dialect: str = "ga", control_token: str = ""
) -> None:
    """Serve the simulator until SIGINT/SIGTERM (``relay simulate``).

    GA (``/v1/realtime/client_secrets`` + ``/calls``) is always served; the beta shape
    (``/v1/realtime/sessions`` + ``/v1/realtime?model=``) only with ``dialect="beta"``:
    otherwise it answers ``400 beta_api_shape_disabled``, as the real service does.
    Any key-shaped ``sk-…`` bearer token is accepted as a standard key.
    ``/_sim/*`` needs ``control_token`` (empty: a random one, printed at start).
    """
    options = SimulatorOptions(accept_any_api_key=True, control_token=control_token)
    if dialect == "beta":
        options = dataclasses.replace(
            options, faults=dataclasses.replace(options.faults, beta_disabled=False)
        )
    try:
        asyncio.run(_serve(host, port, dialect, options))
    except OSError as exc:
        print(f"simulator: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


async def _serve(host: str, port: int, dialect: str, options: SimulatorOptions) -> None:
    sim = await start_simulator(host, port, options)
    try:
        print(f"simulator listening on {sim.base_url}", flush=True)
        if dialect == "beta":
            print(
                "dialect beta: POST /v1/realtime/sessions, then POST /v1/realtime?model=… "
                "(application/sdp, Bearer ek_…)",
                flush=True,
            )
        else:
            print(
                "dialect ga: POST /v1/realtime/client_secrets, then POST /v1/realtime/calls "
                "(application/sdp, Bearer ek_…)",
                flush=True,
            )
        # What KeyStore.is_standard takes here: the default key, or any that has a real
        # key's shape (a key like sk-bogus is refused, as OpenAI would).
        print(
            "standard key: Bearer sk-sim-local, or any Bearer sk- with 16 or more of "
            "[A-Za-z0-9_-] after it",
            flush=True,
        )
        if options.control_token:
            print("control API /_sim/*: Bearer <the given control token>", flush=True)
        else:
            print(f"control API /_sim/*: Bearer {sim.control_token}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sim.close()
