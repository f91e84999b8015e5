# Types of the compiled forwarding loop (relay/media/_fastloop.c; relay/media/fastloop.py).
from typing import Any

PUNT_RAW: int
PUNT_PLAIN: int
PUNT_SEND: int
PUNT_TAP: int
PUNT_ERROR: int
PUNT_SYNC: int
PUNT_RTCP_PLAIN: int
RTCP_PENDING: int
SYNCS_PER_PUMP: int
VLEN: int
SRTP_BUFFER: int
RECORD_SIZE: int
SO_TIMESTAMPNS: int

def acquire() -> None: ...
def release() -> None: ...
def set_srtp(protect_address: int, unprotect_address: int, unprotect_rtcp_address: int) -> None: ...
def new_sink(in_fd: int, rx_session: Any, rx_context: int, keep_payloads: bool = ...) -> Route: ...

class Route:
    kind: int
    in_fd: int
    out_fd: int
    owner: Any
    ssrc: int
    seq_off: int
    ts_off: int
    tap: bool
    paused: bool
    packets_in: int
    bytes_in: int
    forwarded: int
    forwarded_bytes: int
    dropped_invalid: int
    dropped_duplicate: int
    dropped_late: int
    dropped_other_codec: int
    first_packet_at: float
    last_packet_at: float
    hi_seq: int
    hi_ts: int
    last_forward_at: float
    packets_sent: int
    octets_sent: int
    ntp_base: int
    sr_ntp: int
    sr_rtp_ts: int
    base_seq: int
    max_seq: int
    cycles: int
    received: int
    jitter_q4: int
    last_arrival: int
    last_timestamp: int
    clock_rate: int
    rtcp_pending: int
    plain_pending: int
    rtcp_read: int
    rtcp_to_python: int
    rtcp_dropped: int
    def __init__(
        self,
        in_fd: int,
        out_fd: int,
        family: int,
        host: str,
        port: int,
        rx_session: Any,
        rx_context: int,
        tx_session: Any,
        tx_context: int,
        owner: Any,
    ) -> None: ...
    def set_rewrite(
        self,
        out_ssrc: int,
        out_pt: int,
        opus: Any,
        level_in: int,
        ext_plain: bytes,
        ext_level: bytes,
        level_at: int,
    ) -> None: ...
    def take_records(self) -> tuple[bytes, bytes]: ...
    def take_rtcp(self) -> tuple[tuple[Any, ...], ...]: ...
    def plain_handled(self, resume: bool) -> bool: ...

class Source:
    next: int
    sent_packets: int
    send_errors: int
    ssrc: int
    start: float
    def __init__(
        self,
        fd: int,
        family: int,
        host: str,
        port: int,
        tx_session: Any,
        tx_context: int,
        ssrc: int,
        pt: int,
        ext: bytes,
        payloads: tuple[bytes, ...],
        start: float,
        period: float = ...,
        seq0: int = ...,
        ts0: int = ...,
        frame_ticks: int = ...,
    ) -> None: ...
    def sent_times(self) -> bytes: ...

class Loop:
    dirty: int
    route_count: int
    source_count: int
    tick_fd: int
    ticker_running: int
    notify_fd: int
    forwarding: int
    forward_error: int
    def __init__(self, sync_interval: float = ..., timestamps: bool = ...) -> None: ...
    def pump(self, epoll_fd: int, max_rounds: int) -> tuple[int, list[tuple[Any, ...]] | None]: ...
    def add_route(self, route: Route) -> None: ...
    def remove_route(self, route: Route) -> bool: ...
    def forget_fd(self, fd: int) -> None: ...
    def hold(self, fd: int, flag: bool) -> None: ...
    def take_due(self, min_age: float) -> list[Route]: ...
    def stats(self) -> dict[str, int]: ...
    def routes(self) -> list[Route]: ...
    def close(self) -> None: ...
    def add_source(self, source: Source) -> None: ...
    def remove_source(self, source: Source) -> bool: ...
    def tick(self) -> int: ...
    def start_ticker(self, period: float, raised: bool = ...) -> None: ...
    def stop_ticker(self) -> None: ...
    def arm_tick(self, at: float) -> None: ...
    def disarm_tick(self) -> None: ...
    def clear_tick(self) -> int: ...
    def start_forwarding(
        self, epoll_fd: int, batch: float, max_rounds: int, raised: bool = ...
    ) -> None: ...
    def stop_forwarding(self) -> None: ...
    def set_batch(self, batch: float) -> None: ...
    def take_punts(self) -> list[tuple[Any, ...]] | None: ...
