"""aiortc test clients for the media bridge: a "browser" peer and a loopback upstream.

Both are real aiortc peers on 127.0.0.1. The browser sends pre-encoded Opus (so the
test process spends its CPU on the relay, not on encoding), paced at 20 ms, through
aiortc's public ``av.Packet`` sender path; it receives through the public track API
(decoded frames) and keeps each frame's RMS, and collects data-channel events.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcsctptransport import Chunk, DataChunk
from aiortc.rtp import RtpPacket

from relay.config import IceConfig
from relay.media import aiortc_private
from relay.media.ice import rtc_configuration
from relay.upstream.base import (
    MintedSession,
    SdpAnswer,
    SessionOverrides,
    UpstreamError,
    UpstreamTimeout,
)

SAMPLE_RATE = 48000
FRAME = 960  # 20 ms
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

# ---------------------------------------------------------------------- audio material


def transcript_delta(i: int) -> str:
    """The upstream's ``response.output_audio_transcript.delta`` number ``i`` (about 250
    bytes of JSON): a stream of them fills a data channel quickly."""
    return json.dumps(
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": f"event_d{i}",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "word " * 40,
        }
    )


def speech_like(seconds: float, *, f0: float = 140.0, level: float = 0.3) -> np.ndarray:
    """Mono int16 voice-like audio: a harmonic-rich buzz with ~4 syllables per second."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = f0 * (1.0 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None) ** 0.5
    signal = voice * syllables
    signal = signal / max(1e-9, float(np.max(np.abs(signal))))
    return (signal * level * 32767).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def encode_opus(pcm: np.ndarray, *, bitrate: int = 32000) -> list[bytes]:
    """20 ms Opus packets (mono, VoIP mode, like a browser) of ``pcm``."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = bitrate
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = SAMPLE_RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    frames = len(pcm) // FRAME
    packets: list[bytes] = []
    for i in range(frames + 4):
        chunk = pcm[i * FRAME : (i + 1) * FRAME] if i < frames else np.zeros(FRAME, np.int16)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i * FRAME
        frame.time_base = TIME_BASE
        packets.extend(bytes(p) for p in codec.encode(frame))
    return packets[:frames]


_SILENCE_PACKET: bytes | None = None


def silence_packet() -> bytes:
    global _SILENCE_PACKET
    if _SILENCE_PACKET is None:
        _SILENCE_PACKET = encode_opus(silence(0.2))[-1]
    return _SILENCE_PACKET


def rms(frame: av.AudioFrame) -> float:
    samples = frame.to_ndarray().astype(np.float64).reshape(-1)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


# ---------------------------------------------------------------------- tracks


class OpusPacketTrack(MediaStreamTrack):
    """Paced 20 ms Opus packets: the given payloads once, then encoded silence forever.

    ``pause()`` stops sending (the track blocks, like a frozen tab); ``resume()`` undoes it.
    """

    kind = "audio"

    def __init__(self, payloads: Sequence[bytes] = ()) -> None:
        super().__init__()
        self._payloads = list(payloads)
        self._n = 0
        self._t0: float | None = None
        self._running = asyncio.Event()
        self._running.set()
        self.sent: list[bytes] = []
        # True while paused and waiting: nothing more is sent until ``resume()``.
        self.blocked = False

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._t0 = None
        self._running.set()

    def play(self, payloads: Sequence[bytes]) -> None:
        """Send ``payloads`` next (then silence again)."""
        self._payloads = list(payloads)
        self._index = 0

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._running.is_set():
            self.blocked = True
            await self._running.wait()
            self.blocked = False
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now - self._n * 0.02
        wait = self._t0 + self._n * 0.02 - now
        if wait > 0:
            await asyncio.sleep(wait)
        payload = self._payloads.pop(0) if self._payloads else silence_packet()
        packet = av.Packet(payload)
        packet.pts = self._n * FRAME
        packet.time_base = TIME_BASE
        self._n += 1
        self.sent.append(payload)
        return packet


class PcmTrack(MediaStreamTrack):
    """Paced 20 ms s16 mono frames of ``pcm`` (then silence); aiortc encodes them."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self._pcm = pcm
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        wait = self._t0 + self._n * 0.02 - now
        if wait > 0:
            await asyncio.sleep(wait)
        start = self._n * FRAME
        chunk = self._pcm[start : start + FRAME]
        if len(chunk) < FRAME:
            chunk = np.zeros(FRAME, np.int16)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = TIME_BASE
        self._n += 1
        return frame


@dataclass
class AudioSink:
    """Consumes a remote track; keeps per-frame RMS (decoded, through aiortc's public API)."""

    levels: list[float] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        self.task = asyncio.create_task(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                self.levels.append(rms(frame))

    def loud_frames(self, threshold: float = 300.0) -> int:
        return sum(1 for level in self.levels if level > threshold)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Check ``predicate`` every 20 ms until true; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def stop_reading_events(pc: RTCPeerConnection) -> None:
    """Make ``pc`` a peer that no longer reads its data channels (a frozen tab, a stalled
    upstream): its SCTP association drops every DATA chunk it receives and acknowledges
    none, so the sender's window fills and what it sends next stays in its
    ``bufferedAmount``. The peer's audio and its own sending go on.

    Test-only use of aiortc's private ``RTCSctpTransport._receive_chunk`` (the association
    looks it up on the instance for every chunk); aiortc has no public way to stop reading.
    """
    sctp = pc.sctp
    assert sctp is not None, "no data channel negotiated yet"
    receive = sctp._receive_chunk

    async def drop_data(chunk: Chunk) -> None:
        if not isinstance(chunk, DataChunk):
            await receive(chunk)

    sctp._receive_chunk = drop_data  # type: ignore[method-assign]


def _prefer(pc: RTCPeerConnection, codec_names: Sequence[str]) -> None:
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    wanted = [
        c
        for name in codec_names
        for c in capabilities
        if c.mimeType.lower() == f"audio/{name.lower()}"
    ]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            transceiver.setCodecPreferences(wanted)


# ---------------------------------------------------------------------- the browser


class BrowserPeer:
    """A candidate's browser: microphone track, ``oai-events`` channel, speaker sink."""

    def __init__(
        self,
        *,
        payloads: Sequence[bytes] = (),
        codecs: Sequence[str] | None = None,
        label: str = "oai-events",
        ice: IceConfig | None = None,
        configuration: RTCConfiguration | None = None,
    ) -> None:
        self.pc = RTCPeerConnection(configuration or rtc_configuration(ice or IceConfig()))
        self.mic = OpusPacketTrack(payloads) if codecs is None or codecs[0] == "opus" else None
        self._pcm_mic = None
        if self.mic is None:
            # A non-Opus first choice: let aiortc encode for the negotiated codec.
            self._pcm_mic = PcmTrack(speech_like(3.0))
            self.pc.addTransceiver(self._pcm_mic, direction="sendrecv")
        else:
            self.pc.addTransceiver(self.mic, direction="sendrecv")
        if codecs is not None:
            _prefer(self.pc, codecs)
        self.channel = self.pc.createDataChannel(label)
        self.events: list[dict[str, Any]] = []
        self.speaker = AudioSink()
        self._event_added = asyncio.Event()
        self.channel.on("message", self._on_message)
        self.pc.on("track", self.speaker.start)

    def _on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self._event_added.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def send_event(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events]

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            self._event_added.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event in {within}s; got {self.event_types()}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._event_added.wait()

    async def wait_type(self, kind: str, within: float = 10.0) -> dict[str, Any]:
        return await self.wait_event(lambda e: e.get("type") == kind, within)

    async def wait_connected(self, within: float = 10.0) -> None:
        await wait_until(
            lambda: self.pc.connectionState == "connected", within, "browser connected"
        )

    async def close(self) -> None:
        await self.speaker.stop()
        await self.pc.close()


# ---------------------------------------------------------------------- loopback upstream


@dataclass
class UpstreamCall:
    call_id: str
    pc: RTCPeerConnection
    speaker: AudioSink
    payloads: list[bytes] = field(default_factory=list)
    # Every RTP packet received, as aiortc parsed it (header fields, extensions).
    packets: list[RtpPacket] = field(default_factory=list)
    mouth: OpusPacketTrack | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # The relay's "oai-events" channel, as this upstream received it.
    channel: Any = None


class LoopbackUpstream:
    """An ``UpstreamClient`` whose "OpenAI" is an aiortc peer in this process.

    It answers the relay's offer (Opus, or PCMU with ``answer_codec="pcmu"``), speaks
    ``reply_pcm`` on its audio track, sends ``session.created`` when the relay's
    ``oai-events`` channel opens, records the relay's events and the exact Opus
    payloads it receives, and records hang-ups. ``fail_with`` makes the SDP exchange
    raise instead (an ``UpstreamError``/``UpstreamTimeout``).
    """

    dialect = "ga"
    model = "loopback"

    def __init__(
        self,
        *,
        answer_codec: str = "opus",
        reply_pcm: np.ndarray | None = None,
        reply_opus: Sequence[bytes] | None = None,
        fail_with: Exception | None = None,
    ) -> None:
        self.answer_codec = answer_codec
        # Pre-encoded Opus to speak instead of ``reply_pcm`` (sent byte for byte).
        self.reply_opus = reply_opus
        self.reply_pcm = speech_like(3.0, f0=210.0) if reply_pcm is None else reply_pcm
        self.fail_with = fail_with
        self.calls: list[UpstreamCall] = []
        self.hangups: list[str] = []

    async def mint(
        self, *, request_id: str, overrides: SessionOverrides | None = None
    ) -> MintedSession:
        return MintedSession(secret="ek_loopback", expires_at=int(time.time()) + 600, model="x")

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        if self.fail_with is not None:
            raise self.fail_with
        pc = RTCPeerConnection(rtc_configuration(IceConfig()))
        call = UpstreamCall(call_id="rtc_" + secrets.token_hex(8), pc=pc, speaker=AudioSink())
        self.calls.append(call)
        if self.reply_opus is not None:
            call.mouth = OpusPacketTrack(self.reply_opus)
            pc.addTransceiver(call.mouth, direction="sendrecv")
        else:
            pc.addTransceiver(PcmTrack(self.reply_pcm), direction="sendrecv")
        if self.answer_codec != "opus":
            _prefer(pc, [self.answer_codec])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            call.speaker.start(track)

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            call.channel = channel
            channel.on("message", lambda m: call.events.append(json.loads(m)))
            channel.send(json.dumps({"type": "session.created", "event_id": "event_1"}))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "audio")
        original = aiortc_private.original_rtp_handler(receiver)

        async def capture(packet: RtpPacket, arrival_time_ms: int) -> None:
            call.packets.append(packet)
            if packet.payload:
                call.payloads.append(bytes(packet.payload))
            await original(packet, arrival_time_ms)

        aiortc_private.install_rtp_hook(receiver, capture)
        await pc.setLocalDescription(await pc.createAnswer())
        return SdpAnswer(sdp=str(pc.localDescription.sdp), call_id=call.call_id)

    async def hangup(self, call_id: str) -> None:
        self.hangups.append(call_id)
        for call in self.calls:
            if call.call_id == call_id:
                await call.speaker.stop()
                await call.pc.close()

    async def close(self) -> None:
        for call in self.calls:
            await call.speaker.stop()
            await call.pc.close()


def upstream_failure(kind: str) -> Exception:
    if kind == "timeout":
        return UpstreamTimeout("sdp", "no answer")
    return UpstreamError("sdp", "server error", status=500, code="server_error")
