"""The simulator's energy VAD on synthetic signals (20 ms frames on the audio clock)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from relay.upstream.simulator.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
    VadParams,
    frame_rms,
)

SR = 48000
FRAME = 960


def _tone(seconds: float, dbfs: float, freq: float = 220.0) -> npt.NDArray[np.float64]:
    t = np.arange(int(seconds * SR)) / SR
    # A sine's RMS is amplitude / sqrt(2).
    amplitude = 10 ** (dbfs / 20) * np.sqrt(2)
    return np.asarray(amplitude * np.sin(2 * np.pi * freq * t), dtype=np.float64)


def _silence(seconds: float) -> npt.NDArray[np.float64]:
    return np.zeros(int(seconds * SR))


def _run(vad: EnergyVad, signal: npt.NDArray[np.float64]) -> list[VadEvent]:
    pcm = (np.clip(signal, -1, 1) * 32767).astype(np.int16)
    events = []
    for i in range(len(pcm) // FRAME):
        event = vad.process(frame_rms(pcm[i * FRAME : (i + 1) * FRAME]), 20)
        if event is not None:
            events.append(event)
    return events


def test_frame_rms_of_int16_and_float() -> None:
    full = np.full(FRAME, 32767, dtype=np.int16)
    assert abs(frame_rms(full) - 1.0) < 1e-3
    assert frame_rms(np.zeros(FRAME, dtype=np.int16)) == 0.0
    assert abs(frame_rms(_tone(0.02, -20.0)) - 0.1) < 0.005


def test_silence_never_triggers() -> None:
    assert _run(EnergyVad(), _silence(3.0)) == []


def test_one_utterance_gives_start_with_prefix_padding_and_stop_after_silence() -> None:
    vad = EnergyVad(VadParams(prefix_padding_ms=300, silence_duration_ms=500))
    events = _run(vad, np.concatenate([_silence(1.0), _tone(1.5, -20.0), _silence(1.0)]))
    assert events == [
        SpeechStarted(audio_start_ms=700, onset_ms=1000),
        SpeechStopped(audio_end_ms=2500, onset_ms=1000),
    ]
    assert not vad.speaking


def test_stop_waits_for_the_silence_duration() -> None:
    vad = EnergyVad(VadParams(silence_duration_ms=500))
    events = _run(vad, np.concatenate([_tone(1.0, -20.0), _silence(0.48)]))
    assert [type(e) for e in events] == [SpeechStarted]
    assert vad.speaking
    events = _run(vad, _silence(0.04))
    assert events == [SpeechStopped(audio_end_ms=1000, onset_ms=0)]


def test_prefix_padding_is_clamped_at_the_start_of_the_audio() -> None:
    events = _run(EnergyVad(VadParams(prefix_padding_ms=300)), _tone(0.5, -20.0))
    assert events == [SpeechStarted(audio_start_ms=0, onset_ms=0)]


def test_pauses_shorter_than_the_silence_duration_do_not_split_speech() -> None:
    signal = np.concatenate(
        [_tone(0.4, -20.0), _silence(0.3), _tone(0.4, -20.0), _silence(0.3), _tone(0.4, -20.0)]
    )
    events = _run(
        EnergyVad(VadParams(silence_duration_ms=500)), np.concatenate([signal, _silence(1)])
    )
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[1] == SpeechStopped(audio_end_ms=1800, onset_ms=0)


def test_clicks_shorter_than_min_speech_are_ignored() -> None:
    signal = np.concatenate([_silence(0.5), _tone(0.04, -10.0), _silence(1.0)])
    assert _run(EnergyVad(VadParams(min_speech_ms=80)), signal) == []


def test_threshold_maps_onto_a_level() -> None:
    assert VadParams(threshold=0.5).threshold_dbfs == -35.0
    quiet = np.concatenate([_tone(1.0, -40.0), _silence(1.0)])
    assert _run(EnergyVad(VadParams(threshold=0.5)), quiet) == []
    events = _run(EnergyVad(VadParams(threshold=0.3)), quiet)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_params_from_turn_detection() -> None:
    params = VadParams.from_turn_detection(
        {
            "type": "server_vad",
            "threshold": 0.7,
            "prefix_padding_ms": 100,
            "silence_duration_ms": 900,
        }
    )
    assert (params.threshold, params.prefix_padding_ms, params.silence_duration_ms) == (
        0.7,
        100,
        900,
    )
    eager = VadParams.from_turn_detection({"type": "semantic_vad", "eagerness": "high"})
    patient = VadParams.from_turn_detection({"type": "semantic_vad", "eagerness": "low"})
    assert eager.silence_duration_ms < patient.silence_duration_ms
