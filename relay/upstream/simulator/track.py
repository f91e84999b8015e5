"""The simulator's outbound audio track: pre-encoded reply packets, paced in real time.

``recv()`` returns ``av.Packet``s, which aiortc's sender packetises without encoding
(``Encoder.pack``), so a playing reply costs no codec work on the event loop. Between
replies the track sends the codec's silence.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from relay.upstream.simulator.voice import FRAME_MS, CodecVoice, EncodedLine

log = logging.getLogger("relay.simulator")


class ReplyListener(Protocol):
    def on_tick(self) -> None:
        """Every 20 ms frame, playing or not (the clock that drives generation)."""

    def on_reply_frame(self, frames_sent: int, words_started: int) -> None: ...

    def on_reply_end(self) -> None: ...


class ReplyTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, voice: CodecVoice, listener: ReplyListener) -> None:
        super().__init__()
        self._voice = voice
        self._listener = listener
        self._line: EncodedLine | None = None
        self._position = 0
        # Playback ends at this frame (the reply was cancelled after this much was generated).
        self._end = 0
        self._sent = 0
        self._pts = 0
        self._start: float | None = None

    def set_voice(self, voice: CodecVoice) -> None:
        """Switch to the negotiated codec (before media flows)."""
        self._voice = voice

    @property
    def playing(self) -> bool:
        return self._line is not None

    def play(self, line: EncodedLine) -> None:
        self._line, self._position, self._end = line, 0, len(line.payloads)

    def limit(self, frames: int) -> None:
        """Play only the first ``frames`` frames (generation was cancelled there)."""
        self._end = min(self._end, max(frames, 0))

    def stop_reply(self) -> None:
        """Silence from the next frame on (cleared buffer, barge-in, hang-up); no end event."""
        self._line = None

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            delay = self._start + self._sent * FRAME_MS / 1000 - now
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:
                # After a stall, restart the clock instead of bursting to catch up.
                self._start, self._sent = now, 0
        self._tick()
        payload = self._voice.silence
        line = self._line
        if line is not None and self._position >= self._end:
            self._finish(line)
            line = self._line
        if line is not None:
            payload = line.payloads[self._position]
            self._position += 1
            self._notify(line)
        packet = av.Packet(payload)
        packet.pts = self._pts
        packet.time_base = self._voice.time_base
        self._pts += self._voice.samples_per_frame
        self._sent += 1
        return packet

    def _tick(self) -> None:
        # Called from aiortc's sender task: never let a listener error stop the media.
        try:
            self._listener.on_tick()
        except Exception:
            log.exception("simulator: reply listener failed")

    def _notify(self, line: EncodedLine) -> None:
        try:
            words = bisect.bisect_right(line.word_frames, self._position - 1)
            self._listener.on_reply_frame(self._position, words)
            if self._position >= self._end:
                self._finish(line)
        except Exception:
            log.exception("simulator: reply listener failed")

    def _finish(self, line: EncodedLine) -> None:
        if self._line is line:
            self._line = None
            try:
                self._listener.on_reply_end()
            except Exception:
                log.exception("simulator: reply listener failed")
