"""Finalisation from packet logs (real Opus encoding/decoding, no network): placement on
the session clock, gaps kept as silence, SSRC changes, torn logs, both formats."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from relay.recording import packetlog, render, transcript
from tests.integration.media_helpers import encode_opus

RATE = 48000


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def write_log(path: Path, packets: list[tuple[float, int, int, int, bytes]]) -> None:
    """(arrival, seq, rtp ts, ssrc, payload) records."""
    with open(path, "wb") as f:
        f.write(packetlog.MAGIC)
        for arrival, seq, ts, ssrc, payload in packets:
            f.write(
                packetlog.encode(arrival, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, 0, RATE, payload)
            )


def session_dir(tmp_path: Path, events: list[dict[str, object]]) -> Path:
    d = tmp_path / "is_test"
    d.mkdir()
    (d / "meta.json").write_text(
        json.dumps({"recording_id": "rec_0123456789abcdef", "session_id": "is_test"})
    )
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return d


def clock(active: float, end: float) -> list[dict[str, object]]:
    return [
        {"kind": "clock", "event": "active", "offset": active},
        {"kind": "clock", "event": "end", "offset": end},
    ]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == RATE
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return data.reshape(-1, 2).astype(np.float32) / 32768.0


def loud_runs(x: np.ndarray, threshold: float = 0.02) -> list[tuple[float, float]]:
    """(start, end) seconds of the sounding stretches, in 10 ms blocks."""
    block = RATE // 100
    runs: list[tuple[float, float]] = []
    start = None
    for i in range(0, len(x) - block + 1, block):
        loud = float(np.sqrt(np.mean(x[i : i + block] ** 2))) > threshold
        if loud and start is None:
            start = i
        elif not loud and start is not None:
            runs.append((start / RATE, i / RATE))
            start = None
    if start is not None:
        runs.append((start / RATE, len(x) / RATE))
    return runs


def test_loss_gap_kept_by_rtp_time_and_legs_placed_by_arrival(tmp_path: Path) -> None:
    candidate = encode_opus(tone(440, 4.0))
    interviewer = encode_opus(tone(1000, 2.0))
    d = session_dir(tmp_path, clock(0.5, 6.5))
    rng = np.random.default_rng(1)
    # Candidate from 1.0 s; packets 50..149 (1.0 s .. 3.0 s of its audio) lost: the RTP
    # timestamps say where the rest belongs. Arrival jitter up to 8 ms.
    write_log(
        d / "candidate.rlog",
        [
            (1.0 + i * 0.02 + rng.uniform(0, 0.008), i, 1000 + i * 960, 7, p)
            for i, p in enumerate(candidate)
            if not 50 <= i < 150
        ],
    )
    # The interviewer leg starts late (3.5 s) with its own random timestamp base.
    write_log(
        d / "interviewer.rlog",
        [(3.5 + i * 0.02, 9000 + i, 0xFFFFF000 + i * 960, 9, p) for i, p in enumerate(interviewer)],
    )
    manifest = render.render(str(d), "wav", str(d), False)
    pcm = read_wav(d / "recording.wav")
    assert len(pcm) == 6 * RATE and manifest["duration_s"] == 6.0
    left = loud_runs(pcm[:, 0])
    right = loud_runs(pcm[:, 1])
    # Session clock zero is the "active" mark (0.5 s): candidate audio at 0.5 s, lost
    # between 1.5 and 3.5 s, back until 4.5 s; the interviewer from 3.0 to 5.0 s.
    assert len(left) == 2 and len(right) == 1, (left, right)
    assert left[0][0] == pytest.approx(0.5, abs=0.03)
    assert left[0][1] == pytest.approx(1.5, abs=0.03)
    assert left[1][0] == pytest.approx(3.5, abs=0.03)
    assert left[1][1] == pytest.approx(4.5, abs=0.03)
    assert right[0][0] == pytest.approx(3.0, abs=0.03)
    assert right[0][1] == pytest.approx(5.0, abs=0.03)
    assert manifest["packets_recorded"] == {"candidate": 100, "interviewer": 100}
    assert manifest["gaps_filled"]["candidate"]["count"] == 3  # before, inside, after
    assert manifest["gaps_filled"]["candidate"]["seconds"] == pytest.approx(4.0, abs=0.05)
    assert manifest["durations_s"]["interviewer"] == pytest.approx(2.0, abs=0.03)
    names = [f["name"] for f in manifest["files"]]
    assert names == ["recording.wav", "transcript.jsonl"]
    assert json.loads((d / "manifest.json").read_text()) == manifest


def test_ssrc_change_restarts_the_timeline_at_its_arrival(tmp_path: Path) -> None:
    first = encode_opus(tone(440, 1.0))
    second = encode_opus(tone(440, 1.0))
    d = session_dir(tmp_path, clock(0.0, 4.0))
    records = [(0.5 + i * 0.02, i, 100 + i * 960, 1, p) for i, p in enumerate(first)]
    # A new source 1 s after the first ended, its timestamps unrelated to the first's.
    records += [(2.5 + i * 0.02, 40000 + i, 77 + i * 960, 2, p) for i, p in enumerate(second)]
    write_log(d / "candidate.rlog", records)
    manifest = render.render(str(d), "wav", str(d), False)
    left = loud_runs(read_wav(d / "recording.wav")[:, 0])
    assert [round(a, 1) for a, _ in left] == [0.5, 2.5]
    assert manifest["ssrcs"]["candidate"] == 2


def test_a_sender_that_stops_its_clock_is_reanchored_on_arrival(tmp_path: Path) -> None:
    burst = encode_opus(tone(440, 0.5))
    d = session_dir(tmp_path, clock(0.0, 4.0))
    # RTP time runs on without a jump, but the second burst arrives 2 s after the first.
    records = [(0.2 + i * 0.02, i, i * 960, 5, p) for i, p in enumerate(burst)]
    records += [(2.7 + i * 0.02, 25 + i, (25 + i) * 960, 5, p) for i, p in enumerate(burst)]
    write_log(d / "candidate.rlog", records)
    render.render(str(d), "wav", str(d), False)
    left = loud_runs(read_wav(d / "recording.wav")[:, 0])
    assert len(left) == 2
    assert left[1][0] - left[0][1] == pytest.approx(2.0, abs=0.03)


def test_torn_log_and_no_end_mark_after_a_crash_give_an_ogg_up_to_the_last_packet(
    tmp_path: Path,
) -> None:
    packets = encode_opus(tone(440, 1.0))
    d = session_dir(tmp_path, [])  # the relay died: no clock marks at all
    write_log(
        d / "candidate.rlog", [(1.0 + i * 0.02, i, i * 960, 3, p) for i, p in enumerate(packets)]
    )
    with open(d / "candidate.rlog", "ab") as f:
        f.write(packetlog.encode(2.0, 50, 50 * 960, 3, 0, RATE, b"\x01" * 80)[:30])  # torn
    with open(d / "events.jsonl", "a") as f:
        f.write('{"kind": "transcr')  # a torn line is skipped
    manifest = render.render(str(d), "ogg", "s3://bucket/rec/is_test/", True)
    assert manifest["recovered_after_crash"] is True
    assert manifest["packets_recorded"]["candidate"] == 50
    assert manifest["duration_s"] == pytest.approx(1.0, abs=0.03)
    data = (d / "recording.ogg").read_bytes()
    container = av.open(io.BytesIO(data), mode="r")
    stream = container.streams.audio[0]
    assert stream.codec_context.name == "opus" and stream.channels == 2
    samples = sum(frame.samples for frame in container.decode(stream))
    container.close()
    assert samples / RATE == pytest.approx(1.0, abs=0.03)
    assert not (d / render.SCRATCH).exists()


def _record(kind: str, offset: float, **fields: str) -> dict[str, object]:
    """What the recorder keeps of the upstream event ``kind`` arriving at ``offset``."""
    record = transcript.extract(json.dumps({"type": kind, **fields}), offset)
    assert record is not None, kind
    return record


def test_transcript_lines_from_both_speakers_clamped_into_the_audio() -> None:
    records = [
        _record("input_audio_buffer.speech_started", 1.2, item_id="item_u"),
        _record("input_audio_buffer.speech_stopped", 3.0, item_id="item_u"),
        _record(
            "conversation.item.input_audio_transcription.completed",
            3.4,
            item_id="item_u",
            transcript="Hi",
        ),
        _record("response.output_audio_transcript.delta", 3.6, item_id="item_a", delta="Hel"),
        _record("response.audio_transcript.delta", 3.7, item_id="item_a", delta="lo"),
        _record("response.output_audio_transcript.done", 9.0, item_id="item_a", transcript="Hello"),
    ]
    assert transcript.extract('{"type": "response.done"}', 1.0) is None
    assert transcript.extract("not json", 1.0) is None
    assert not transcript.might_matter('{"type":"session.created"}')
    lines = transcript.build_lines(records, start=1.0, end=8.0)
    assert lines == [
        {"speaker": "candidate", "item_id": "item_u", "start": 0.2, "end": 2.0, "text": "Hi"},
        {"speaker": "interviewer", "item_id": "item_a", "start": 2.6, "end": 7.0, "text": "Hello"},
    ]


def test_a_reply_is_timed_by_its_voice_and_one_cut_short_says_so() -> None:
    """The model writes a reply's transcript ahead of its voice: the line runs from when the
    voice started to when it stopped (output_audio_buffer.*, by response id), and a reply
    the candidate cut short (.cleared) says it was interrupted."""

    assert transcript.might_matter('{"type":"output_audio_buffer.cleared","response_id":"r"}')
    assert transcript.extract('{"type": "output_audio_buffer.started"}', 1.0) is None
    records = [
        # A whole reply: its text done at 2.5 s, its voice from 2.2 s to 6.0 s.
        _record("output_audio_buffer.started", 2.2, response_id="resp_1"),
        _record(
            "response.output_audio_transcript.delta",
            2.0,
            item_id="item_1",
            response_id="resp_1",
            delta="All ",
        ),
        _record(
            "response.output_audio_transcript.done",
            2.5,
            item_id="item_1",
            response_id="resp_1",
            transcript="All of it.",
        ),
        _record("output_audio_buffer.stopped", 6.0, response_id="resp_1"),
        # Cut short at 7.8 s, after the whole text was written.
        _record(
            "response.output_audio_transcript.delta",
            7.0,
            item_id="item_2",
            response_id="resp_2",
            delta="Thank you. Could you",
        ),
        _record("output_audio_buffer.started", 7.3, response_id="resp_2"),
        _record(
            "response.output_audio_transcript.done",
            7.5,
            item_id="item_2",
            response_id="resp_2",
            transcript="Thank you. Could you tell me more?",
        ),
        _record("output_audio_buffer.cleared", 7.8, response_id="resp_2"),
        # Beta: no response id on the transcript: timed by its deltas, as before.
        _record("response.audio_transcript.delta", 9.0, item_id="item_3", delta="Bye"),
        _record("response.audio_transcript.done", 9.4, item_id="item_3", transcript="Bye"),
    ]
    lines = transcript.build_lines(records, start=1.0, end=20.0)
    assert [(x["item_id"], x["start"], x["end"], x.get("interrupted")) for x in lines] == [
        ("item_1", 1.2, 5.0, None),
        ("item_2", 6.3, 6.8, True),
        ("item_3", 8.0, 8.4, None),
    ]


def test_a_clear_after_the_voice_stopped_cut_nothing() -> None:
    records = [
        _record("output_audio_buffer.started", 2.0, response_id="r"),
        _record(
            "response.output_audio_transcript.done",
            2.5,
            item_id="i",
            response_id="r",
            transcript="Done.",
        ),
        _record("output_audio_buffer.stopped", 4.0, response_id="r"),
        _record("output_audio_buffer.cleared", 9.0, response_id="r"),  # at teardown, say
    ]
    [line] = transcript.build_lines(records, start=0.0, end=10.0)
    assert (line["start"], line["end"], line.get("interrupted")) == (2.0, 4.0, None)
