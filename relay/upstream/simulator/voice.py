"""The interviewer's voice: speech-like audio, synthesised once and pre-encoded.

Not a recording and not a tone: a voiced source (harmonics of a 110–170 Hz pitch with
declination and per-syllable accents) shaped by moving vowel formants, a syllable-rate
amplitude envelope, short noise bursts for consonants and pauses between words. Each reply
line is synthesised once per process and encoded to Opus and PCMU packets off the event
loop; playing it costs a dictionary lookup per 20 ms frame.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
FRAME_MS = 20

FloatArray = npt.NDArray[np.float64]

# Formant targets (F1, F2, F3 in Hz) of a few vowels; letters map onto them.
_VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (300.0, 2250.0, 3000.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 900.0, 2250.0),
}
_LETTER_VOWEL = {"a": "a", "e": "e", "i": "i", "o": "o", "u": "u", "y": "i"}
_FORMANT_GAIN = (1.0, 0.55, 0.25)
_FORMANT_HALF_WIDTH = (60.0, 80.0, 120.0)


@dataclass(frozen=True)
class Speech:
    """Mono float samples at 48 kHz (a whole number of 20 ms frames) and word timing."""

    samples: FloatArray
    words: tuple[str, ...]
    # The 20 ms frame at which each word starts.
    word_frames: tuple[int, ...]

    @property
    def frames(self) -> int:
        return len(self.samples) // FRAME_SAMPLES


def _syllables(word: str) -> list[str]:
    """The vowel of each syllable of a word (vowel letter groups; at least one)."""
    groups = re.findall(r"[aeiouy]+", word.lower())
    vowels = [_LETTER_VOWEL[g[0]] for g in groups][:4]
    return vowels or ["a"]


def synthesize(text: str, *, f0_hz: float = 140.0, seed: int | None = None) -> Speech:
    """Speech-like audio for ``text`` (deterministic for a given text and seed)."""
    rng = np.random.default_rng(zlib.crc32(text.encode()) if seed is None else seed)
    sr = SAMPLE_RATE
    words = tuple(text.split())
    # Timeline: (start s, end s, vowel) per syllable, plus each word's start.
    syllables: list[tuple[float, float, str]] = []
    word_starts: list[float] = []
    t = 0.12
    for word in words:
        word_starts.append(t)
        for vowel in _syllables(word):
            duration = float(rng.uniform(0.14, 0.22))
            syllables.append((t, t + duration, vowel))
            t += duration + float(rng.uniform(0.0, 0.03))
        t += 0.28 if word[-1] in ",.?!;:" else float(rng.uniform(0.05, 0.1))
    total = t + 0.1
    n = int(np.ceil(total * sr / FRAME_SAMPLES)) * FRAME_SAMPLES
    time = np.arange(n) / sr

    envelope = np.zeros(n)
    noise_env = np.zeros(n)
    centres, targets, accents = [], [], []
    for start, end, vowel in syllables:
        i0, i1 = int(start * sr), int(end * sr)
        length = i1 - i0
        rise, fall = int(length * 0.25), int(length * 0.35)
        shape = np.ones(length)
        shape[:rise] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, rise))
        shape[length - fall :] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, fall))
        envelope[i0:i1] = np.maximum(envelope[i0:i1], shape * float(rng.uniform(0.7, 1.0)))
        burst = min(int(0.035 * sr), length)
        noise_env[i0 : i0 + burst] = np.hanning(burst) * float(rng.uniform(0.1, 0.25))
        centres.append((start + end) / 2)
        targets.append(_VOWELS[vowel])
        accents.append(float(rng.uniform(-0.05, 0.1)))

    # Moving formants: interpolate vowel targets between syllable centres.
    formants = [np.interp(time, centres, [target[k] for target in targets]) for k in range(3)]
    # Pitch: declination over the phrase, an accent per syllable, slow jitter.
    declination = np.interp(time, [0, total], [1.12, 0.85])
    accent = np.interp(time, centres, accents)
    jitter = np.interp(time, np.linspace(0, total, 40), rng.normal(0, 0.015, 40))
    f0 = f0_hz * declination * (1 + accent + jitter)
    phase = 2 * np.pi * np.cumsum(f0) / sr

    voiced = np.zeros(n)
    for k in range(1, int(4500 / f0.min()) + 1):
        fk = k * f0
        gain = sum(
            g / (1 + ((fk - fmt) / width) ** 2)
            for g, fmt, width in zip(_FORMANT_GAIN, formants, _FORMANT_HALF_WIDTH, strict=True)
        )
        voiced += (gain / np.sqrt(k)) * np.sin(k * phase)
    hiss = np.diff(rng.normal(0, 1, n + 1))  # first difference: a high-frequency tilt
    signal = voiced * envelope + hiss * noise_env * np.abs(voiced).max() * 0.3
    signal *= 0.5 / max(np.abs(signal).max(), 1e-9)
    word_frames = tuple(int(start * sr) // FRAME_SAMPLES for start in word_starts)
    return Speech(samples=signal, words=words, word_frames=word_frames)


def to_int16(samples: FloatArray) -> npt.NDArray[np.int16]:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def encode_opus(samples: FloatArray, bitrate: int = 32000) -> list[bytes]:
    """One Opus packet per 20 ms frame (mono, 48 kHz, VoIP mode). CPU work: not on the loop."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = SAMPLE_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = Fraction(1, SAMPLE_RATE)
    codec.options = {"application": "voip"}
    pcm = to_int16(samples)
    frames = len(pcm) // FRAME_SAMPLES
    packets: list[bytes] = []
    for i in range(frames):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i * FRAME_SAMPLES
        frame.time_base = Fraction(1, SAMPLE_RATE)
        packets.extend(bytes(p) for p in codec.encode(frame))
    packets.extend(bytes(p) for p in codec.encode(None))
    return packets[:frames]


def encode_g711(samples: FloatArray, law: str = "pcm_mulaw") -> list[bytes]:
    """One G.711 packet (160 samples at 8 kHz) per 20 ms frame; ``law``: pcm_mulaw/pcm_alaw."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000, frame_size=160)
    codec = cast(AudioCodecContext, av.CodecContext.create(law, "w"))
    codec.sample_rate = 8000
    codec.layout = "mono"
    codec.format = "s16"
    codec.time_base = Fraction(1, 8000)
    frame = av.AudioFrame.from_ndarray(
        to_int16(samples).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = SAMPLE_RATE
    frame.pts = 0
    frame.time_base = Fraction(1, SAMPLE_RATE)
    payloads: list[bytes] = []
    for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
        payloads.extend(bytes(p) for p in codec.encode(chunk))
    data = b"".join(payloads)
    frames = len(samples) // FRAME_SAMPLES
    data = data.ljust(frames * 160, _G711_SILENCE[law])
    return [data[i * 160 : (i + 1) * 160] for i in range(frames)]


_G711_SILENCE = {"pcm_mulaw": b"\xff", "pcm_alaw": b"\xd5"}


@dataclass(frozen=True)
class EncodedLine:
    text: str
    words: tuple[str, ...]
    word_frames: tuple[int, ...]
    payloads: tuple[bytes, ...]


@dataclass(frozen=True)
class CodecVoice:
    """Everything a sender needs for one codec: packet clock, silence and the lines."""

    codec: str
    time_base: Fraction
    samples_per_frame: int
    silence: bytes
    lines: dict[str, EncodedLine]


@dataclass(frozen=True)
class VoiceBank:
    """The voice per negotiated codec (``opus``, ``pcmu``, ``pcma``)."""

    codecs: dict[str, CodecVoice]

    def for_codec(self, codec: str) -> CodecVoice:
        return self.codecs[codec]


def build_voice_bank(lines: Sequence[str]) -> VoiceBank:
    """Synthesise and encode every line (tens of ms per line; run it in a thread)."""
    speech = {line: synthesize(line) for line in lines}

    def encoded(encode: Callable[[FloatArray], list[bytes]]) -> dict[str, EncodedLine]:
        return {
            line: EncodedLine(line, s.words, s.word_frames, tuple(encode(s.samples)))
            for line, s in speech.items()
        }

    opus_silence = encode_opus(np.zeros(FRAME_SAMPLES * 10))[-1]
    g711 = Fraction(1, 8000)
    return VoiceBank(
        {
            "opus": CodecVoice(
                "opus", Fraction(1, SAMPLE_RATE), 960, opus_silence, encoded(encode_opus)
            ),
            "pcmu": CodecVoice(
                "pcmu", g711, 160, b"\xff" * 160, encoded(lambda x: encode_g711(x, "pcm_mulaw"))
            ),
            "pcma": CodecVoice(
                "pcma", g711, 160, b"\xd5" * 160, encoded(lambda x: encode_g711(x, "pcm_alaw"))
            ),
        }
    )


_banks: dict[tuple[str, ...], VoiceBank] = {}


async def prepare_voice(lines: Sequence[str]) -> VoiceBank:
    """The voice bank for ``lines``, built once per process, in a worker thread."""
    key = tuple(lines)
    bank = _banks.get(key)
    if bank is None:
        bank = await asyncio.to_thread(build_voice_bank, key)
        bank = _banks.setdefault(key, bank)
    return bank


def voice_bank(lines: Sequence[str]) -> VoiceBank:
    """The bank ``prepare_voice`` built (the app prepares it at start-up)."""
    return _banks[tuple(lines)]
