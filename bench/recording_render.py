"""CPU of finalising one recording (what a render worker process spends), per second of
interview: a synthetic session of two legs of speech-like Opus with realistic arrival
jitter, rendered to Ogg/Opus and to WAV.

    .venv/bin/python -m bench.recording_render --seconds 120
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from relay.recording import packetlog, render

RATE = 48000
FRAME = 960


def speech(seconds: float, f0: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * f0 * t
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.0, None) ** 0.5
    return (0.2 * 32767 * voice * syllables / 2.6).astype(np.int16)


def encode(pcm: np.ndarray) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 32000
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = RATE
    out: list[bytes] = []
    for i in range(len(pcm) // FRAME):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * FRAME : (i + 1) * FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = i * FRAME
        out.extend(bytes(p) for p in codec.encode(frame))
    return out


def session(root: Path, seconds: float) -> None:
    root.mkdir()
    (root / "meta.json").write_text(json.dumps({"recording_id": "rec_b", "session_id": "b"}))
    marks = [
        {"kind": "clock", "event": "active", "offset": 0.0},
        {"kind": "clock", "event": "end", "offset": seconds},
    ]
    (root / "events.jsonl").write_text("".join(json.dumps(m) + "\n" for m in marks))
    rng = np.random.default_rng(0)
    for leg, f0 in (("candidate", 140.0), ("interviewer", 210.0)):
        packets = encode(speech(seconds, f0))
        with open(root / f"{leg}.rlog", "wb") as f:
            f.write(packetlog.MAGIC)
            for i, payload in enumerate(packets):
                arrival = i * 0.02 + rng.uniform(0, 0.01)
                f.write(packetlog.encode(arrival, i & 0xFFFF, i * FRAME, 1, 0, RATE, payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds: 1..3600")
    base = Path(tempfile.mkdtemp(prefix="bench-render-"))
    try:
        for fmt in ("ogg", "wav"):
            root = base / fmt
            session(root, args.seconds)
            cpu, wall = time.process_time(), time.perf_counter()
            render.render(str(root), fmt, str(root), False)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                json.dumps(
                    {
                        "format": fmt,
                        "interview_s": args.seconds,
                        "cpu_s": round(cpu, 3),
                        "cpu_ms_per_interview_s": round(1000 * cpu / args.seconds, 2),
                        "wall_s": round(wall, 3),
                    }
                )
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
