"""The far end's SRTCP on a leg the compiled loop reads: what aiortc's handlers do with it.

On aiortc's path every incoming SRTCP compound takes aioice's queue, a wake-up of the leg's
DTLS task, an unprotect, aiortc's parser, its router and each recipient's
``_handle_rtcp_packet``. A far end sends its reports whether or not anyone speaks, so on
a relay whose forwarding runs in C that path was most of the Python work left per leg
(docs/benchmarks.md, "Where the relay's CPU goes now").

The compiled loop (``relay/media/_fastloop.c``, ``read_rtcp``) unprotects the compounds of a
route's socket with the leg's receive context (aiortc's, so one replay window), checks
them as strictly as aiortc's parser, and keeps what the handlers act on in the common
case, sender and receiver reports: the sender info of each SR and every report block,
with its arrival time. ``apply_reports`` does with them, when the route's counters are
synced, what the handlers would have done on arrival (``aiortc_private.
note_remote_sender_report``, ``note_report_block``): routed as aiortc's router routes,
timed by the arrival, in arrival order.

Every other compound (feedback: NACK, PLI, REMB; BYE) the loop hands over decrypted;
``HandedRtcp`` gives it to aiortc's own parser, router and handlers (it is never
unprotected twice): the handlers that never suspend run to their end at once, the
feedback's in a task, as aiortc's task would await them. A BYE stops the receiver's
decoder thread as aiortc's handler would, but joined in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Coroutine, Sequence
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtcpReceiverInfo

from relay.media import aiortc_private
from relay.media.peers import DECODER_JOIN_TIMEOUT_S
from relay.tasks import spawn

log = logging.getLogger("relay.media")

# The kinds of the loop's report events (Route.take_rtcp).
EVENT_SENDER_REPORT = 0
EVENT_REPORT_BLOCK = 1


def apply_reports(dtls: RTCDtlsTransport, events: Sequence[tuple[Any, ...]]) -> None:
    """The far end's report events of leg ``dtls``, oldest first, into aiortc's receivers
    and senders as their handlers would have taken them on arrival.

    What a sender report sets (statistics, LSR) and a block's statistics are replaced by
    the next one about the same SSRC: of several synced at once only the last is applied
    (nothing reads them in between). Every block goes into the round-trip time, whose
    smoothing depends on each estimate."""
    receivers, senders = aiortc_private.rtcp_routes(dtls)
    last: dict[tuple[int, int], int] = {}
    for i, event in enumerate(events):
        kind = event[0]
        last[kind, event[1] if kind == EVENT_SENDER_REPORT else event[3]] = i
    for i, event in enumerate(events):
        if event[0] == EVENT_SENDER_REPORT:
            _, ssrc, arrival, ntp, _rtp_ts, packets, octets = event
            receiver = receivers.get(ssrc)
            if receiver is not None and last[EVENT_SENDER_REPORT, ssrc] == i:
                aiortc_private.note_remote_sender_report(
                    receiver, ssrc, ntp, packets, octets, arrival
                )
        else:
            _, reporter, arrival, ssrc, fraction, lost, highest, jitter, lsr, dlsr = event
            sender = senders.get(ssrc)
            if sender is not None:
                block = RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=fraction,
                    packets_lost=lost,
                    highest_sequence=highest,
                    jitter=jitter,
                    lsr=lsr,
                    dlsr=dlsr,
                )
                aiortc_private.note_report_block(
                    sender,
                    reporter,
                    block,
                    arrival,
                    statistics=last[EVENT_REPORT_BLOCK, ssrc] == i,
                )


def run_to_completion(coroutine: Coroutine[Any, Any, None]) -> bool:
    """Run ``coroutine`` in one step. False (and the coroutine closed) if it suspended."""
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    coroutine.close()
    return False


def _stop_decoder_off_loop(receiver: RTCRtpReceiver) -> None:
    """What a BYE makes aiortc's receiver do, stop its decoder thread, but joined in a
    worker thread: aiortc's handler would join it on the event loop. The handler then
    finds no thread to stop (as ``relay.media.peers.close_peer`` does before closing)."""
    thread = aiortc_private.detach_decoder_thread(receiver)
    if thread is not None:
        join = asyncio.to_thread(thread.join, DECODER_JOIN_TIMEOUT_S)
        spawn(join, name="decoder-join", log=log)


async def _await_in_order(handlers: list[Coroutine[Any, Any, None]]) -> None:
    for handler in handlers:
        await handler


class HandedRtcp:
    """One leg's compounds the compiled loop handed over (``PUNT_RTCP_PLAIN``), decrypted:
    given to aiortc's parser, router and handlers."""

    __slots__ = ("_delivery", "_dtls", "dropped", "errors", "handled")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._delivery: aiortc_private.RtcpDelivery | None = None
        # Compounds handled; refused by aiortc's parser (the loop checks the same, so
        # none is expected); a handler that raised.
        self.handled = 0
        self.dropped = 0
        self.errors = 0

    def handle(self, plain: bytes) -> None:
        try:
            delivery = self._delivery
            if delivery is None:
                delivery = self._delivery = aiortc_private.RtcpDelivery(self._dtls)
            try:
                packets = delivery.parse(plain)
            except (ValueError, struct.error):  # as aiortc: the whole compound is dropped
                self.dropped += 1
                return
            self.handled += 1
            later: list[Coroutine[Any, Any, None]] = []
            for packet in packets:
                for recipient in delivery.recipients(packet):
                    if not delivery.synchronous(packet):
                        later.append(delivery.handler(recipient, packet))
                        continue
                    if delivery.is_bye(packet) and isinstance(recipient, RTCRtpReceiver):
                        _stop_decoder_off_loop(recipient)
                    if not run_to_completion(delivery.handler(recipient, packet)):
                        self.errors += 1
                        log.error("compiled loop: an RTCP handler suspended: %s", type(packet))
            if later:
                # Feedback (a NACK's retransmissions await), in order, as aiortc's task.
                spawn(_await_in_order(later), name="compiled-rtcp-feedback", log=log)
        except Exception:  # never raise into the socket callback (aiortc's parser, a handler)
            self.errors += 1
            if self.errors == 1:
                log.exception("compiled loop: incoming RTCP handling failed")
