"""The benchmark's upstream: aiortc peers behind the OpenAI Realtime GA HTTP surface
(``POST /v1/realtime/client_secrets``, ``POST /v1/realtime/calls`` answering with SDP and
a ``Location``, ``POST /v1/realtime/calls/{id}/hangup``). It opens no data channel itself,
answers the relay's ``oai-events`` channel with ``session.created`` and plays its own
pre-encoded audio, as the model speaks."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from aiortc import RTCDataChannel

from bench.run import Endpoints

UPSTREAM_PORT = 18092


class GaUpstream(Endpoints):
    """The upstream peers behind a GA-shaped HTTP surface.

    Sessions are set up one exchange at a time (``current``), so the upstream knows
    which session's endpoints an incoming call belongs to; connecting runs in parallel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current: int | None = None
        self.calls: dict[str, int] = {}
        self.hangups = 0
        self.events_in = 0
        # Per session: seconds the upstream spent answering, and when its leg connected.
        self.answer_s: dict[int, float] = {}
        self.answered_at: dict[int, float] = {}
        self.connected_at: dict[int, float] = {}

    async def answer_timed(self, index: int, offer: str) -> str:
        started = time.time()
        answer = await self.answer_as_upstream(index, offer)
        self.answered_at[index] = time.time()
        self.answer_s[index] = self.answered_at[index] - started
        pc = self.pairs[index].upstream
        assert pc is not None

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected_at.setdefault(index, time.time())

        return answer

    async def client_secrets(self, request: web.Request) -> web.Response:
        await request.read()
        n = len(self.calls) + self.hangups
        return web.json_response(
            {
                "value": f"ek_bench_{n}_{time.monotonic_ns()}",
                "expires_at": int(time.time()) + 600,
                "session": {"id": f"sess_bench_{n}", "model": "gpt-realtime"},
            }
        )

    async def calls_post(self, request: web.Request) -> web.Response:
        offer = await request.text()
        index = self.current
        if index is None:
            return web.json_response({"error": {"message": "unexpected call"}}, status=400)
        answer = await self.answer_timed(index, offer)
        pc = self.pairs[index].upstream
        assert pc is not None

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            channel.on("message", self._count_event)
            channel.send(json.dumps({"type": "session.created", "event_id": "event_bench"}))

        call_id = f"rtc_bench_{index}_{time.monotonic_ns()}"
        self.calls[call_id] = index
        return web.Response(
            text=answer,
            status=201,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call_id}"},
        )

    def _count_event(self, message: Any) -> None:
        self.events_in += 1

    async def hangup(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        index = self.calls.pop(call_id, None)
        self.hangups += 1
        if index is not None and index in self.pairs:
            pc = self.pairs[index].upstream
            if pc is not None:
                await pc.close()
        return web.Response(status=200)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/realtime/client_secrets", self.client_secrets)
        app.router.add_post("/v1/realtime/calls", self.calls_post)
        app.router.add_post("/v1/realtime/calls/{call_id}/hangup", self.hangup)
        return app
