"""The simulator's settings (``SimulatorOptions``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from relay.config import IceConfig
from relay.upstream.simulator.faults import Faults

DEFAULT_API_KEY = "sk-sim-local"
DEFAULT_GA_MODEL = "gpt-realtime"
DEFAULT_BETA_MODEL = "gpt-4o-realtime-preview"

# What the simulated interviewer says, in turn (one line per response).
DEFAULT_REPLY_LINES: tuple[str, ...] = (
    "Thank you. Could you tell me a little more about that?",
    "Interesting. What was the hardest part of that project?",
    "I see. How did you work with the rest of your team?",
    "Great. What would you do differently next time?",
)


@dataclass(frozen=True)
class SimulatorOptions:
    # Standard keys (Bearer sk-…) accepted for minting, the unified /calls form and hang-up.
    api_keys: AbstractSet[str] = field(default=frozenset({DEFAULT_API_KEY}), repr=False)
    # Accept any Bearer token starting with "sk-" as a standard key.
    accept_any_api_key: bool = False
    # ICE for the simulator's peers (default: host candidate 127.0.0.1 only, no STUN).
    ice: IceConfig = field(default_factory=IceConfig)
    # Initial fault knobs (copied into the state; change them at runtime there).
    faults: Faults = field(default_factory=Faults)
    default_ga_model: str = DEFAULT_GA_MODEL
    default_beta_model: str = DEFAULT_BETA_MODEL
    # Lifetime of a beta ephemeral key when the request names none (OpenAI: one minute).
    beta_secret_ttl_s: int = 60
    # Offers larger than this are refused with 400 invalid_offer.
    max_offer_bytes: int = 32768
    reply_lines: tuple[str, ...] = DEFAULT_REPLY_LINES
    # Reply generation speed, in multiples of real time (>= 1): response.done arrives when
    # generation ends, output_audio_buffer.stopped when playback ends, as on the service.
    generation_speed: float = 4.0
    # Input transcription arrives this long after the commit (asynchronously, as on the
    # service, so it may land after the reply started).
    transcription_delay_s: float = 0.3
    # Unix-seconds clock for key expiry (tests pass a controllable one).
    clock: Callable[[], float] = time.time
    # Closed calls kept for inspection (oldest forgotten first).
    max_closed_calls: int = 200
    # Bearer token for the /_sim/* control API (faults, call records). Empty: a random one
    # per simulator (``RunningSimulator.control_token``), so it is never open by default.
    control_token: str = field(default="", repr=False)
    # Minted ephemeral keys remembered (oldest forgotten first; expired ones a minute after
    # expiry anyway).
    max_ephemeral_keys: int = 1000
    # Name itself in every answer (``relay.upstream.simulation.SIMULATOR_HEADER``) so that
    # `relay doctor` says SIMULATED. False only where a test has it play the real service
    # to the doctor.
    identify: bool = True

    def __post_init__(self) -> None:
        if self.generation_speed < 1:
            raise ValueError("generation_speed must be >= 1 (generation runs ahead of playback)")
        if self.transcription_delay_s < 0:
            raise ValueError("transcription_delay_s must be >= 0")
