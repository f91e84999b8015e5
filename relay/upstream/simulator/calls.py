"""The live calls of one simulator: open (answer an offer), hang up, react to faults, close."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.upstream.simulator.conversation import Conversation
from relay.upstream.simulator.faults import Faults
from relay.upstream.simulator.ids import random_id
from relay.upstream.simulator.options import SimulatorOptions
from relay.upstream.simulator.peer import SimCall
from relay.upstream.simulator.session_config import Dialect
from relay.upstream.simulator.state import CallRecord, SimulatorState
from relay.upstream.simulator.voice import prepare_voice

log = logging.getLogger("relay.simulator")


class _Sink(asyncio.DatagramProtocol):
    """Receives ICE checks and never answers them (counting them for tests)."""

    def __init__(self, state: SimulatorState) -> None:
        self._state = state

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._state.ice_checks_ignored += 1
        self._state.notify()


class CallManager:
    def __init__(self, state: SimulatorState, options: SimulatorOptions) -> None:
        self._state = state
        self._options = options
        self._live: dict[str, SimCall] = {}
        self._sink: asyncio.DatagramTransport | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"CallManager(live={len(self._live)})"

    @property
    def live(self) -> dict[str, SimCall]:
        return dict(self._live)

    async def open_call(
        self, *, dialect: Dialect, session: dict[str, Any], offer_sdp: str
    ) -> tuple[str, str]:
        """Answer ``offer_sdp`` with a new peer; returns ``(call_id, answer_sdp)``.

        Raises ``SimHttpError`` (400 invalid_offer) when aiortc cannot apply the offer."""
        if self._closed:
            raise RuntimeError("the simulator is closed")
        faults = self._state.faults
        voice = await prepare_voice(self._options.reply_lines)
        record = CallRecord(
            call_id=random_id("rtc"), dialect=dialect, model=str(session.get("model", ""))
        )
        conversation = Conversation(
            dialect, session, ids=random_id, reply_lines=self._options.reply_lines
        )
        call = SimCall(
            record,
            state=self._state,
            conversation=conversation,
            voice=voice,
            ice=self._options.ice,
            generation_speed=self._options.generation_speed,
            transcription_delay_s=self._options.transcription_delay_s,
            on_closed=self._forget,
        )
        if faults.ice_never_completes:
            host, port = await self._sink_address()
            answer = await call.answer_unreachable(offer_sdp, host, port)
        else:
            answer = await call.answer(offer_sdp, faults.answer_codec)
        self._live[record.call_id] = call
        self._state.add_call(record)
        log.info("simulator: call %s opened (%s, %s)", record.call_id, dialect, record.model)
        return record.call_id, answer

    def _forget(self, call: SimCall) -> None:
        self._live.pop(call.call_id, None)
        log.info("simulator: call %s closed (%s)", call.call_id, call.record.closed_reason)

    async def hangup(self, call_id: str) -> bool:
        call = self._live.get(call_id)
        if call is None:
            return False
        await call.close("hangup", hung_up=True)
        return True

    async def apply_faults(self, faults: Faults) -> None:
        if faults.beta_disabled:
            for call in list(self._live.values()):
                call.end_beta_disabled()

    async def refresh_stats(self) -> None:
        await asyncio.gather(
            *(call.refresh_stats() for call in list(self._live.values())), return_exceptions=True
        )

    async def close_all(self) -> None:
        self._closed = True
        calls = list(self._live.values())
        await asyncio.gather(*(c.close("simulator_closed") for c in calls), return_exceptions=True)
        self._live.clear()
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    async def _sink_address(self) -> tuple[str, int]:
        """A loopback UDP port that swallows ICE checks (``ice_never_completes``)."""
        host = (
            self._options.ice.host_addresses[0] if self._options.ice.host_addresses else "127.0.0.1"
        )
        if self._sink is None:
            loop = asyncio.get_running_loop()
            self._sink, _ = await loop.create_datagram_endpoint(
                lambda: _Sink(self._state), local_addr=(host, 0)
            )
        address = self._sink.get_extra_info("sockname")
        return str(address[0]), int(address[1])
