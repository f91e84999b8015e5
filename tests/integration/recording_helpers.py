"""Helpers of the recording tests: a timed browser (when each packet was sent and
received, on the relay's own monotonic clock: same process), decoding and onsets."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.rtp import RtpPacket

from relay.media import aiortc_private
from tests.integration.media_helpers import BrowserPeer, wait_until
from tests.integration.relay_harness import OPERATOR_TOKEN, RelayHarness

RATE = 48000
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
# RMS (full scale 1.0) above which a 5 ms block counts as sound.
LOUD = 0.02


def tone(freq: float, seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@dataclass
class TimedBrowser:
    """A ``BrowserPeer`` whose microphone sends and speaker receptions are timestamped."""

    peer: BrowserPeer
    sent: list[tuple[float, bytes]] = field(default_factory=list)
    received: list[tuple[float, bytes]] = field(default_factory=list)

    @classmethod
    def create(cls) -> TimedBrowser:
        browser = cls(BrowserPeer())
        mic = browser.peer.mic
        assert mic is not None
        original = mic.recv

        async def timed_recv() -> Any:
            packet = await original()
            browser.sent.append((time.monotonic(), bytes(packet)))
            return packet

        mic.recv = timed_recv  # type: ignore[method-assign]
        return browser

    def hook_speaker(self) -> None:
        """Timestamp every RTP packet the relay sends to this browser (then aiortc's own
        handling, so the speaker keeps working)."""
        receiver = next(t.receiver for t in self.peer.pc.getTransceivers() if t.kind == "audio")
        original = aiortc_private.original_rtp_handler(receiver)

        async def hook(packet: RtpPacket, arrival_time_ms: int) -> None:
            if packet.payload:
                self.received.append((time.monotonic(), bytes(packet.payload)))
            await original(packet, arrival_time_ms)

        aiortc_private.install_rtp_hook(receiver, hook)


def decode_packets(payloads: list[bytes]) -> np.ndarray:
    """Mono float samples of consecutive 20 ms Opus packets (one fresh decoder)."""
    ctx: Any = av.CodecContext.create("opus", "r")
    ctx.sample_rate = RATE
    ctx.layout = "mono"
    out = []
    for payload in payloads:
        for frame in ctx.decode(av.Packet(payload)):
            data = frame.to_ndarray().astype(np.float32).reshape(-1)
            out.append(data)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def onset_time(timed: list[tuple[float, bytes]], after: float = 0.0) -> float:
    """Monotonic time of the first sound in packets (time, payload), sent/received after
    ``after``: the packet's time plus the onset's place inside it."""
    packets = [(t, p) for t, p in timed if t >= after]
    pcm = decode_packets([p for _, p in packets])
    index = first_loud(pcm)
    assert index is not None, "no sound in the packets"
    return packets[index // 960][0] + (index % 960) / RATE


def first_loud(pcm: np.ndarray, start: int = 0) -> int | None:
    block = RATE // 200
    for i in range(start, len(pcm) - block, block):
        chunk = pcm[i : i + block]
        if float(np.sqrt(np.mean(chunk * chunk))) > LOUD:
            return i
    return None


def last_loud(pcm: np.ndarray) -> int | None:
    block = RATE // 200
    for i in range(len(pcm) - block, 0, -block):
        chunk = pcm[i : i + block]
        if float(np.sqrt(np.mean(chunk * chunk))) > LOUD:
            return i + block
    return None


def decode_stereo(data: bytes) -> np.ndarray:
    """(samples, 2) float of an Ogg/Opus or WAV file."""
    container = av.open(io.BytesIO(data), mode="r")
    chunks = []
    for frame in container.decode(audio=0):
        assert frame.layout.nb_channels == 2 and frame.sample_rate == RATE
        arr = frame.to_ndarray()
        arr = arr.T if frame.format.is_planar else arr.reshape(-1, 2)
        if np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / 32768.0
        chunks.append(arr.astype(np.float32))
    container.close()
    return np.concatenate(chunks)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


async def connect(relay: RelayHarness, browser: TimedBrowser) -> str:
    """Create a session (saying the notice was shown), exchange, wait until active."""
    token = await relay.add_user(seconds=1800)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = str(body["session_id"])
    offer = await browser.peer.offer()
    async with relay.client.post(
        "/api/webrtc-exchange",
        json={"session_id": session_id, "type": "offer", "sdp": offer},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    browser.hook_speaker()
    await browser.peer.accept(answer["sdp"])
    await browser.peer.wait_connected()
    bridges = relay.services.bridges
    assert bridges is not None
    await wait_until(
        lambda: (b := bridges.get(session_id)) is not None and b.state == "active",
        10,
        "bridge active",
    )
    return session_id


async def hang_up(relay: RelayHarness, session_id: str) -> None:
    async with relay.client.delete(f"/api/sessions/{session_id}", headers=OPERATOR) as resp:
        assert resp.status in (200, 204), await resp.text()


async def recording_of(relay: RelayHarness, session_id: str) -> dict[str, Any]:
    async with relay.client.get("/api/recordings?limit=200", headers=OPERATOR) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    items = [i for i in body["items"] if i["session_id"] == session_id]
    assert len(items) == 1, body
    return dict(items[0])


async def wait_recording(
    relay: RelayHarness, session_id: str, status: str, within: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        try:
            item = await recording_of(relay, session_id)
        except AssertionError:
            item = {}
        if item.get("status") == status:
            return item
        if time.monotonic() > deadline:
            raise AssertionError(f"recording not {status} within {within}s: {item}")
        await asyncio.sleep(0.1)
