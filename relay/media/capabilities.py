"""Which of the private aiortc/aioice names the relay relies on are there, checked at start.

Every adaptation in ``relay.media.aiortc_private`` reaches into a library's internals,
which can change in any release. aiortc and aioice are pinned exactly and
``tests/unit/test_aiortc_private.py`` guards the pin, but an installation can still end up
with other versions (a distribution's packages, a dependency resolver, an upgrade in
progress). Rather than failing every exchange on the first missing name, the relay checks
each name once at start (``probe``) and, for each feature whose names are not all there,
falls back to aiortc's own way of doing that job: the relay keeps working, slower. The
result is logged at start, listed in ``/api/stats`` (``media_capabilities``) and exported
as ``relay_media_capability_available{feature}``.

The check is about names, not behaviour: that each module attribute, class attribute and
instance attribute exists (instance attributes on throwaway objects made with aiortc's
public constructors: no socket, no thread, no task). Whether the names still *mean* what
the relay assumes (call sites, signatures) is the guard test's job, run against the pinned
versions and, with ``tests/latest_deps.sh``, against the newest ones.

docs/media.md ("When a private name is missing") lists the features and their fallbacks.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aioice
import aioice.ice
import aioice.turn
import aiortc
import aiortc.rtcdtlstransport
import aiortc.rtcicetransport
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import aiortc.rtp
import pylibsrtp

from relay.media.aiortc_private import PINNED_AIOICE_VERSION, PINNED_AIORTC_VERSION

with contextlib.suppress(ImportError):  # probed below; a release without it only degrades
    import pylibsrtp._binding  # noqa: F401

log = logging.getLogger("relay.media")

Where = Literal["module", "class", "instance"]

_RECEIVER = "aiortc.rtcrtpreceiver.RTCRtpReceiver"
_SENDER = "aiortc.rtcrtpsender.RTCRtpSender"
_DTLS = "aiortc.rtcdtlstransport.RTCDtlsTransport"
_SCTP = "aiortc.rtcsctptransport.RTCSctpTransport"
_ROUTER = "aiortc.rtcdtlstransport.RtpRouter"
_ICE_TRANSPORT = "aiortc.rtcicetransport.RTCIceTransport"
_CONNECTION = "aioice.ice.Connection"
_SRTP_SESSION = "pylibsrtp.Session"
_STREAM_STATISTICS = "aiortc.rtcrtpreceiver.StreamStatistics"


@dataclass(frozen=True)
class PrivateName:
    """One name the relay reads or replaces: ``attr`` of a module, of a class, or of the
    instances of a class (set by its constructor)."""

    owner: str  # a dotted path from the package: a module, or a class of one
    attr: str
    where: Where

    def __str__(self) -> str:
        return f"{self.owner}.{self.attr}"


def _m(owner: str, *attrs: str) -> tuple[PrivateName, ...]:
    return tuple(PrivateName(owner, a, "module") for a in attrs)


def _c(owner: str, *attrs: str) -> tuple[PrivateName, ...]:
    return tuple(PrivateName(owner, a, "class") for a in attrs)


def _i(owner: str, *attrs: str) -> tuple[PrivateName, ...]:
    return tuple(PrivateName(owner, a, "instance") for a in attrs)


@dataclass(frozen=True)
class Feature:
    name: str
    # What the names give the relay, and what it does without them.
    gives: str
    fallback: str
    names: tuple[PrivateName, ...]
    # Features this one builds on: it is unavailable when any of them is.
    requires: tuple[str, ...] = ()


FEATURES: tuple[Feature, ...] = (
    Feature(
        "rtp_hook",
        "encoded packets taken from the receiver as they arrive (Opus passthrough; packet "
        "counts, recording taps and the decoder bound on the decode path)",
        "aiortc decodes every packet and re-encodes it (its jitter buffer adds about 80 ms); "
        "packet counters count decoded frames; recordings get no audio",
        _c(_RECEIVER, "_handle_rtp_packet"),
    ),
    Feature(
        "receiver_reports",
        "RTCP receiver reports and inbound loss/jitter kept while the hook bypasses aiortc",
        "passthrough without receiver reports: the far ends lose their view of the relay's "
        "reception (round-trip time, loss); the fast path is not used",
        _m("aiortc.rtcrtpreceiver", "StreamStatistics")
        + _i(_RECEIVER, "_RTCRtpReceiver__remote_streams"),
    ),
    Feature(
        "fast_path",
        "Opus forwarded socket to socket below aiortc's DTLS task and sender (relay.media."
        "fastpath)",
        "Opus passthrough through aiortc's DTLS task and sender (more CPU per session)",
        _i(_ICE_TRANSPORT, "_connection")
        + _c(_CONNECTION, "data_received")
        + _i(_CONNECTION, "_protocols", "_queue", "_nominated")
        + _c("aioice.ice.StunProtocol", "datagram_received")
        + _c(_DTLS, "_handle_rtp_data")
        + _i(_DTLS, "_rx_srtp", "_tx_srtp", "_rtp_router")
        + _i(_ROUTER, "ssrc_table")
        + _m("pylibsrtp", "_binding")
        + _m("pylibsrtp._binding", "ffi", "lib")
        + _m("pylibsrtp._binding.lib", "srtp_protect", "srtp_unprotect")
        + _i(_SRTP_SESSION, "_srtp")
        + _i(
            _SENDER,
            "_ssrc",
            "_RTCRtpSender__rtp_started",
            "_RTCRtpSender__ntp_timestamp",
            "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__packet_count",
            "_RTCRtpSender__octet_count",
        ),
        requires=("rtp_hook", "receiver_reports"),
    ),
    Feature(
        "compiled_loop",
        "the fast path's per-packet work in compiled code (relay.media._fastloop), when it "
        "was built: it keeps each receiver's statistics per packet and copies them in and "
        "out, and reads the far ends' sender and receiver reports (relay.media.rtcp_in)",
        "the Python fast path forwards the same packets the same way (more CPU per packet)",
        _i(
            _STREAM_STATISTICS,
            "base_seq",
            "max_seq",
            "cycles",
            "packets_received",
            "_jitter_q4",
            "_last_arrival",
            "_last_timestamp",
        )
        # The far ends' SRTCP read in the loop (relay.media.rtcp_in): unprotected there,
        # its reports applied as aiortc's handlers apply them, the rest handed to those.
        + _m("pylibsrtp._binding.lib", "srtp_unprotect_rtcp")
        + _i(_ROUTER, "senders", "ssrc_table")
        + _c(_ROUTER, "route_rtcp")
        + _i(_DTLS, "_stats_id")
        + _i(_RECEIVER, "_RTCRtpReceiver__stats", "_RTCRtpReceiver__kind")
        + _i(_RECEIVER, "_RTCRtpReceiver__lsr", "_RTCRtpReceiver__lsr_time")
        + _i(
            _SENDER,
            "_RTCRtpSender__stats",
            "_RTCRtpSender__kind",
            "_RTCRtpSender__rtt",
            "_RTCRtpSender__lsr",
            "_RTCRtpSender__lsr_time",
            "_RTCRtpSender__packet_count",
        )
        + _c(_RECEIVER, "_handle_rtcp_packet")
        + _c(_SENDER, "_handle_rtcp_packet")
        + _m("aiortc.rtcrtpsender", "RTT_ALPHA")
        + _m("aiortc.clock", "datetime_from_ntp")
        + _m(
            "aiortc.rtp",
            "RtcpPacket",
            "RtcpReceiverInfo",
            "RtcpSrPacket",
            "RtcpRrPacket",
            "RtcpSdesPacket",
            "RtcpByePacket",
        ),
        # Every feature below it, not only the ones it calls directly: a feature is down
        # when one it requires lacks its own names (``probe`` looks one level down).
        requires=("rtp_hook", "receiver_reports", "fast_path", "receive_batching"),
    ),
    Feature(
        "rtcp_reports",
        "every leg's RTCP from one task per event loop, one compound report per leg every "
        "5 s as a browser sends for audio (relay.media.rtcp_reports)",
        "aiortc's own RTCP tasks: one per sender and per receiver, each reporting every "
        "0.5-1.5 s (more CPU per interview)",
        _c(_SENDER, "_run_rtcp", "_send_rtcp")
        + _c(_RECEIVER, "_run_rtcp")
        + _c(_DTLS, "_send_rtp")
        + _i(
            _SENDER,
            "_ssrc",
            "_RTCRtpSender__rtcp_started",
            "_RTCRtpSender__rtcp_exited",
            "_RTCRtpSender__cname",
            "_RTCRtpSender__lsr",
            "_RTCRtpSender__lsr_time",
            "_RTCRtpSender__ntp_timestamp",
            "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__packet_count",
            "_RTCRtpSender__octet_count",
        )
        + _i(
            _RECEIVER,
            "_RTCRtpReceiver__rtcp_started",
            "_RTCRtpReceiver__rtcp_exited",
            "_RTCRtpReceiver__lsr",
            "_RTCRtpReceiver__lsr_time",
            "_RTCRtpReceiver__rtcp_ssrc",
            "_RTCRtpReceiver__remote_streams",
        ),
    ),
    Feature(
        "decoder_thread",
        "each receiver's decoder thread stopped and, if it ran, joined off the event loop; "
        "the decoder's backlog bounded on the decode path",
        "aiortc joins decoder threads on the event loop when a peer closes (a short stall); "
        "the decode path does not shed packets when its decoder falls behind",
        _i(_RECEIVER, "_RTCRtpReceiver__decoder_thread", "_RTCRtpReceiver__decoder_queue"),
    ),
    Feature(
        "retransmission_history",
        "no 128-packet retransmission history per sender (never used for audio)",
        "aiortc keeps the history: more garbage-collector work at many sessions",
        _i(_SENDER, "_RTCRtpSender__rtp_history"),
    ),
    Feature(
        "srtp_size_guard",
        "SRTP and SRTCP datagrams larger than pylibsrtp's buffer dropped before aiortc's DTLS task",
        "one datagram over 1500 bytes at a leg's UDP port, from anyone, ends that leg "
        "(pylibsrtp raises an error aiortc's receive task does not catch)",
        _c(_CONNECTION, "data_received"),
    ),
    Feature(
        "srtp_replay_window",
        "each leg's SRTP sessions with a 128-packet replay window",
        "aiortc's 1,024-packet window: libsrtp shifts a bitmap eight times as long per packet "
        "(a few per cent more CPU on the compiled loop)",
        _m("aiortc.rtcdtlstransport", "Policy") + _c("pylibsrtp.Policy", "window_size"),
    ),
    Feature(
        "audio_level",
        "the numpy audio-level function on the decode path",
        "aiortc's pure-Python audio level per frame (about half the decode path's CPU)",
        _m("aiortc.rtp", "compute_audio_level_dbov"),
    ),
    Feature(
        "port_range",
        "media sockets bound inside ice.udp_port_min..udp_port_max",
        "aioice binds its sockets on any port: the configured port range is NOT enforced, "
        "and a firewall open only for it blocks media",
        _m("aioice.ice", "asyncio") + _m("aioice.turn", "asyncio"),
    ),
    Feature(
        "receive_batching",
        "the media sockets read together, polled while busy (media.receive_batch_ms)",
        "asyncio's own UDP transports: one event-loop wake-up per datagram (more CPU)",
        _m("aioice.ice", "asyncio") + _m("aioice.turn", "asyncio"),
    ),
    Feature(
        "host_addresses",
        "host candidates gathered from ice.host_addresses (127.0.0.1 included)",
        "aioice gathers every interface address but loopback: ice.host_addresses is ignored",
        _m("aioice.ice", "get_host_addresses"),
    ),
    Feature(
        "lazy_decoder_threads",
        "a receiver's decoder thread starts with its first frame to decode (none on the fast path)",
        "aiortc starts an idle decoder thread per receiver: two threads per interview",
        _m("aiortc.rtcrtpreceiver", "threading", "decoder_worker"),
    ),
    Feature(
        "ending_acknowledged",
        "the ending event waits (up to its flush time) for the page's SCTP to acknowledge it",
        "the ending waits only for the channel's buffer: a message still waiting for SCTP's "
        "congestion window is lost when the leg closes (the resume's 410 still says why)",
        _i(_SCTP, "_data_channel_queue", "_outbound_queue", "_sent_queue"),
    ),
    Feature(
        "prompt_ice_completion",
        "ICE ends as soon as its checks are done",
        "aioice's own pacing: each connection takes at least 20 ms more",
        _c(_CONNECTION, "_check_periodic", "_remote_candidates_expected")
        + _i(_CONNECTION, "_check_list")
        + _c("aioice.ice.CandidatePair", "State"),
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


# ---------------------------------------------------------------------- the check
def _resolve(path: str) -> Any:
    """``path`` by attribute lookups from its package (never a fresh import: a name that
    disappeared from its parent must count as missing even if still in sys.modules)."""
    root, *parts = path.split(".")
    obj: Any = sys.modules.get(root) or importlib.import_module(root)
    for part in parts:
        obj = getattr(obj, part)
    return obj


def _make_ice_transport(_: _Specimens) -> Any:
    gatherer = _resolve("aiortc.rtcicetransport.RTCIceGatherer")()
    return _resolve(_ICE_TRANSPORT)(gatherer)


def _make_dtls(specimens: _Specimens) -> Any:
    certificate = _resolve("aiortc.rtcdtlstransport.RTCCertificate").generateCertificate()
    return _resolve(_DTLS)(specimens.get(_ICE_TRANSPORT), [certificate])


def _make_srtp_session(_: _Specimens) -> Any:
    policy_class = _resolve("pylibsrtp.Policy")
    policy = policy_class(
        key=bytes(30),
        ssrc_type=policy_class.SSRC_ANY_INBOUND,
        srtp_profile=policy_class.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    return _resolve(_SRTP_SESSION)(policy)


# Throwaway objects, made with public constructors, whose instance attributes are checked.
_MAKERS: dict[str, Callable[[_Specimens], Any]] = {
    _ICE_TRANSPORT: _make_ice_transport,
    _DTLS: _make_dtls,
    _RECEIVER: lambda s: _resolve(_RECEIVER)("audio", s.get(_DTLS)),
    _SENDER: lambda s: _resolve(_SENDER)("audio", s.get(_DTLS)),
    _ROUTER: lambda _: _resolve(_ROUTER)(),
    _CONNECTION: lambda _: _resolve(_CONNECTION)(ice_controlling=True),
    _SRTP_SESSION: _make_srtp_session,
    _STREAM_STATISTICS: lambda _: _resolve(_STREAM_STATISTICS)(48000),
    _SCTP: lambda s: _resolve(_SCTP)(s.get(_DTLS)),
}


class _Specimens:
    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._failed: dict[str, str] = {}

    def get(self, owner: str) -> Any:
        if owner not in self._made and owner not in self._failed:
            try:
                self._made[owner] = _MAKERS[owner](self)
            except Exception as exc:  # a changed constructor: its names count as missing
                self._failed[owner] = f"{type(exc).__name__}: {exc}"
        if owner in self._failed:
            raise LookupError(f"cannot make a {owner}: {self._failed[owner]}")
        return self._made[owner]


def _present(name: PrivateName, specimens: _Specimens) -> bool:
    try:
        owner = specimens.get(name.owner) if name.where == "instance" else _resolve(name.owner)
    except (LookupError, AttributeError, ImportError):
        return False
    if name.where == "class":
        # Defined by the library itself (its class or a base class of its own), not only
        # inherited from the standard library (StunProtocol.datagram_received would still be
        # asyncio.DatagramProtocol's no-op).
        package = name.owner.split(".", 1)[0]
        return any(
            name.attr in vars(cls)
            for cls in owner.__mro__
            if str(cls.__module__).split(".", 1)[0] == package
        )
    return hasattr(owner, name.attr)


@dataclass(frozen=True)
class FeatureState:
    feature: Feature
    # The feature's own names that are missing, then "needs <feature>" for each required
    # feature that is unavailable.
    missing: tuple[str, ...]

    @property
    def available(self) -> bool:
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"feature": self.feature.name, "available": self.available}
        if not self.available:
            body["missing"] = list(self.missing)
            body["fallback"] = self.feature.fallback
        return body


@dataclass(frozen=True)
class MediaCapabilities:
    features: tuple[FeatureState, ...]
    aiortc_version: str
    aioice_version: str

    def available(self, feature: str) -> bool:
        return self.state(feature).available

    def state(self, feature: str) -> FeatureState:
        for state in self.features:
            if state.feature.name == feature:
                return state
        raise KeyError(feature)

    def unavailable(self) -> list[FeatureState]:
        return [s for s in self.features if not s.available]

    def to_json(self) -> dict[str, Any]:
        """For /api/stats: the versions, every feature, and for each one fallen back why."""
        return {
            "aiortc": {"version": self.aiortc_version, "pinned": PINNED_AIORTC_VERSION},
            "aioice": {"version": self.aioice_version, "pinned": PINNED_AIOICE_VERSION},
            "fallbacks": [s.feature.name for s in self.unavailable()],
            "features": [s.to_json() for s in self.features],
        }


def probe() -> MediaCapabilities:
    """Check every feature's names now (a few milliseconds: one certificate is made)."""
    specimens = _Specimens()
    own: dict[str, tuple[str, ...]] = {}
    for feature in FEATURES:
        gone = [str(n) for n in feature.names if not _present(n, specimens)]
        # A name inside a missing one (pylibsrtp._binding.ffi when pylibsrtp._binding is
        # gone) says nothing more.
        own[feature.name] = tuple(
            g for g in gone if not any(g.startswith(other + ".") for other in gone)
        )
    states: list[FeatureState] = []
    for feature in FEATURES:
        needs = tuple(f"needs {r}" for r in feature.requires if own[r])
        states.append(FeatureState(feature, own[feature.name] + needs))
    return MediaCapabilities(
        tuple(states),
        aiortc_version=str(getattr(aiortc, "__version__", "unknown")),
        aioice_version=str(getattr(aioice, "__version__", "unknown")),
    )


def log_capabilities(capabilities: MediaCapabilities, *, port_range_configured: bool) -> None:
    """One line per feature fallen back (ERROR for a port range that is not enforced)."""
    if (capabilities.aiortc_version, capabilities.aioice_version) != (
        PINNED_AIORTC_VERSION,
        PINNED_AIOICE_VERSION,
    ):
        log.warning(
            "aiortc %s / aioice %s, not the versions the relay is pinned to (%s / %s): "
            "see docs/media.md before running this in production",
            capabilities.aiortc_version,
            capabilities.aioice_version,
            PINNED_AIORTC_VERSION,
            PINNED_AIOICE_VERSION,
        )
    for state in capabilities.unavailable():
        feature = state.feature
        level = (
            logging.ERROR
            if feature.name == "port_range" and port_range_configured
            else logging.WARNING
        )
        log.log(
            level,
            "media capability %s unavailable (missing: %s): %s",
            feature.name,
            ", ".join(state.missing),
            feature.fallback,
        )
