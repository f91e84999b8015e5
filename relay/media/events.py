"""The data-channel event relay between the browser and the upstream ``oai-events``.

Browser events go upstream only when they are strict JSON objects whose ``type`` is on
``events.browser_allowed`` (``session.update`` never is: the relay owns the session
configuration, and answers a page's ``session.update`` itself with ``session.updated``
carrying the effective session, redacted as below: OpenAI's clients wait for that answer
before they call themselves connected), whose fields match that type's schema
(relay.media.event_schema), and within ``events.max_message_bytes``; what goes upstream
is the re-serialised checked object, never the browser's bytes. Anything else is answered
with an ``error`` event in the Realtime API's own shape, so a client library handles it
like a server error. More
than ``events.max_refused_events`` refusals within ``events.refused_window_s`` is a flood:
the browser's channel is closed after a ``too_many_refused_events`` error, and the
interview goes on without events or ends (``events.on_refused_flood``). Each allowed
type is also rate-limited on its own (relay.media.event_rate): beyond ``browser_burst`` at
once and ``browser_rate_per_s`` after, an event is refused as ``rate_limited``.

Upstream server events reach the browser through relay.media.event_filter: default-deny
by type, the session configuration (instructions, tools, ...) redacted, and items other
than user/assistant messages hidden. A page's ``conversation.item.retrieve`` / ``.delete``
/ ``.truncate`` naming a hidden item is answered here, as OpenAI answers an unknown item,
and never forwarded.

Messages that arrive before the other side's channel is open wait in a small bounded
buffer (the upstream usually sends ``session.created`` before the browser's channel
has finished opening).

Neither direction queues without bound behind a stalled leg: aiortc's ``send`` never
refuses, it holds what SCTP cannot send yet (``bufferedAmount``), so a peer that stops
reading (a frozen tab, a stalled upstream) made the relay hold every later event. A
message that would take a channel's ``bufferedAmount`` beyond ``events.max_buffered_bytes``
is dropped and counted instead (decision, docs/media.md "Events": events are advisory next
to the audio, which goes on; the channel resumes by itself once its peer reads again, and
a peer that is really gone ends the leg through ICE/DTLS as before).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from aiortc import RTCDataChannel
from aiortc.exceptions import InvalidStateError

from relay.config import EventsConfig
from relay.media import aiortc_private
from relay.media.event_filter import ITEM_NOT_FOUND_CODES, ServerEventFilter, item_not_found
from relay.media.event_rate import TypeRateLimiter
from relay.media.event_schema import (
    ALWAYS_REFUSED,
    SESSION_UPDATE,
    Refusal,
    SessionUpdate,
    check_event,
    serialise,
)
from relay.media.metrics import MediaMetrics

log = logging.getLogger("relay.media.events")

Side = Literal["browser", "upstream"]
UPSTREAM_LABEL = "oai-events"
PENDING_MAX = 256
# How often ``drain_browser`` and ``send_upstream_paced`` look at a channel's buffer.
DRAIN_POLL_S = 0.01

Message = str | bytes
# A message waiting for its channel, and the direction it counts in.
Pending = tuple[Message, str]


class EventRelay:
    def __init__(
        self,
        config: EventsConfig,
        metrics: MediaMetrics,
        *,
        on_closed: Callable[[Side], None],
        session_id: str = "",
        on_flood: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[Message], None] | None = None,
        on_browser_open: Callable[[], None] | None = None,
        drain_until_acknowledged: bool = False,
    ) -> None:
        self._allowed = frozenset(config.browser_allowed) - ALWAYS_REFUSED
        self._max_bytes = config.max_message_bytes
        self._filter = ServerEventFilter(
            config.browser_server_events, config.browser_session_fields
        )
        self._max_refused = config.max_refused_events
        self._refused_window_s = config.refused_window_s
        self._end_on_flood = config.on_refused_flood == "end_interview"
        self._on_flood = on_flood
        self._clock = clock
        self._refused_at: deque[float] = deque()
        self._rate = TypeRateLimiter(config.browser_rate_per_s, config.browser_burst, clock)
        self._burst = config.browser_burst
        self._rate_per_s = config.browser_rate_per_s
        self._max_buffered = config.max_buffered_bytes
        # Directions whose receiving channel is over max_buffered_bytes (dropping).
        self._stalled: set[str] = set()
        # Set once the browser's channel was closed for a flood: its close is not a loss.
        self.flooded = False
        self._metrics = metrics
        self._on_closed = on_closed
        self._session_id = session_id
        self.browser: RTCDataChannel | None = None
        self.upstream: RTCDataChannel | None = None
        # drain_browser waits for the page's SCTP to acknowledge (ending_acknowledged).
        self._drain_until_acknowledged = drain_until_acknowledged
        # Sees every upstream server event (the recorder's transcript source); O(1) per call.
        self.observer = observer
        # Called when the browser's channel is open (each channel of a resumed session).
        self._on_browser_open = on_browser_open
        # While the browser's leg is lost (relay.media.bridge): upstream events are dropped
        # (nothing is forwarded), until a resumed leg's channel opens and the bridge has
        # sent it the relay's own events first (``resume_browser_delivery``).
        self._browser_paused = False
        # Set once the relay's ending event is on its way: it is the page's last event, so
        # nothing is forwarded to the page after it (``end_browser_delivery``).
        self._browser_ended = False
        # The upstream's channel is open (a new upstream session is seeded after that).
        self.upstream_open = asyncio.Event()
        # While the upstream's leg is lost and a new one is being opened (relay.media.
        # bridge): nothing is sent or queued upstream (``detach_upstream``).
        self._upstream_paused = False
        # What waits for a channel to open, each with the direction it is counted in.
        self._to_browser: deque[Pending] = deque(maxlen=PENDING_MAX)
        self._to_upstream: deque[Pending] = deque(maxlen=PENDING_MAX)
        # session.update answers owed until the upstream's session.created arrives.
        self._session_updates_owed = 0
        self.counts: dict[str, int] = {
            "upstream_to_browser": 0,
            "browser_to_upstream": 0,
            "refused": 0,
            "dropped": 0,
            "dropped_backlog": 0,
            "filtered": 0,
            # The relay's own events (relay.* to the browser; cancel, wrap-up and seeding
            # upstream).
            "relay_to_browser": 0,
            "relay_to_upstream": 0,
            # Upstream events not forwarded because the browser's leg was lost.
            "dropped_while_lost": 0,
            # Upstream events not forwarded because the page was told the interview ends.
            "dropped_after_ending": 0,
            # The page's session.update events answered by the relay (never forwarded).
            "session_updates_answered": 0,
            # The page's retrieve / delete / truncate of a hidden item, answered by the relay.
            "hidden_item_requests_answered": 0,
        }

    # ------------------------------------------------------------------ wiring
    def attach_upstream(self, channel: RTCDataChannel) -> None:
        """Use ``channel`` for the upstream's events (the exchange's leg, or a new upstream
        leg healing a lost one: the old channel's late events and close are ignored)."""
        self.upstream = channel
        self._upstream_paused = False
        channel.on("message", lambda message: self._from_upstream(message, channel))
        channel.on("open", lambda: self._upstream_opened(channel))
        channel.on("close", lambda: self._upstream_closed(channel))

    def _upstream_opened(self, channel: RTCDataChannel) -> None:
        if channel is not self.upstream:
            return
        self._flush(channel, self._to_upstream)
        self.upstream_open.set()

    def _upstream_closed(self, channel: RTCDataChannel) -> None:
        if channel is self.upstream:
            self._on_closed("upstream")

    def detach_upstream(self) -> None:
        """The upstream's leg is lost (a new one will be attached): nothing goes upstream
        until then (the page's events and the relay's own are dropped, not queued for a
        session that never saw what they refer to), and the lost channel is ignored."""
        self.upstream = None
        self._upstream_paused = True
        self._to_upstream.clear()
        self.upstream_open.clear()
        self._stalled.discard("browser_to_upstream")

    def attach_browser(self, channel: RTCDataChannel) -> bool:
        """Use ``channel`` for events; False if the browser already has one (ignored)."""
        if self.browser is not None:
            return False
        if channel.label != UPSTREAM_LABEL:
            log.info(
                "session %s: browser data channel labelled %r (expected %r); relaying anyway",
                self._session_id,
                channel.label[:64],
                UPSTREAM_LABEL,
            )
        self.browser = channel
        # Each handler checks that its channel is still the browser's: a channel of a leg
        # that was lost and replaced (a resume) must not act on the new one's session.
        channel.on("message", lambda message: self._from_browser(message, channel))
        channel.on("close", lambda: self._browser_closed(channel))
        channel.on("open", lambda: self._browser_opened(channel))
        if channel.readyState == "open":
            self._browser_opened(channel)
        return True

    def _browser_opened(self, channel: RTCDataChannel) -> None:
        if channel is not self.browser:
            return
        if self._on_browser_open is not None:
            # What the callback sends (a resumed page's greeting) goes first, before what
            # waited for the channel.
            waiting = list(self._to_browser)
            self._to_browser.clear()
            self._on_browser_open()
            self._to_browser.extend(waiting)
        self._flush(channel, self._to_browser)

    def detach_browser(self) -> None:
        """The browser's leg is lost: forward nothing to it from now on (what was waiting
        for its channel is dropped), and accept a new channel (a resumed leg's)."""
        self.browser = None
        self._browser_paused = True
        self._to_browser.clear()
        self._stalled.discard("upstream_to_browser")

    def resume_browser_delivery(self) -> None:
        """Forward upstream events to the (new) browser channel again."""
        self._browser_paused = False

    def end_browser_delivery(self, last: dict[str, Any]) -> None:
        """Send ``last`` (the relay's ending event) to the browser and nothing after it:
        the upstream's events still arriving while the leg closes (the rest of a reply in
        progress) reach the recorder's observer, not the page."""
        self.send_to_browser(last)
        self._browser_ended = True

    @property
    def browser_open(self) -> bool:
        channel = self.browser
        return channel is not None and channel.readyState == "open"

    # ------------------------------------------------------------------ the relay's own
    def send_to_browser(self, event: dict[str, Any]) -> None:
        """A ``relay.*`` event to the browser (bounded like every event to it; it waits
        for the channel to open or, at the start, to arrive; dropped while the browser's
        leg is lost and no resumed leg's channel has arrived)."""
        if self._browser_ended or (self.browser is None and self._browser_paused):
            return
        self._deliver(self.browser, self._to_browser, json.dumps(event), "relay_to_browser")

    def send_upstream(self, event: dict[str, Any]) -> None:
        """An event of the relay's own to the upstream (a cancel, the wrap-up, a seed)."""
        text = serialise(event)
        self._deliver(self.upstream, self._to_upstream, text, "relay_to_upstream")

    async def drain_browser(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until what was sent to the browser has left the
        channel's buffer, and (``drain_until_acknowledged``) until the browser's SCTP has
        acknowledged it; True if it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            channel = self.browser
            if channel is None or channel.readyState != "open":
                return False
            if not self._to_browser and channel.bufferedAmount == 0 and self._acknowledged(channel):
                return True
            if loop.time() >= deadline:
                return False
            # aiortc hands the buffer to SCTP in a task of its own: poll it briefly.
            await asyncio.sleep(DRAIN_POLL_S)

    def _acknowledged(self, channel: RTCDataChannel) -> bool:
        """Whether the far end's SCTP has acknowledged everything sent (always, when the
        drain does not wait for that)."""
        return (
            not self._drain_until_acknowledged or aiortc_private.sctp_unacknowledged(channel) == 0
        )

    async def send_upstream_paced(self, events: list[dict[str, Any]], timeout_s: float) -> int:
        """Send ``events`` upstream once its channel is open, each when the channel's
        buffer has room (a long conversation is more than the buffer holds); return how
        many were sent within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self.upstream_open.wait()
        except TimeoutError:
            return 0
        sent = 0
        for event in events:
            channel = self.upstream
            text = serialise(event)
            while channel is not None and channel.readyState == "open":
                if channel.bufferedAmount + len(text) <= self._max_buffered // 2:
                    break
                if loop.time() >= deadline:
                    return sent
                await asyncio.sleep(DRAIN_POLL_S)
            if channel is None or channel.readyState != "open":
                return sent
            if self._send(channel, text):
                sent += 1
                self.counts["relay_to_upstream"] += 1
        return sent

    # ------------------------------------------------------------------ directions
    def _from_upstream(self, message: Message, channel: RTCDataChannel | None = None) -> None:
        if channel is not None and channel is not self.upstream:
            return  # a lost upstream leg's channel, already replaced or detached
        if self.observer is not None:
            self.observer(message)  # the recorder's transcript: what upstream said, unfiltered
        # Every event, even one the page will not get: the filter remembers hidden items
        # (a wrap-up's system message sent while the leg is lost must stay hidden after a
        # resume) and the latest session.
        filtered = self._filter.apply(message)
        if self._browser_paused:
            self.counts["dropped_while_lost"] += 1
            return
        if self._browser_ended:
            self.counts["dropped_after_ending"] += 1
            return
        if filtered is None:
            self.counts["filtered"] += 1
            self._metrics.events_filtered.inc()
            return
        self._deliver(self.browser, self._to_browser, filtered, "upstream_to_browser")
        while self._session_updates_owed and self._filter.session is not None:
            self._session_updates_owed -= 1
            self._answer_session_update()

    def _from_browser(self, message: Message, channel: RTCDataChannel | None = None) -> None:
        if self.flooded or (channel is not None and channel is not self.browser):
            return
        checked = self._check(message)
        if not isinstance(checked, Refusal):
            kind, event_id = _kind_and_id(checked)
            if self._rate.allow(kind):
                if isinstance(checked, SessionUpdate):
                    self._answer_session_update()
                elif self._names_hidden_item(checked[0]):
                    self._answer_hidden_item(checked[0], kind, event_id)
                else:
                    self._deliver(
                        self.upstream, self._to_upstream, checked[1], "browser_to_upstream"
                    )
                return
            checked = Refusal(
                "rate_limited",
                f"At most {self._burst} '{kind}' events at once, then "
                f"{self._rate_per_s:g} per second; this one was not sent.",
                event_id,
            )
        self.counts["refused"] += 1
        self._metrics.events_refused.inc(reason=checked.code)
        self._reply_error(checked.code, checked.message, checked.event_id)
        self._count_refusal()

    def _answer_session_update(self) -> None:
        """``session.updated`` with the effective session, as the page may see it: what it
        asked for changes nothing. Before the upstream's ``session.created`` has arrived the
        answer is owed, and sent right after it."""
        session = self._filter.session
        if session is None:
            self._session_updates_owed = min(self._session_updates_owed + 1, PENDING_MAX)
            return
        self.counts["session_updates_answered"] += 1
        event = {
            "type": "session.updated",
            "event_id": "event_relay_" + secrets.token_hex(8),
            "session": session,
        }
        # Behind what already waits for the page (the session.created it answers after).
        self.send_to_browser(event)

    def _names_hidden_item(self, event: dict[str, Any]) -> bool:
        item_id = event.get("item_id")
        return (
            event.get("type") in ITEM_NOT_FOUND_CODES
            and isinstance(item_id, str)
            and self._filter.is_hidden(item_id)
        )

    def _answer_hidden_item(self, event: dict[str, Any], kind: str, event_id: str | None) -> None:
        """The answer OpenAI gives for an item that does not exist: for the page, a hidden
        item does not (upstream, the retrieve would be answered with the item, which the
        filter drops, and the page would wait for an answer that never comes). Not a
        refusal: the page did nothing wrong, so it does not count towards a flood."""
        self.counts["hidden_item_requests_answered"] += 1
        error = item_not_found(
            kind,
            str(event["item_id"]),
            event_id="event_relay_" + secrets.token_hex(8),
            client_event_id=event_id,
        )
        self._reply(error)

    def _browser_closed(self, channel: RTCDataChannel | None = None) -> None:
        if channel is not None and channel is not self.browser:
            return  # a lost leg's channel, already replaced or detached
        # Closed by us for a flood with the interview going on: not a lost browser.
        if self.flooded and not self._end_on_flood:
            return
        self._on_closed("browser")

    def _count_refusal(self) -> None:
        now = self._clock()
        window = self._refused_at
        window.append(now)
        while window and window[0] <= now - self._refused_window_s:
            window.popleft()
        if len(window) <= self._max_refused:
            return
        self.flooded = True
        self._metrics.event_floods.inc(
            action="end_interview" if self._end_on_flood else "close_channel"
        )
        log.warning(
            "session %s: %d refused browser events within %.0fs; closing the event channel",
            self._session_id,
            len(window),
            self._refused_window_s,
        )
        self._reply_error(
            "too_many_refused_events",
            f"More than {self._max_refused} refused events within "
            f"{self._refused_window_s:g} s; the event channel is closed"
            + (" and the interview ends." if self._end_on_flood else "; the interview goes on."),
            None,
        )
        # The end reason first, so that the channel's close cannot be taken for a loss.
        if self._end_on_flood and self._on_flood is not None:
            # The bridge's teardown tells the page why (relay.session.ending) and then
            # closes the channel with everything else.
            self._on_flood()
            return
        channel = self.browser
        if channel is not None:
            channel.close()

    def _deliver(
        self,
        channel: RTCDataChannel | None,
        pending: deque[Pending],
        message: Message,
        direction: str,
    ) -> None:
        if channel is None and pending is self._to_upstream and self._upstream_paused:
            self._drop(direction)  # the upstream's leg is being replaced
            return
        if channel is not None and channel.readyState == "open" and not pending:
            if self._send_bounded(channel, message, direction):
                self.counts[direction] += 1
                self._metrics.events_forwarded.inc(direction=direction)
            return
        if channel is not None and channel.readyState == "closed":
            self._drop(direction)
            return
        if len(pending) == pending.maxlen:
            self._drop(pending[0][1])
        pending.append((message, direction))

    def _flush(self, channel: RTCDataChannel, pending: deque[Pending]) -> None:
        while pending and channel.readyState == "open":
            message, direction = pending.popleft()
            if self._send_bounded(channel, message, direction):
                self.counts[direction] += 1
                self._metrics.events_forwarded.inc(direction=direction)

    def _drop(self, direction: str) -> None:
        self.counts["dropped"] += 1
        self._metrics.events_dropped.inc(direction=direction)

    def _send_bounded(self, channel: RTCDataChannel, message: Message, direction: str) -> bool:
        """Send unless ``channel`` would then hold more than ``max_buffered_bytes`` unsent:
        then drop ``message`` and count it (module docstring)."""
        size = len(message) if isinstance(message, bytes) else len(message.encode(errors="replace"))
        if channel.bufferedAmount + size > self._max_buffered:
            self.counts["dropped_backlog"] += 1
            self._metrics.events_backlog_dropped.inc(direction=direction)
            if direction not in self._stalled:
                self._stalled.add(direction)
                self._metrics.event_channel_stalls.inc(direction=direction)
                log.warning(
                    "session %s: %s: the receiving data channel holds %d bytes unsent (its "
                    "peer is not reading); dropping events until it drains",
                    self._session_id,
                    direction,
                    channel.bufferedAmount,
                )
            return False
        if not self._send(channel, message):
            return False
        if direction in self._stalled and channel.bufferedAmount <= self._max_buffered // 2:
            self._stalled.discard(direction)
            log.info("session %s: %s: the data channel drains again", self._session_id, direction)
        return True

    def _send(self, channel: RTCDataChannel, message: Message) -> bool:
        try:
            channel.send(message)
        except (InvalidStateError, ConnectionError):
            return False
        except UnicodeEncodeError:
            # aiortc encodes text as UTF-8 inside send; a message that cannot be encoded
            # (a lone surrogate, which the checks and ASCII-only JSON should already rule
            # out) is dropped here, never raised into the data channel's callbacks, where
            # it would close the DTLS transport and with it the whole leg.
            log.error("session %s: dropped an event that is not valid UTF-8", self._session_id)
            return False
        return True

    # ------------------------------------------------------------------ policy
    def _check(self, message: Message) -> tuple[dict[str, Any], str] | Refusal | SessionUpdate:
        """The checked event and its re-serialised form to send upstream, a session.update
        to answer, or why it is refused."""
        if not isinstance(message, str):
            return Refusal(
                "invalid_event", "Binary messages are not accepted; send JSON text.", None
            )
        if len(message) > self._max_bytes or len(message.encode("utf-8")) > self._max_bytes:
            return Refusal(
                "event_too_large", f"Events are limited to {self._max_bytes} bytes.", None
            )
        checked = check_event(message, self._allowed)
        if isinstance(checked, Refusal | SessionUpdate):
            return checked
        return checked, serialise(checked)

    def _reply_error(self, code: str, message: str, event_id: str | None) -> None:
        self._reply(
            {
                "type": "error",
                "event_id": "event_relay_" + secrets.token_hex(8),
                "error": {
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": event_id,
                },
            }
        )

    def _reply(self, error: dict[str, Any]) -> None:
        """The relay's own answer to a page's event (an error), sent at once; none after
        the ending, the page's last event."""
        if self._browser_ended:
            return
        channel = self.browser
        if channel is not None and channel.readyState == "open":
            # Bounded like every event to the browser: replies to a stalled page are dropped.
            self._send_bounded(channel, json.dumps(error), "upstream_to_browser")


def _kind_and_id(checked: tuple[dict[str, Any], str] | SessionUpdate) -> tuple[str, str | None]:
    """The type and the client's event id of a checked browser event."""
    if isinstance(checked, SessionUpdate):
        return SESSION_UPDATE, checked.event_id
    raw_id = checked[0].get("event_id")
    return str(checked[0]["type"]), raw_id if isinstance(raw_id, str) else None
