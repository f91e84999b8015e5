"""An energy voice-activity detector driven by the session's turn-detection settings (pure).

Time is the received-audio clock (milliseconds of audio fed so far), not wall time, so
results depend only on the audio. ``threshold`` (0..1, OpenAI's knob) maps linearly onto a
frame-RMS level in dBFS: 0 → -60 dBFS, 0.5 → -35 dBFS, 1 → -10 dBFS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# semantic_vad has no silence knob; its eagerness picks one.
_EAGERNESS_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 250}


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    # Voiced audio needed before speech counts as started (ignores clicks).
    min_speech_ms: int = 80

    @property
    def threshold_dbfs(self) -> float:
        return -60.0 + 50.0 * self.threshold

    @classmethod
    def from_turn_detection(cls, turn: Mapping[str, Any]) -> VadParams:
        if turn.get("type") == "semantic_vad":
            return cls(
                silence_duration_ms=_EAGERNESS_SILENCE_MS.get(
                    str(turn.get("eagerness", "auto")), 500
                )
            )
        return cls(
            threshold=float(turn.get("threshold", 0.5)),
            prefix_padding_ms=int(turn.get("prefix_padding_ms", 300)),
            silence_duration_ms=int(turn.get("silence_duration_ms", 500)),
        )


@dataclass(frozen=True)
class SpeechStarted:
    # Where the committed audio starts: the onset minus the prefix padding (>= 0).
    audio_start_ms: int
    onset_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    # The end of the last voiced frame.
    audio_end_ms: int
    onset_ms: int


VadEvent = SpeechStarted | SpeechStopped


def frame_rms(pcm: npt.NDArray[Any]) -> float:
    """RMS of an int16 (or float) frame, as a fraction of full scale (0..1)."""
    if pcm.size == 0:
        return 0.0
    x = pcm.astype(np.float64)
    if pcm.dtype == np.int16:
        x /= 32768.0
    return float(np.sqrt(np.mean(x * x)))


def dbfs(rms: float) -> float:
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


class EnergyVad:
    def __init__(self, params: VadParams | None = None) -> None:
        self.params = params or VadParams()
        self.position_ms = 0
        self.speaking = False
        self._run_start: int | None = None
        self._onset = 0
        self._last_voiced_end = 0

    def process(self, rms: float, duration_ms: int) -> VadEvent | None:
        """Feed one frame's RMS; returns a start or stop when this frame decides one."""
        start = self.position_ms
        end = self.position_ms = start + duration_ms
        voiced = dbfs(rms) >= self.params.threshold_dbfs
        if not self.speaking:
            if not voiced:
                self._run_start = None
                return None
            if self._run_start is None:
                self._run_start = start
            if end - self._run_start < self.params.min_speech_ms:
                return None
            self.speaking = True
            self._onset = self._run_start
            self._last_voiced_end = end
            self._run_start = None
            return SpeechStarted(
                audio_start_ms=max(0, self._onset - self.params.prefix_padding_ms),
                onset_ms=self._onset,
            )
        if voiced:
            self._last_voiced_end = end
            return None
        if end - self._last_voiced_end >= self.params.silence_duration_ms:
            self.speaking = False
            return SpeechStopped(audio_end_ms=self._last_voiced_end, onset_ms=self._onset)
        return None
