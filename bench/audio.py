"""Benchmark audio: pre-encoded Opus bursts over silence, and onset detection."""

from __future__ import annotations

import fractions

import av
import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48000
FRAME = 960  # 20 ms
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
PERIOD_FRAMES = 50  # one burst per second
BURST_FRAMES = 5  # 100 ms
ONSET_LEVEL = 4000  # |sample| above this counts as the burst
QUIET_FRAMES = 10  # frames of quiet needed before an onset counts

Pcm = npt.NDArray[np.int16]


def burst_frame(n: int, freq: float) -> Pcm:
    """Frame ``n`` of a 100 ms tone burst every second over silence (onset at n % 50 == 0)."""
    if n % PERIOD_FRAMES >= BURST_FRAMES:
        return np.zeros(FRAME, dtype=np.int16)
    t = (np.arange(FRAME) + n * FRAME) / SAMPLE_RATE
    return (0.5 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def preencode_bursts(freq: float) -> list[bytes]:
    """One second (50 packets) of bursts, encoded once: mono 32 kb/s VoIP, like a browser."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 32000
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = SAMPLE_RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    packets: list[bytes] = []
    for n in range(PERIOD_FRAMES + 10):
        frame = av.AudioFrame.from_ndarray(
            burst_frame(n, freq).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = n * FRAME
        frame.time_base = TIME_BASE
        packets.extend(bytes(p) for p in codec.encode(frame))
    return packets[:PERIOD_FRAMES]


def onset_times(arrivals: list[float], payloads: list[bytes]) -> list[float]:
    """Wall times at which a burst onset was heard (decoding the packets in arrival order)."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format = "s16"
    decoder.layout = "mono"
    decoder.sample_rate = SAMPLE_RATE
    onsets: list[float] = []
    quiet = QUIET_FRAMES
    for arrived, payload in zip(arrivals, payloads, strict=True):
        for frame in decoder.decode(av.Packet(payload)):
            samples = np.abs(frame.to_ndarray().reshape(-1).astype(np.int32))
            if frame.layout.name == "stereo":
                samples = samples[::2]
            loud = np.nonzero(samples > ONSET_LEVEL)[0]
            if len(loud) and quiet >= QUIET_FRAMES:
                onsets.append(arrived + loud[0] / SAMPLE_RATE)
            quiet = 0 if len(loud) or samples.max() > ONSET_LEVEL // 4 else quiet + 1
    return onsets
