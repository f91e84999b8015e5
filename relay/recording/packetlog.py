"""The append-only packet log of one recorded leg (``candidate.rlog``, ``interviewer.rlog``).

The recorder writes every received RTP payload as it came (still encoded), so the file
is cheap to write and a crash loses only what was not yet flushed. Finalisation rebuilds
the audio from it. Layout: the magic ``RLOG1\\n``, then records, each

    <u32 payload length> <f64 arrival offset s> <u16 seq> <u32 rtp ts> <u32 ssrc>
    <u8 codec> <u32 clock rate> <payload>

little-endian. A torn last record (the process died mid-write) is ignored by the reader.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"RLOG1\n"
HEADER = struct.Struct("<IdHIIBI")
CODECS: tuple[str, ...] = ("opus", "pcmu", "pcma", "g722")
_CODEC_IDS = {name: i for i, name in enumerate(CODECS)}
# A payload longer than this is not an audio packet: the file is corrupt from here on.
MAX_PAYLOAD = 1 << 16


@dataclass(frozen=True, slots=True)
class Record:
    arrival: float
    seq: int
    timestamp: int
    ssrc: int
    codec: str
    clock_rate: int
    payload: bytes


def codec_id(name: str) -> int | None:
    return _CODEC_IDS.get(name)


def encode(
    arrival: float,
    seq: int,
    timestamp: int,
    ssrc: int,
    codec: int,
    clock_rate: int,
    payload: bytes,
) -> bytes:
    return HEADER.pack(len(payload), arrival, seq, timestamp, ssrc, codec, clock_rate) + payload


def read(path: Path) -> Iterator[Record]:
    """The complete records of ``path`` in the order they were written."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        return
    pos = len(MAGIC)
    size = HEADER.size
    while pos + size <= len(data):
        length, arrival, seq, ts, ssrc, codec, rate = HEADER.unpack_from(data, pos)
        end = pos + size + length
        if length > MAX_PAYLOAD or end > len(data) or codec >= len(CODECS):
            return  # torn or corrupt tail
        yield Record(arrival, seq, ts, ssrc, CODECS[codec], rate, data[pos + size : end])
        pos = end
