"""The simulator's reply voice: audible, speech-like (not silence, not a pure tone), encodable."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

from relay.upstream.simulator.voice import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    build_voice_bank,
    encode_g711,
    encode_opus,
    synthesize,
)

LINE = "Thank you. Could you tell me a little more about that?"


def _frame_rms(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    frames = x[: len(x) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    return np.asarray(np.sqrt((frames**2).mean(axis=1)), dtype=np.float64)


def test_speech_is_audible_and_frame_aligned() -> None:
    speech = synthesize(LINE)
    assert len(speech.samples) % FRAME_SAMPLES == 0
    rms = float(np.sqrt(np.mean(speech.samples**2)))
    assert 0.05 < rms < 0.5
    assert np.abs(speech.samples).max() <= 0.5 + 1e-9
    # Pauses exist: some frames are near silent, many are loud.
    levels = _frame_rms(speech.samples)
    assert (levels < 0.01).mean() > 0.1
    assert (levels > 0.05).mean() > 0.3


def test_speech_is_not_a_pure_tone() -> None:
    x = synthesize(LINE).samples
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    # A tone puts nearly all its energy in one bin; speech spreads it out.
    assert power.max() / power.sum() < 0.05
    # Energy sits in the speech band, across several bands (harmonics and formants).
    bands = [(80, 300), (300, 1000), (1000, 4000)]
    shares = [power[(freqs >= lo) & (freqs < hi)].sum() / power.sum() for lo, hi in bands]
    assert all(share > 0.02 for share in shares), shares
    assert sum(shares) > 0.9


def test_envelope_moves_at_syllable_rate_and_formants_move() -> None:
    x = synthesize(LINE).samples
    levels = _frame_rms(x)
    envelope = np.abs(np.fft.rfft(levels - levels.mean()))
    rate = np.fft.rfftfreq(len(levels), 0.02)[1:][envelope[1:].argmax()]
    assert 2.0 <= rate <= 8.0
    # Spectral centroid of voiced frames (below 4 kHz) varies as vowels change.
    frames = x[: len(x) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    freqs = np.fft.rfftfreq(FRAME_SAMPLES, 1 / SAMPLE_RATE)
    band = freqs < 4000
    centroids = []
    for frame, level in zip(frames, levels, strict=True):
        if level > 0.08:
            p = np.abs(np.fft.rfft(frame))[band] ** 2
            centroids.append(float((p * freqs[band]).sum() / p.sum()))
    assert len(centroids) > 20
    assert max(centroids) - min(centroids) > 300


def test_synthesis_is_deterministic_and_word_timing_is_ordered() -> None:
    a, b = synthesize(LINE), synthesize(LINE)
    assert np.array_equal(a.samples, b.samples)
    assert a.words == tuple(LINE.split())
    assert list(a.word_frames) == sorted(a.word_frames)
    assert a.word_frames[-1] < a.frames


def _decode(codec: str, rate: int, payloads: list[bytes]) -> npt.NDArray[np.float64]:
    decoder = av.CodecContext.create(codec, "r")
    if codec != "opus":
        decoder.sample_rate = rate  # type: ignore[attr-defined]
        decoder.layout = "mono"  # type: ignore[attr-defined]
    chunks = []
    for i, payload in enumerate(payloads):
        packet = av.Packet(payload)
        packet.pts = i * rate // 50
        packet.time_base = Fraction(1, rate)
        for frame in decoder.decode(packet):  # type: ignore[attr-defined]
            data = frame.to_ndarray().ravel()
            chunks.append(data / 32768 if data.dtype == np.int16 else data.astype(np.float64))
    return np.concatenate(chunks)


def _rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x**2)))


def test_opus_packets_decode_back_to_the_speech_level() -> None:
    speech = synthesize("Hello there, candidate.")
    packets = encode_opus(speech.samples)
    assert len(packets) == speech.frames
    audio = _decode("opus", SAMPLE_RATE, packets)
    assert 0.6 < _rms(audio) / _rms(speech.samples) < 1.5


def test_g711_packets_are_20_ms_at_8_khz_and_decode_back() -> None:
    speech = synthesize("Hello there, candidate.")
    for law in ("pcm_mulaw", "pcm_alaw"):
        packets = encode_g711(speech.samples, law)
        assert len(packets) == speech.frames
        assert {len(p) for p in packets} == {160}
        audio = _decode(law, 8000, packets)
        assert len(audio) == speech.frames * 160
        assert 0.7 < _rms(audio) / _rms(speech.samples) < 1.3


def test_voice_bank_has_every_codec_and_line() -> None:
    bank = build_voice_bank(["One line.", "Another line here."])
    for codec in ("opus", "pcmu", "pcma"):
        voice = bank.for_codec(codec)
        assert set(voice.lines) == {"One line.", "Another line here."}
        assert voice.silence not in voice.lines["One line."].payloads[10:20]
    assert bank.for_codec("opus").samples_per_frame == 960
    assert bank.for_codec("pcmu").time_base == Fraction(1, 8000)
