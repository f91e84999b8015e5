"""A local stand-in for the OpenAI Realtime API (GA and beta) over real HTTP and WebRTC.

``create_simulator_app`` builds the aiohttp app; ``start_simulator`` serves one in-process;
``run_simulator`` serves one until a signal (``relay simulate``); ``child`` is the relay's
own simulator process (relay.upstream.simulator_process: the relay never imports this
package). Tests observe it through
``app[SIM_STATE_KEY]`` / ``RunningSimulator.state`` or ``GET /_sim/calls``, and inject faults
through ``state.update_faults`` or ``POST /_sim/faults`` (``/_sim/*`` needs
``Authorization: Bearer <RunningSimulator.control_token>``).
"""

from relay.upstream.simulator.app import SIM_STATE_KEY, SIMULATOR_KEY, create_simulator_app
from relay.upstream.simulator.faults import EndpointFault, FaultError, Faults
from relay.upstream.simulator.options import DEFAULT_API_KEY, SimulatorOptions
from relay.upstream.simulator.server import RunningSimulator, run_simulator, start_simulator
from relay.upstream.simulator.state import CallRecord, SimulatorState

__all__ = [
    "DEFAULT_API_KEY",
    "SIMULATOR_KEY",
    "SIM_STATE_KEY",
    "CallRecord",
    "EndpointFault",
    "FaultError",
    "Faults",
    "RunningSimulator",
    "SimulatorOptions",
    "SimulatorState",
    "create_simulator_app",
    "run_simulator",
    "start_simulator",
]
