"""What the simulator has seen and done, for tests and ``GET /_sim/calls``.

Every change calls ``notify()``; ``await state.wait_for(predicate, timeout)`` re-checks the
predicate after each change, so tests wait on conditions instead of sleeping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.upstream.simulator.faults import Endpoint, Faults
from relay.upstream.simulator.session_config import Dialect

# Per-call history bounds: plenty for a test, bounded for a long local run.
MAX_EVENTS_KEPT = 5000

FaultListener = Callable[[Faults], Awaitable[None]]


@dataclass
class CallRecord:
    """One call (one simulated peer)."""

    call_id: str
    dialect: Dialect
    model: str
    created_at: float = field(default_factory=time.time)
    # new → connecting → connected → closed (or failed)
    state: str = "new"
    codec: str = ""
    data_channel_label: str | None = None
    data_channel_open: bool = False
    packets_received: int = 0
    frames_received: int = 0
    audio_ms_received: int = 0
    rms_max: float = 0.0
    rms_sum: float = 0.0
    # Speech segments found by the VAD, (start_ms, end_ms) on the received-audio clock;
    # end_ms is None while speech goes on.
    vad_segments: list[tuple[int, int | None]] = field(default_factory=list)
    server_events: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_EVENTS_KEPT)
    )
    client_events: deque[Any] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS_KEPT))
    responses_started: int = 0
    # Items in the call's conversation (user turns, replies, created items), and how many
    # of them came from conversation.item.create (a seeded conversation).
    conversation_items: int = 0
    items_created: int = 0
    reply_frames_sent: int = 0
    hung_up: bool = False
    closed_reason: str | None = None

    @property
    def events_sent(self) -> list[str]:
        return [str(e.get("type")) for e in self.server_events]

    @property
    def rms_mean(self) -> float:
        return self.rms_sum / self.frames_received if self.frames_received else 0.0

    @property
    def rms_max_dbfs(self) -> float:
        return 20 * math.log10(self.rms_max) if self.rms_max > 0 else -math.inf

    def events_of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.server_events if e.get("type") == type_]

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "dialect": self.dialect,
            "model": self.model,
            "created_at": self.created_at,
            "state": self.state,
            "codec": self.codec,
            "data_channel_label": self.data_channel_label,
            "data_channel_open": self.data_channel_open,
            "packets_received": self.packets_received,
            "frames_received": self.frames_received,
            "audio_ms_received": self.audio_ms_received,
            "rms_max": self.rms_max,
            "rms_mean": self.rms_mean,
            "vad_segments": [list(s) for s in self.vad_segments],
            "events_sent": self.events_sent,
            "client_events": list(self.client_events),
            "responses_started": self.responses_started,
            "conversation_items": self.conversation_items,
            "items_created": self.items_created,
            "reply_frames_sent": self.reply_frames_sent,
            "hung_up": self.hung_up,
            "closed_reason": self.closed_reason,
        }


class SimulatorState:
    def __init__(self, faults: Faults, *, max_closed_calls: int = 200) -> None:
        self.faults = faults
        self.requests: Counter[str] = Counter()
        # Datagrams (ICE checks) that reached the silent port of ``ice_never_completes``.
        self.ice_checks_ignored = 0
        self.calls: OrderedDict[str, CallRecord] = OrderedDict()
        # What each mint asked for: {"dialect", "session" (the request's session config,
        # instructions included), "session_id"}; tests check an interview's interviewer
        # reached the upstream. As many as closed calls are kept (a mint precedes each
        # call): a long-running simulator's history stays bounded the same way.
        self.mints: deque[dict[str, Any]] = deque(maxlen=max_closed_calls)
        self._max_closed = max_closed_calls
        self._changed = asyncio.Event()
        self._fault_listeners: list[FaultListener] = []

    # -- requests and calls ------------------------------------------------------------

    def count_request(self, endpoint: Endpoint) -> None:
        self.requests[endpoint] += 1
        self.notify()

    def add_call(self, record: CallRecord) -> None:
        self.calls[record.call_id] = record
        closed = [c for c in self.calls.values() if c.state in ("closed", "failed")]
        for old in closed[: max(0, len(closed) - self._max_closed)]:
            del self.calls[old.call_id]
        self.notify()

    def add_mint(self, dialect: Dialect, session: Mapping[str, Any], session_id: str) -> None:
        self.mints.append({"dialect": dialect, "session": dict(session), "session_id": session_id})
        self.notify()

    def call(self, call_id: str) -> CallRecord:
        return self.calls[call_id]

    @property
    def last_call(self) -> CallRecord | None:
        return next(reversed(self.calls.values()), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "ice_checks_ignored": self.ice_checks_ignored,
            "calls": {call_id: c.to_json() for call_id, c in self.calls.items()},
            "mints": list(self.mints),
        }

    # -- faults ------------------------------------------------------------------------

    def on_faults_changed(self, listener: FaultListener) -> None:
        self._fault_listeners.append(listener)

    async def update_faults(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial fault update (raises ``FaultError``) and let open calls react
        (a beta call is ended when ``beta_disabled`` turns on)."""
        self.faults.update(changes)
        for listener in list(self._fault_listeners):
            await listener(self.faults)
        self.notify()

    # -- waiting -----------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every ``wait_for``; cheap, callable from any code on the loop."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ``timeout`` mirrors asyncio.wait_for's signature (tests read naturally).
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Return once ``predicate()`` is true; ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"simulator state: condition not met within {timeout}s")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                if not predicate():
                    raise TimeoutError(
                        f"simulator state: condition not met within {timeout}s"
                    ) from None
