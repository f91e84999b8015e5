"""Pure parts of the forwarding fast path: demultiplexing and RTP header extensions."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from relay.media.fastpath import (
    extension_block,
    extension_blocks_by_level,
    find_one_byte_extension,
    is_rtp,
)
from relay.media.sdp import AUDIO_LEVEL_EXTENSION, MID_EXTENSION, rtp_leg


def test_is_rtp_tells_rtp_from_rtcp_dtls_and_stun() -> None:
    rtp = struct.pack("!BBHII", 0x80, 111, 1, 2, 3) + b"x"
    assert is_rtp(rtp)
    assert is_rtp(struct.pack("!BBHII", 0x80, 0x80 | 111, 1, 2, 3))  # marker set
    for second in (200, 201, 202, 203, 205, 206):  # SR, RR, SDES, BYE, RTPFB, PSFB
        assert not is_rtp(bytes((0x80, second)) + b"\x00" * 10)
    assert not is_rtp(b"\x16\xfe\xfd" + b"\x00" * 20)  # DTLS
    assert not is_rtp(b"\x00\x01\x00\x00" + b"\x00" * 16)  # STUN
    assert not is_rtp(b"\x80\x6f\x00")  # too short


def test_extension_block_parses_back_with_aiortc() -> None:
    block = extension_block([(3, b"0"), (7, bytes((0x80 | 42,)))])
    assert len(block) % 4 == 0 and block[:2] == b"\xbe\xde"
    header = struct.pack("!BBHII", 0x90, 111, 5, 960, 77)
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=3, uri=MID_EXTENSION),
                RTCRtpHeaderExtensionParameters(id=7, uri=AUDIO_LEVEL_EXTENSION),
            ]
        )
    )
    packet = RtpPacket.parse(header + block + b"opus", ext_map)
    assert packet.extensions.mid == "0"
    assert packet.extensions.audio_level == (True, 42)
    assert packet.payload == b"opus"
    assert extension_block([]) == b""


def test_find_one_byte_extension_skips_padding_and_stops_at_reserved() -> None:
    data = b"\x00\x00" + bytes(((5 << 4) | 1,)) + b"ab" + bytes(((2 << 4),)) + b"\x9f"
    assert find_one_byte_extension(data, 0, len(data), 2) == 0x9F
    assert find_one_byte_extension(data, 0, len(data), 5) == ord("a")
    assert find_one_byte_extension(data, 0, len(data), 9) is None
    reserved = b"\xf0" + bytes(((2 << 4),)) + b"\x10"
    assert find_one_byte_extension(reserved, 0, len(reserved), 2) is None
    truncated = bytes(((2 << 4),))
    assert find_one_byte_extension(truncated, 0, 1, 2) is None


SDP = """v=0\r
o=- 1 1 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE a0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r
c=IN IP4 0.0.0.0\r
a=mid:a0\r
a=rtpmap:111 opus/48000/2\r
a=rtpmap:0 PCMU/8000\r
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r
a=extmap:9 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r
a=sendrecv\r
a=rtcp-mux\r
"""


def test_rtp_leg_reads_payload_type_mid_and_extension_ids() -> None:
    leg = rtp_leg(SDP)
    assert leg.payload_type == 111 and leg.mid == "a0"
    assert leg.extensions[MID_EXTENSION] == 4
    assert leg.extensions[AUDIO_LEVEL_EXTENSION] == 9
    no_audio = rtp_leg("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")
    assert no_audio.payload_type is None and no_audio.extensions == {}


@pytest.mark.parametrize("base", [[], [(3, b"0")], [(3, b"audio"), (5, b"ab")]])
def test_extension_blocks_by_level_match_full_builds(base: list[tuple[int, bytes]]) -> None:
    blocks = extension_blocks_by_level(base, 7)
    assert blocks == [extension_block([*base, (7, bytes((level,)))]) for level in range(256)]
