"""SDP checks the relay needs: validating a browser's offer, reading negotiated codecs.

The browser's offer is untrusted input. ``validate_offer`` checks it with a small,
bounded line parser *before* aiortc sees it, so hostile input (huge lines, NULs,
thousands of sections or candidates) is refused with a reason a developer can act on,
and aiortc's own parser only ever reads an offer of the expected shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiortc.sdp import SessionDescription

from relay.errors import ApiError

MAX_LINE_CHARS = 1024
MAX_LINES = 400
MAX_CANDIDATES_PER_SECTION = 32

# RFC 3551 static payload types aiortc can decode.
_STATIC_PAYLOAD_TYPES = {0: "pcmu", 8: "pcma", 9: "g722"}
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE = re.compile(r"^[a-z]=")
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
_FINGERPRINT = re.compile(
    r"^(sha-1|sha-224|sha-256|sha-384|sha-512) ([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){15,63})$",
    re.IGNORECASE,
)
_RTPMAP = re.compile(r"^(\d{1,3}) ([A-Za-z0-9_.-]{1,32})/(\d{1,6})(?:/\d{1,2})?$")


class InvalidOffer(ValueError):
    """The offer is not one the relay can answer; ``reason`` says why (safe to show)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def invalid_offer_error(exc: InvalidOffer) -> ApiError:
    """The 400 a browser gets for an offer the relay will not answer."""
    return ApiError(
        400, "invalid_offer", f"Invalid SDP offer: {exc.reason}", details={"param": "sdp"}
    )


@dataclass
class _Section:
    kind: str
    port: int
    proto: str
    fmt: list[str]
    line_no: int
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def values(self, name: str) -> list[str | None]:
        return [v for k, v in self.attributes if k == name]


@dataclass(frozen=True)
class OfferSummary:
    """What the relay learned from a valid offer."""

    # Audio codec names in the browser's order of preference, e.g. ("opus", "pcmu").
    audio_codecs: tuple[str, ...]
    opus_payload_type: int
    data_channel_proto: str


def validate_offer(sdp: object, *, max_bytes: int) -> OfferSummary:
    """Check a browser offer; raise ``InvalidOffer`` with a reason, or summarise it."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise InvalidOffer("sdp must be a non-empty string")
    size = len(sdp.encode("utf-8", errors="replace"))
    if size > max_bytes:
        raise InvalidOffer(f"the offer is {size} bytes; at most {max_bytes} are accepted")
    bad = _FORBIDDEN_CHARS.search(sdp)
    if bad is not None:
        raise InvalidOffer(f"the offer contains a control character (0x{ord(bad.group()):02x})")
    lines = re.split(r"\r?\n", sdp.rstrip("\r\n"))
    if len(lines) > MAX_LINES:
        raise InvalidOffer(f"the offer has {len(lines)} lines; at most {MAX_LINES} are accepted")
    session, sections = _parse_lines(lines)
    _check_header(lines, session)
    audio = [s for s in sections if s.kind == "audio"]
    application = [s for s in sections if s.kind == "application"]
    if len(audio) != 1 or len(application) != 1 or len(sections) != 2:
        kinds = ", ".join(s.kind for s in sections[:8]) or "none"
        more = ", ..." if len(sections) > 8 else ""
        raise InvalidOffer(
            "expected exactly one audio and one application (data channel) section; "
            f"got {len(sections)} ({kinds}{more})"
        )
    for section in sections:
        _check_transport(section, session)
    summary = _check_audio(audio[0])
    data_proto = _check_application(application[0])
    try:
        SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises assorted types on odd input
        raise InvalidOffer(f"the offer could not be parsed ({type(exc).__name__})") from None
    return OfferSummary(
        audio_codecs=summary[0], opus_payload_type=summary[1], data_channel_proto=data_proto
    )


def _parse_lines(lines: list[str]) -> tuple[_Section, list[_Section]]:
    session = _Section(kind="session", port=0, proto="", fmt=[], line_no=0)
    sections: list[_Section] = []
    current = session
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_CHARS:
            raise InvalidOffer(
                f"line {number} is {len(line)} characters long; at most {MAX_LINE_CHARS}"
            )
        if not _LINE.match(line):
            raise InvalidOffer(f"line {number} is not of the form <letter>=<value>")
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise InvalidOffer(f"line {number}: malformed m= line")
            current = _Section(
                kind=parts[0].lower(),
                port=int(parts[1].split("/")[0]),
                proto=parts[2],
                fmt=parts[3:],
                line_no=number,
            )
            sections.append(current)
            if len(sections) > 2:
                # Stop early: a hostile offer may carry thousands of sections.
                raise InvalidOffer(
                    "expected exactly one audio and one application (data channel) section; "
                    f"got more than 2 (line {number})"
                )
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            current.attributes.append((name, attr_value if _ else None))
    return session, sections


def _check_header(lines: list[str], session: _Section) -> None:
    if lines[0] != "v=0":
        raise InvalidOffer("the offer must start with v=0")
    if not any(line.startswith("o=") for line in lines[:8]):
        raise InvalidOffer("the offer has no o= line")


def _attribute(section: _Section, session: _Section, name: str) -> str | None:
    """A media-level attribute, else the session-level one (RFC 8866 inheritance)."""
    for values in (section.values(name), session.values(name)):
        for value in values:
            if value:
                return value
    return None


def _check_transport(section: _Section, session: _Section) -> None:
    where = f"{section.kind} section (line {section.line_no})"
    if section.port == 0:
        raise InvalidOffer(f"the {where} is disabled (port 0)")
    ufrag = _attribute(section, session, "ice-ufrag")
    pwd = _attribute(section, session, "ice-pwd")
    if not ufrag or not pwd:
        raise InvalidOffer(f"the {where} has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
    if not 4 <= len(ufrag) <= 256 or not _ICE_CHARS.match(ufrag):
        raise InvalidOffer(f"the {where} has an invalid a=ice-ufrag")
    if not 22 <= len(pwd) <= 256 or not _ICE_CHARS.match(pwd):
        raise InvalidOffer(f"the {where} has an invalid a=ice-pwd")
    fingerprint = _attribute(section, session, "fingerprint")
    if not fingerprint:
        raise InvalidOffer(f"the {where} has no DTLS fingerprint (a=fingerprint)")
    if not _FINGERPRINT.match(fingerprint):
        raise InvalidOffer(f"the {where} has a malformed a=fingerprint")
    setup = _attribute(section, session, "setup")
    if setup is not None and setup not in ("actpass", "active", "passive"):
        raise InvalidOffer(f"the {where} has an invalid a=setup ({setup[:16]})")
    candidates = len(section.values("candidate"))
    if candidates > MAX_CANDIDATES_PER_SECTION:
        raise InvalidOffer(
            f"the {where} lists {candidates} ICE candidates; at most "
            f"{MAX_CANDIDATES_PER_SECTION} are accepted"
        )


def _check_audio(section: _Section) -> tuple[tuple[str, ...], int]:
    if "SAVP" not in section.proto:
        raise InvalidOffer(f"the audio section must use secure RTP, not {section.proto[:32]}")
    payload_types: list[int] = []
    for fmt in section.fmt:
        if not fmt.isdigit() or int(fmt) > 127:
            raise InvalidOffer(f"the audio section lists an invalid payload type ({fmt[:8]})")
        payload_types.append(int(fmt))
    names = dict(_STATIC_PAYLOAD_TYPES)
    for value in section.values("rtpmap"):
        match = _RTPMAP.match(value or "")
        if match is None:
            raise InvalidOffer("the audio section has a malformed a=rtpmap line")
        pt, name, clock = int(match.group(1)), match.group(2).lower(), int(match.group(3))
        if name == "opus" and clock != 48000:
            continue
        names[pt] = name
    codecs = tuple(names.get(pt, f"pt{pt}") for pt in payload_types)
    opus = [pt for pt in payload_types if names.get(pt) == "opus"]
    if not opus:
        raise InvalidOffer("the audio section does not offer Opus (opus/48000/2)")
    directions = [
        name
        for name, _ in section.attributes
        if name in ("sendrecv", "sendonly", "recvonly", "inactive")
    ]
    if directions and directions[-1] != "sendrecv":
        raise InvalidOffer(
            f"the audio section must be sendrecv (microphone and speaker), not {directions[-1]}"
        )
    return codecs, opus[0]


def _check_application(section: _Section) -> str:
    if section.proto == "UDP/DTLS/SCTP" or section.proto == "TCP/DTLS/SCTP":
        if section.fmt != ["webrtc-datachannel"]:
            raise InvalidOffer("the application section must carry webrtc-datachannel")
    elif section.proto != "DTLS/SCTP":
        raise InvalidOffer(
            f"the application section must be a data channel, not {section.proto[:32]}"
        )
    return section.proto


# ----------------------------------------------------------------------- negotiated


@dataclass(frozen=True)
class AudioNegotiation:
    """The audio codecs of a description, in its order (the first is the one used)."""

    codecs: tuple[str, ...]
    opus_payload_types: frozenset[int]

    @property
    def primary(self) -> str | None:
        return self.codecs[0] if self.codecs else None

    @property
    def is_opus(self) -> bool:
        return self.primary == "opus"


SUPPORTED_AUDIO = frozenset({"opus", "pcmu", "pcma", "g722"})


def audio_negotiation(sdp: str) -> AudioNegotiation:
    """Codecs of the first audio section of a (trusted or validated) description.

    Only codecs aiortc can handle are listed, so the first is what aiortc will send
    with; for an answer it is also what the far end is expected to send.
    """
    description = SessionDescription.parse(sdp)
    for media in description.media:
        if media.kind != "audio":
            continue
        codecs: list[str] = []
        opus: set[int] = set()
        for codec in media.rtp.codecs:
            name = codec.mimeType.split("/", 1)[-1].lower()
            if name not in SUPPORTED_AUDIO:
                continue
            codecs.append(name)
            if name == "opus" and codec.payloadType is not None:
                opus.add(codec.payloadType)
        return AudioNegotiation(codecs=tuple(codecs), opus_payload_types=frozenset(opus))
    return AudioNegotiation(codecs=(), opus_payload_types=frozenset())


MID_EXTENSION = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_EXTENSION = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


@dataclass(frozen=True)
class RtpLeg:
    """What one leg negotiated for audio RTP, as the fast path needs it.

    Read from the leg's *answer*: both directions of a BUNDLE audio section use the
    answer's payload types and header-extension ids.
    """

    # The payload type the relay sends with (the answer's first audio codec).
    payload_type: int | None
    mid: str | None
    # Header-extension URI → one-byte id, for the extensions both sides agreed on.
    extensions: dict[str, int] = field(default_factory=dict)


def rtp_leg(sdp: str) -> RtpLeg:
    """The first audio section's payload type, mid and header-extension ids."""
    description = SessionDescription.parse(sdp)
    for media in description.media:
        if media.kind != "audio":
            continue
        payload_type = next(
            (c.payloadType for c in media.rtp.codecs if c.payloadType is not None), None
        )
        extensions = {ext.uri: ext.id for ext in media.rtp.headerExtensions if 1 <= ext.id <= 14}
        return RtpLeg(payload_type=payload_type, mid=media.rtp.muxId, extensions=extensions)
    return RtpLeg(payload_type=None, mid=None)
