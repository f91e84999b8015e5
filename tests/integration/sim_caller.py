"""A test caller for the simulator: an aiortc peer that offers audio + ``oai-events`` as
OpenAI's clients do, speaks paced Opus utterances, records every event (with its arrival
time) and the RMS of every received audio frame."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from relay.config import IceConfig
from relay.media.ice import rtc_configuration
from relay.media.peers import close_peer
from relay.upstream.simulator.vad import frame_rms
from relay.upstream.simulator.voice import encode_opus, synthesize


# ---------------------------------------------------------------------- the test caller
@dataclass(frozen=True)
class Utterance:
    payloads: tuple[bytes, ...]
    silence: bytes


def make_utterance(seconds: float) -> Utterance:
    """Candidate-like speech (a higher voice than the interviewer), Opus, ``seconds`` long."""
    speech = synthesize(
        "I built the billing service and then led the migration to the new queue system",
        f0_hz=210.0,
    )
    frames = int(seconds * 50)
    payloads = encode_opus(speech.samples[: frames * 960])
    return Utterance(tuple(payloads), encode_opus(np.zeros(960 * 10))[-1])


class CallerTrack(MediaStreamTrack):
    """Paced 20 ms Opus packets: queued speech, else silence."""

    kind = "audio"

    def __init__(self, silence: bytes) -> None:
        super().__init__()
        self._silence = silence
        self._queue: deque[bytes] = deque()
        self._sent = 0
        self._start: float | None = None

    def say(self, payloads: tuple[bytes, ...]) -> None:
        self._queue.extend(payloads)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._sent * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self._queue.popleft() if self._queue else self._silence)
        packet.pts = self._sent * 960
        packet.time_base = fractions.Fraction(1, 48000)
        self._sent += 1
        return packet


class Caller:
    """The offering side, as OpenAI's clients build it: audio + data channel ``oai-events``."""

    def __init__(self, utterance: Utterance | None) -> None:
        self.pc = RTCPeerConnection(rtc_configuration(IceConfig()))
        self.track: CallerTrack | None = None
        if utterance is not None:
            self.track = CallerTrack(utterance.silence)
            self.pc.addTrack(self.track)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.channel: RTCDataChannel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        # (arrival time, RMS) of every received audio frame, and its sample rate.
        self.frames: list[tuple[float, float]] = []
        self.sample_rates: set[int] = set()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("message", self._on_message)
        self.channel.on("close", self._poke)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._poke)

    def _on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self.arrivals.append(time.monotonic())
        self._poke()

    def _poke(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._tasks.append(asyncio.ensure_future(notify()))

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def receive() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                assert isinstance(frame, av.AudioFrame)
                self.sample_rates.add(frame.sample_rate)
                self.frames.append((time.monotonic(), frame_rms(frame.to_ndarray())))

        self._tasks.append(asyncio.ensure_future(receive()))

    async def until(self, predicate: Callable[[], bool], seconds: float = 15.0) -> None:
        async with asyncio.timeout(seconds), self._changed:
            await self._changed.wait_for(predicate)

    def count(self, type_: str) -> int:
        return sum(1 for e in self.events if e["type"] == type_)

    async def wait_event(self, type_: str, n: int = 1, seconds: float = 15.0) -> dict[str, Any]:
        await self.until(lambda: self.count(type_) >= n, seconds)
        return [e for e in self.events if e["type"] == type_][n - 1]

    def arrival(self, type_: str, n: int = 1) -> float:
        indexes = [i for i, e in enumerate(self.events) if e["type"] == type_]
        return self.arrivals[indexes[n - 1]]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def max_rms(self, start: float, end: float) -> float:
        return max((rms for t, rms in self.frames if start <= t <= end), default=0.0)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        await close_peer(self.pc)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
