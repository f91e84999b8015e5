"""What the relay asks of its simulator process reaches it whole through the child's
environment (relay.upstream.simulator_process → relay.upstream.simulator.child)."""

from __future__ import annotations

from relay.config import IceConfig, IceServerConfig, Settings
from relay.upstream.simulator.child import options_for
from relay.upstream.simulator_process import SIMULATOR_API_KEY, SimulatorSpec, simulator_spec


def test_the_relays_choices_become_the_simulators_options() -> None:
    settings = (
        Settings()
        .replace("upstream", dialect="beta")
        .replace("limits", global_max_sessions=7)
        .replace("ice", host_addresses=("127.0.0.2",))
        .replace("server", log_format="json", event_loop="asyncio")
    )
    spec = SimulatorSpec.from_json(simulator_spec(settings).to_json())
    assert (spec.log_format, spec.event_loop) == ("json", "asyncio")
    options = options_for(spec, "control-token-0123456789")
    assert options.faults.beta_disabled is False  # started for the beta dialect
    assert options.max_closed_calls == 20
    assert options.max_ephemeral_keys == 2 * 7
    assert options.ice.host_addresses == ("127.0.0.2",)
    assert options.api_keys == frozenset({SIMULATOR_API_KEY})
    assert options.control_token == "control-token-0123456789"
    ga = options_for(SimulatorSpec.from_json(simulator_spec(Settings()).to_json()), "t")
    assert ga.faults.beta_disabled is True  # as OpenAI: the beta shape refused


def test_the_spec_carries_stun_servers_but_never_the_relays_turn_secret() -> None:
    stun = IceServerConfig(urls=("stun:stun.example.test:3478",))
    ice = IceConfig(
        servers=(stun,),
        turn_urls=("turn:turn.example.test:3478",),
        turn_secret="turn-secret-never-shared",
        relay_turn="both",
    )
    raw = SimulatorSpec(ice=ice).to_json()
    assert "turn-secret-never-shared" not in raw
    spec = SimulatorSpec.from_json(raw)
    assert spec.ice.servers == (stun,)
    assert spec.ice.turn_urls == () and spec.ice.relay_turn == "none"
