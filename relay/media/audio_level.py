"""RFC 6465 audio level of a decoded frame, computed with numpy."""

from __future__ import annotations

import math

import numpy as np
from av import AudioFrame

MIN_LEVEL_DBOV = -127
_FULL_SCALE_SQ = 32767.0 * 32767.0


def compute_audio_level_dbov(frame: AudioFrame) -> int:
    """The frame's level in -dBov (0 loudest, -127 silence), RFC 6465 Appendix A.

    Same contract as ``aiortc.rtp.compute_audio_level_dbov`` for the packed s16 frames
    aiortc's decoders produce, with numpy's vectorised arithmetic in place of a Python
    loop over every sample (the saving: docs/benchmarks.md, "Figures behind the code's
    choices"). Unlike aiortc's version it divides by
    the number of samples of *all* channels, so stereo levels are not 3 dB too loud.
    """
    count = frame.samples * len(frame.layout.channels)
    samples = np.frombuffer(memoryview(frame.planes[0]), dtype=np.int16, count=count)
    if count == 0:
        return MIN_LEVEL_DBOV
    as_float = samples.astype(np.float32)
    mean_square = float(np.dot(as_float, as_float)) / count
    if mean_square <= 0.0:
        return MIN_LEVEL_DBOV
    db = 10.0 * math.log10(mean_square / _FULL_SCALE_SQ)
    return round(min(0.0, max(float(MIN_LEVEL_DBOV), db)))
