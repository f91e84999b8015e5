"""Finalisation: one session directory's packet logs → a stereo file, a transcript and a
manifest. Runs in a worker process (``relay.recording.service`` owns the pool), so it may
block and burn CPU freely.

Placement on the session clock, per leg and per SSRC (a new SSRC gets a new decoder):
a packet's position is its segment's anchor plus its RTP time since the segment began.
The anchor follows the arrival times: it moves earlier whenever a packet arrives earlier
than RTP time predicts (the first packet was delayed by jitter, or the sender's clock is
fast) and jumps later when a packet arrives more than ``REANCHOR_S`` later than predicted
(the sender stopped its clock, a late leg). RTP time keeps loss and DTX gaps; arrival time
keeps gaps nobody timestamped. Every gap stays silence. Candidate left, interviewer right.
"""

from __future__ import annotations

import hashlib
import json
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from relay.private_files import create_private, open_private, write_private
from relay.recording import packetlog, transcript
from relay.recording.recorder import EVENTS, LEGS, META, leg_file

RATE = 48000
FRAME = 960
REANCHOR_S = 0.2
EARLY_TOLERANCE_S = 0.002
# A hole longer than this between consecutive packets counts as a filled gap.
GAP_MIN_S = 0.03
OPUS_BITRATE = 64000
# libopus tuned for speech ("voip": it favours intelligibility, and costs less CPU than
# the default "audio" mode; an interview is two voices).
OPUS_OPTIONS = {"application": "voip"}
# Samples handed to the encoder at a time: PyAV cuts them into 20 ms Opus frames itself
# (the same packets), one Python round trip per second instead of per 20 ms frame, and
# the round trips were a large part of the render's CPU (docs/benchmarks.md, "Figures
# behind the code's choices").
ENCODE_CHUNK = 50 * FRAME
AUDIO_NAMES = {"ogg": "recording.ogg", "wav": "recording.wav"}
TRANSCRIPT = "transcript.jsonl"
MANIFEST = "manifest.json"
SCRATCH = "render.scratch"
_DECODERS = {"opus": ("opus", 48000), "pcmu": ("pcm_mulaw", 8000), "pcma": ("pcm_alaw", 8000)}
_DECODERS["g722"] = ("g722", 16000)


@dataclass
class LegAudio:
    # (position, length) in samples on the clock of every decoded piece placed
    spans: list[tuple[int, int]] = field(default_factory=list)
    packets: int = 0
    ssrcs: int = 0
    first: float | None = None
    last: float | None = None


def _mono(frame: av.AudioFrame) -> np.ndarray:
    data: np.ndarray = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        mono = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    else:
        mono = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.reshape(-1)
    mono = np.asarray(mono, dtype=np.float32)
    if np.issubdtype(data.dtype, np.integer):
        mono /= 32768.0
    if frame.sample_rate != RATE:
        n = int(round(len(mono) * RATE / frame.sample_rate))
        mono = np.interp(np.linspace(0, len(mono), n, endpoint=False), np.arange(len(mono)), mono)
    return np.asarray(mono, dtype=np.float32)


def _new_decoder(codec: str) -> Any:
    name, rate = _DECODERS[codec]
    ctx: Any = av.CodecContext.create(name, "r")
    ctx.sample_rate = rate
    ctx.layout = "mono"
    return ctx


def place_leg(records: list[packetlog.Record], put: Callable[[int, np.ndarray], None]) -> LegAudio:
    """Decode one leg's packets (in the order written); ``put(position, samples)`` each
    decoded piece at its place on the clock (positions in samples from clock zero)."""
    leg = LegAudio(packets=len(records))
    segment: list[tuple[int, int, packetlog.Record]] = []  # (ext ts, position, record)
    ssrc: int | None = None
    last_ts = 0
    ext = 0
    ext0 = 0
    anchor = 0.0
    scale = 1.0

    def flush() -> None:
        if not segment:
            return
        codec = segment[0][2].codec
        decoder = _new_decoder(codec)
        seen: set[int] = set()
        for ext_ts, pos, rec in sorted(segment, key=lambda s: s[0]):
            if ext_ts in seen:
                continue  # a duplicate
            seen.add(ext_ts)
            try:
                frames = decoder.decode(av.Packet(rec.payload))
            except av.FFmpegError:
                continue  # a corrupt payload stays a gap
            offset = 0
            for frame in frames:
                mono = _mono(frame)
                put(pos + offset, mono)
                leg.spans.append((pos + offset, len(mono)))
                offset += len(mono)
        segment.clear()

    for rec in records:
        if rec.codec not in _DECODERS:
            continue
        arrival_pos = rec.arrival * RATE
        if rec.ssrc != ssrc:
            flush()
            ssrc = rec.ssrc
            leg.ssrcs += 1
            ext = ext0 = 0
            last_ts = rec.timestamp
            anchor = arrival_pos
            scale = RATE / rec.clock_rate if rec.clock_rate else 1.0
        else:
            delta = (rec.timestamp - last_ts) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            ext += delta
            last_ts = rec.timestamp
        predicted = anchor + (ext - ext0) * scale
        early = predicted - arrival_pos
        if early > EARLY_TOLERANCE_S * RATE or -early > REANCHOR_S * RATE:
            anchor = arrival_pos - (ext - ext0) * scale
            predicted = arrival_pos
        segment.append((ext, int(round(predicted)), rec))
        leg.first = rec.arrival if leg.first is None else min(leg.first, rec.arrival)
        leg.last = rec.arrival if leg.last is None else max(leg.last, rec.arrival)
    flush()
    return leg


def _read_events(directory: Path) -> list[dict[str, Any]]:
    path = directory / EVENTS
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if isinstance(item, dict):
            out.append(item)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _coverage(
    spans: list[tuple[int, int]], start_pos: int, total: int
) -> tuple[dict[str, float], float]:
    """Gaps (count, seconds of silence) and seconds of audio of one channel."""
    count, silence, covered, cursor = 0, 0.0, 0, 0
    for pos, length in sorted(spans):
        lo, hi = max(0, pos - start_pos), min(total, pos - start_pos + length)
        if hi <= lo:
            continue
        if lo - cursor > GAP_MIN_S * RATE:
            count += 1
            silence += (lo - cursor) / RATE
        covered += max(0, hi - max(lo, cursor))
        cursor = max(cursor, hi)
    if total - cursor > GAP_MIN_S * RATE:
        count += 1
        silence += (total - cursor) / RATE
    return {"count": count, "seconds": round(silence, 3)}, round(covered / RATE, 3)


def _write_wav(path: Path, pcm: np.ndarray, total: int) -> None:
    with wave.open(str(create_private(path)), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        step = RATE * 10
        for i in range(0, total, step):
            w.writeframes(np.ascontiguousarray(pcm[i : min(total, i + step)]).tobytes())


def _write_ogg(path: Path, pcm: np.ndarray, total: int) -> None:
    out = av.open(str(create_private(path)), "w", format="ogg")
    try:
        stream = out.add_stream("libopus", rate=RATE, layout="stereo")
        stream.bit_rate = OPUS_BITRATE
        stream.codec_context.options = dict(OPUS_OPTIONS)
        for i in range(0, total, ENCODE_CHUNK):
            chunk = np.asarray(pcm[i : min(total, i + ENCODE_CHUNK)])
            short = -chunk.shape[0] % FRAME  # the last frame, completed with silence
            if short:
                chunk = np.pad(chunk, ((0, short), (0, 0)))
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk).reshape(1, -1), format="s16", layout="stereo"
            )
            frame.sample_rate = RATE
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    finally:
        out.close()


def render(directory: str, audio_format: str, location: str, recovered: bool) -> dict[str, Any]:
    """Build the audio file, ``transcript.jsonl`` and ``manifest.json``; return the manifest."""
    root = Path(directory)
    meta = json.loads((root / META).read_text(encoding="utf-8"))
    events = _read_events(root)
    active = end = None
    dropped = dict.fromkeys(LEGS, 0)
    # (lost, resumed, leg) of each leg's absences (resumed None: never came back): the
    # browser's (a resume) and the upstream's (a new upstream leg swapped in)
    away: list[tuple[str, list[float | None]]] = []
    for item in events:
        if item.get("kind") == "clock" and item.get("event") == "active":
            active = float(item["offset"])
        elif item.get("kind") == "clock" and item.get("event") == "end":
            end = float(item["offset"])
        elif item.get("kind") == "clock" and item.get("event") in _LOST:
            away.append((_LOST[item["event"]], [float(item["offset"]), None]))
        elif item.get("kind") == "clock" and item.get("event") in _BACK:
            if away and away[-1][0] == _BACK[item["event"]] and away[-1][1][1] is None:
                away[-1][1][1] = float(item["offset"])
        elif item.get("kind") == "dropped":
            dropped.update({k: int(v) for k, v in item["dropped"].items() if k in dropped})
    records = {}
    for leg in LEGS:
        path = root / leg_file(leg)
        records[leg] = list(packetlog.read(path)) if path.exists() else []
    firsts = [r[0].arrival for r in records.values() if r]
    lasts = [r[-1].arrival for r in records.values() if r]
    start = active if active is not None else (min(firsts) if firsts else 0.0)
    if end is None:  # the relay died: the recording ends with the last packet received
        end = max(lasts) + FRAME / RATE if lasts else start
    start_pos = int(round(start * RATE))
    total = max(0, int(round((end - start) * RATE)))
    # Disk-backed: an hour of stereo 16-bit is 690 MB, more than a worker should hold.
    scratch = root / SCRATCH
    pcm = np.memmap(create_private(scratch), dtype=np.int16, mode="w+", shape=(max(total, 1), 2))
    legs: dict[str, LegAudio] = {}
    gaps: dict[str, dict[str, float]] = {}
    durations: dict[str, float] = {}
    try:
        for channel, leg in enumerate(LEGS):

            def put(pos: int, samples: np.ndarray, channel: int = channel) -> None:
                begin = pos - start_pos
                lo, hi = max(0, begin), min(total, begin + len(samples))
                if hi > lo:
                    chunk = samples[lo - begin : hi - begin]
                    pcm[lo:hi, channel] = (np.clip(chunk, -1.0, 1.0) * 32767).astype(np.int16)

            legs[leg] = audio = place_leg(records[leg], put)
            gaps[leg], durations[leg] = _coverage(audio.spans, start_pos, total)
        audio_name = AUDIO_NAMES[audio_format]
        if audio_format == "wav":
            _write_wav(root / audio_name, pcm, total)
        else:
            _write_ogg(root / audio_name, pcm, total)
    finally:
        # Unlinking a mapped file is fine on POSIX; the mapping goes with the worker's GC.
        scratch.unlink(missing_ok=True)
    lines = transcript.build_lines([e for e in events if e.get("kind") == "transcript"], start, end)
    with open_private(root / TRANSCRIPT, "w") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    files = []
    for name in (audio_name, TRANSCRIPT):
        files.append(
            {"name": name, "bytes": (root / name).stat().st_size, "sha256": _sha256(root / name)}
        )
    manifest: dict[str, Any] = {
        "recording_id": meta["recording_id"],
        "session_id": meta["session_id"],
        # A session taken over by another member is recorded in parts (1, 2, ...).
        "part": int(meta.get("part", 1)),
        "created_at": meta.get("created_at"),
        "format": audio_format,
        "sample_rate": RATE,
        "channels": {"left": "candidate", "right": "interviewer"},
        "duration_s": round(total / RATE, 3),
        "durations_s": durations,
        "files": files,
        "packets_recorded": {leg: legs[leg].packets for leg in LEGS},
        "ssrcs": {leg: legs[leg].ssrcs for leg in LEGS},
        "gaps_filled": gaps,
        # The browser's leg away and resumed, or the upstream's replaced (docs/operations.md,
        # "Continuity"): silence in the file, not charged to the candidate.
        "disconnections": _disconnections(away, start, end),
        "packets_dropped": dropped,
        "transcript_lines": len(lines),
        "storage": location,
        "recovered_after_crash": recovered,
    }
    write_private(root / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


# The clock marks of a leg's absence (relay.media.bridge), by the leg they are about.
_LOST = {"browser_lost": "browser", "upstream_lost": "upstream"}
_BACK = {"browser_resumed": "browser", "upstream_resumed": "upstream"}


def _disconnections(
    away: list[tuple[str, list[float | None]]], start: float, end: float
) -> list[dict[str, Any]]:
    """Each absence of a leg (``leg``: the browser's, or the upstream's while a new one was
    opened): from its loss to its return (or the end), in seconds from the start of the
    file."""
    span = max(0.0, end - start)
    out: list[dict[str, Any]] = []
    for leg, (lost, resumed) in away:
        assert lost is not None
        back = end if resumed is None else resumed
        begin_s = round(min(span, max(0.0, lost - start)), 3)
        end_s = round(min(span, max(0.0, back - start)), 3)
        out.append(
            {
                "start_s": begin_s,
                "end_s": end_s,
                "duration_s": round(end_s - begin_s, 3),
                "resumed": resumed is not None,
                "leg": leg,
            }
        )
    return out
