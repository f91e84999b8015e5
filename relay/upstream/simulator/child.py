"""``python -m relay.upstream.simulator.child``: the built-in simulator as a child process of
the relay. relay.upstream.simulator_process is the relay's side: it says why the simulator
runs in a process of its own, and what this module is given (its environment) and owes
(one line on stdout once it listens; an exit when the relay ends)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from relay import event_loop
from relay.observability.logging import configure_logging
from relay.process_lifetime import ParentGone, die_with_parent
from relay.upstream.simulator.faults import Faults
from relay.upstream.simulator.options import SimulatorOptions
from relay.upstream.simulator.server import start_simulator
from relay.upstream.simulator_process import (
    CONTROL_TOKEN_ENV,
    PARENT_PID_ENV,
    READY_PREFIX,
    SIMULATOR_API_KEY,
    SPEC_ENV,
    SimulatorSpec,
)


def main() -> int:
    parent = os.environ.get(PARENT_PID_ENV, "")
    try:
        # First: whatever happens to the relay from now on, this process ends with it.
        die_with_parent(int(parent) if parent.isdigit() else None, signal.SIGTERM)
    except ParentGone as exc:
        print(f"simulator not started: {exc}", file=sys.stderr)
        return 1
    spec = SimulatorSpec.from_json(os.environ[SPEC_ENV])
    configure_logging(spec.log_level, spec.log_format)
    event_loop.install(spec.event_loop)
    asyncio.run(_serve(options_for(spec, os.environ.get(CONTROL_TOKEN_ENV, ""))))
    return 0


def options_for(spec: SimulatorSpec, control_token: str) -> SimulatorOptions:
    """The simulator the relay asked for: the relay's standard key alone is accepted."""
    return SimulatorOptions(
        api_keys=frozenset({SIMULATOR_API_KEY}),
        ice=spec.ice,
        faults=Faults(beta_disabled=not spec.beta),
        max_closed_calls=spec.max_closed_calls,
        max_ephemeral_keys=spec.max_ephemeral_keys,
        control_token=control_token,
    )


async def _serve(options: SimulatorOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before saying it listens: from then on the relay may end it at any moment.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = await start_simulator("127.0.0.1", 0, options)
    try:
        print(f"{READY_PREFIX}{sim.base_url}", flush=True)
        await stop.wait()
    finally:
        await sim.close()


if __name__ == "__main__":
    sys.exit(main())
