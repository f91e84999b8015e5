"""The relay's RTCP reports: one task per event loop for every leg, at an audio stream's pace.

aiortc starts an RTCP task for every sender and every receiver, each sending its own
report every 0.5–1.5 s: per interview (two legs, each with a sender and a receiver) four
tasks, four wake-ups and four SRTCP packets a second, whatever the audio does. That is
most of what a live interview costs the relay apart from forwarding (docs/benchmarks.md,
"What a live interview costs apart from forwarding").

A browser reports an audio stream every 5 s (libwebrtc's default report interval for
audio), the minimum RFC 3550 (§6.2) recommends. The relay does the same: before aiortc
starts a leg's sender and receiver, ``adopt`` replaces their RTCP tasks
(``aiortc_private.replace_rtcp_task``) with stand-ins that only register them here, and
``RtcpReports`` (one per event loop) sends each leg one compound packet per interval, as
a browser does: a sender report carrying the receiver's report blocks, then the SDES
CNAME. The first goes out 0.5–1.5 s after the leg started (as aiortc's first would), the
next ones every ``REPORT_INTERVAL_S`` ± 50 % (RFC 3550's randomisation); reports due
within ``COALESCE_S`` of each other go out in one wake-up.

What the packets say is what aiortc's tasks would have said, read from the same state
(the sender's counts, which the fast path keeps; the receiver's statistics; the last
sender report heard, for LSR/DLSR), and a stopping sender still sends its BYE. aiortc's
handling of the far end's reports (round-trip time, remote loss and jitter in
``getStats()``) is unchanged. Where the compiled loop reads the far end's reports
(``relay.media.rtcp_in``), the leg's callbacks registered with ``before_report`` bring
them in first: the report then carries the LSR of the latest sender report heard, and a
report block that arrived before this leg's new sender report is still compared with the
one before it, as aiortc's handlers would have on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from relay.media import aiortc_private
from relay.tasks import spawn

log = logging.getLogger("relay.media")

# libwebrtc's report interval for audio streams; RFC 3550's recommended minimum.
REPORT_INTERVAL_S = 5.0
# The first report of a leg: as aiortc's tasks send theirs (0.5–1.5 s after the start).
FIRST_REPORT_S = 1.0
# Reports due this close to the one that wakes the task go out with it.
COALESCE_S = 0.05
# A report block count fits in five bits.
_MAX_BLOCKS = 31
_CNAME = 1  # SDES item type


@dataclass(eq=False)
class _Leg:
    """The senders and receivers of one DTLS transport (a leg: bundled, they share it)."""

    dtls: Any
    due: float
    parties: list[RTCRtpSender | RTCRtpReceiver] = field(default_factory=list)

    @property
    def senders(self) -> list[RTCRtpSender]:
        return [p for p in self.parties if isinstance(p, RTCRtpSender)]

    @property
    def receivers(self) -> list[RTCRtpReceiver]:
        return [p for p in self.parties if isinstance(p, RTCRtpReceiver)]

    def compound(self) -> bytes:
        """The leg's report now: SR (or RR) with every receiver's blocks, then SDES."""
        for callback in list(_before_report.get(self.dtls, ())):
            callback()
        now = time.time()
        blocks = [b for r in self.receivers for b in aiortc_private.receiver_report_blocks(r, now)]
        blocks = blocks[:_MAX_BLOCKS]
        packets: list[RtcpSrPacket | RtcpRrPacket | RtcpSdesPacket] = []
        chunks: list[RtcpSourceInfo] = []
        for sender in self.senders:
            ntp, rtp_ts, count, octets = aiortc_private.SenderReportState(sender).read()
            ssrc, cname = aiortc_private.sender_ssrc(sender), aiortc_private.sender_cname(sender)
            info = RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_ts,
                packet_count=count & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF,
            )
            packets.append(RtcpSrPacket(ssrc=ssrc, sender_info=info, reports=blocks))
            blocks = []  # the first sender report carries them
            aiortc_private.note_sender_report(sender, ntp, now)
            if cname is not None:
                chunks.append(RtcpSourceInfo(ssrc=ssrc, items=[(_CNAME, cname.encode())]))
        if not packets and blocks:
            rr_ssrc = aiortc_private.receiver_rtcp_ssrc(self.receivers[0])
            if rr_ssrc is not None:
                packets.append(RtcpRrPacket(ssrc=rr_ssrc, reports=blocks))
        if not packets:
            return b""
        if chunks:
            packets.append(RtcpSdesPacket(chunks=chunks))
        return b"".join(bytes(p) for p in packets)


# By DTLS transport: what brings its incoming reports up to date (``before_report``).
_before_report: weakref.WeakKeyDictionary[Any, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def before_report(dtls: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` before each report of leg ``dtls`` is built, until ``forget``."""
    _before_report.setdefault(dtls, []).append(callback)


def forget(dtls: Any, callback: Callable[[], None]) -> None:
    callbacks = _before_report.get(dtls)
    if callbacks is not None and callback in callbacks:
        callbacks.remove(callback)
        if not callbacks:
            del _before_report[dtls]


class RtcpReports:
    """Every registered leg's RTCP reports on one event loop, sent by one task that runs
    while any leg is registered."""

    def __init__(
        self,
        *,
        interval_s: float = REPORT_INTERVAL_S,
        first_s: float = FIRST_REPORT_S,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.interval_s = interval_s
        self.first_s = first_s
        self._jitter = jitter
        # By DTLS transport (held by its leg until the leg's last party stops).
        self._legs: dict[Any, _Leg] = {}
        # Every leg's next report, soonest first: (due, tie-break, the leg weakly). A leg
        # that left keeps its entry until it comes up, then is skipped: a wake-up costs the
        # legs due, not a scan of every leg (hundreds at a few hundred interviews). Weakly:
        # the entry must not keep a left leg, its DTLS transport and its peer, alive until
        # then (up to 7.5 s).
        self._schedule: list[tuple[float, int, weakref.ref[_Leg]]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reports_sent = 0

    @property
    def legs(self) -> int:
        return len(self._legs)

    def _randomised(self, interval_s: float) -> float:
        return interval_s * (0.5 + self._jitter())

    def _join(self, party: RTCRtpSender | RTCRtpReceiver) -> None:
        dtls = party.transport
        leg = self._legs.get(dtls)
        if leg is None:
            loop = asyncio.get_running_loop()
            leg = self._legs[dtls] = _Leg(dtls, loop.time() + self._randomised(self.first_s))
            self._enqueue(leg)
            self._wake.set()  # it may be due before the task's next wake-up
            if self._task is None or self._task.done():
                self._task = spawn(self._run(), name="rtcp-reports", log=log)
        leg.parties.append(party)

    def _leave(self, party: RTCRtpSender | RTCRtpReceiver) -> None:
        leg = self._legs.get(party.transport)
        if leg is None or party not in leg.parties:
            return
        leg.parties.remove(party)
        if not leg.parties:
            del self._legs[party.transport]
            if not self._legs:
                # Nothing left to report: every entry is stale, and the task, about to
                # end, would not pop them.
                self._schedule.clear()
            self._wake.set()

    async def _stand_in(self, party: RTCRtpSender | RTCRtpReceiver) -> asyncio.Event:
        """What aiortc's RTCP task of ``party`` does around its reports: started, then
        running until ``stop()`` cancels it. Registered meanwhile; returns the event to set
        once it has finished (``stop()`` waits for it)."""
        started, exited = aiortc_private.rtcp_task_events(party)
        started.set()
        self._join(party)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.get_running_loop().create_future()
        self._leave(party)
        return exited

    async def sender_task(self, sender: RTCRtpSender) -> None:
        """Stands in for the sender's RTCP task (``adopt``), with the BYE aiortc's task
        sends when the sender stops."""
        exited = await self._stand_in(sender)
        with contextlib.suppress(ConnectionError):
            await aiortc_private.send_bye(sender)
        exited.set()

    async def receiver_task(self, receiver: RTCRtpReceiver) -> None:
        """Stands in for the receiver's RTCP task (``adopt``)."""
        (await self._stand_in(receiver)).set()

    def _enqueue(self, leg: _Leg) -> None:
        heapq.heappush(self._schedule, (leg.due, next(self._order), weakref.ref(leg)))

    def _current(self, entry: tuple[float, int, weakref.ref[_Leg]]) -> _Leg | None:
        """The entry's leg if the entry is its next report (None: the leg left since)."""
        due, _, ref = entry
        leg = ref()
        if leg is None or self._legs.get(leg.dtls) is not leg or leg.due != due:
            return None
        return leg

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        schedule = self._schedule
        while self._legs:
            now = loop.time()
            await self._send_due(now)
            while schedule and self._current(schedule[0]) is None:
                heapq.heappop(schedule)
            if not self._legs:
                break
            next_due = schedule[0][0] if schedule else now + self.interval_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_due):
                    await self._wake.wait()

    async def _send_due(self, now: float) -> None:
        """Report on every leg due by ``now`` (within ``COALESCE_S``) and schedule its next.
        Its own coroutine so that no leg stays referenced while the task waits."""
        schedule = self._schedule
        due_now: list[_Leg] = []
        while schedule and schedule[0][0] <= now + COALESCE_S:
            leg = self._current(heapq.heappop(schedule))
            if leg is not None:
                due_now.append(leg)
        for leg in due_now:
            leg.due = now + self._randomised(self.interval_s)
            self._enqueue(leg)
        for leg in due_now:
            if self._legs.get(leg.dtls) is leg:  # it may have left during a send
                await self._send(leg)

    async def _send(self, leg: _Leg) -> None:
        try:
            payload = leg.compound()
            if payload:
                await aiortc_private.send_rtp_datagram(leg.dtls, payload)
                self.reports_sent += 1
        except ConnectionError:
            pass  # the leg is not (or no longer) connected: as aiortc's tasks
        except Exception:  # one leg's failure must not stop every other leg's reports
            log.exception("RTCP report failed")


# One per event loop (tests run many loops in one process).
_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RtcpReports] = (
    weakref.WeakKeyDictionary()
)


def reports_of_loop() -> RtcpReports:
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = RtcpReports()
    return found


def adopt(pc: RTCPeerConnection, reports: RtcpReports | None = None) -> None:
    """Have ``reports`` (this loop's by default) send the RTCP of every sender and receiver
    of ``pc``. Call once its transceivers exist and before it connects (aiortc starts its
    own tasks once ``setLocalDescription`` has gathered and the remote side is known)."""
    reports = reports if reports is not None else reports_of_loop()
    for transceiver in pc.getTransceivers():
        sender: RTCRtpSender = transceiver.sender
        receiver: RTCRtpReceiver = transceiver.receiver
        aiortc_private.replace_rtcp_task(sender, functools.partial(reports.sender_task, sender))
        aiortc_private.replace_rtcp_task(
            receiver, functools.partial(reports.receiver_task, receiver)
        )
