"""The data-channel event relay between the browser and the upstream ``oai-events``.

Upstream server events go to the browser as they are. Browser events go upstream
only when they are JSON objects whose ``type`` is on ``events.browser_allowed``
(``session.update`` never is: the relay owns the session configuration) and within
``events.max_message_bytes``; anything else is answered with an ``error`` event in
the Realtime API's own shape, so a client library handles it like a server error.

Messages that arrive before the other side's channel is open wait in a small bounded
buffer (the upstream usually sends ``session.created`` before the browser's channel
has finished opening).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from aiortc import RTCDataChannel
from aiortc.exceptions import InvalidStateError

from relay.config import EventsConfig
from relay.media.metrics import MediaMetrics

log = logging.getLogger("relay.media.events")

Side = Literal["browser", "upstream"]
UPSTREAM_LABEL = "oai-events"
ALWAYS_REFUSED = frozenset({"session.update"})
PENDING_MAX = 256

Message = str | bytes


class EventRelay:
    def __init__(
        self,
        config: EventsConfig,
        metrics: MediaMetrics,
        *,
        on_closed: Callable[[Side], None],
        session_id: str = "",
    ) -> None:
        self._allowed = frozenset(config.browser_allowed) - ALWAYS_REFUSED
        self._max_bytes = config.max_message_bytes
        self._metrics = metrics
        self._on_closed = on_closed
        self._session_id = session_id
        self.browser: RTCDataChannel | None = None
        self.upstream: RTCDataChannel | None = None
        # Sees every upstream server event (the recorder's transcript source); O(1) per call.
        self.observer: Callable[[Message], None] | None = None
        self._to_browser: deque[Message] = deque(maxlen=PENDING_MAX)
        self._to_upstream: deque[Message] = deque(maxlen=PENDING_MAX)
        self.counts: dict[str, int] = {
            "upstream_to_browser": 0,
            "browser_to_upstream": 0,
            "refused": 0,
            "dropped": 0,
        }

    # ------------------------------------------------------------------ wiring
    def attach_upstream(self, channel: RTCDataChannel) -> None:
        self.upstream = channel
        channel.on("message", self._from_upstream)
        channel.on("open", lambda: self._flush(channel, self._to_upstream, "browser_to_upstream"))
        channel.on("close", lambda: self._on_closed("upstream"))

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
        channel.on("message", self._from_browser)
        channel.on("close", lambda: self._on_closed("browser"))
        channel.on("open", lambda: self._flush(channel, self._to_browser, "upstream_to_browser"))
        if channel.readyState == "open":
            self._flush(channel, self._to_browser, "upstream_to_browser")
        return True

    # ------------------------------------------------------------------ directions
    def _from_upstream(self, message: Message) -> None:
        if self.observer is not None:
            self.observer(message)
        self._deliver(self.browser, self._to_browser, message, "upstream_to_browser")

    def _from_browser(self, message: Message) -> None:
        refusal = self._check(message)
        if refusal is not None:
            reason, text, event_id = refusal
            self.counts["refused"] += 1
            self._metrics.events_refused.inc(reason=reason)
            self._reply_error(reason, text, event_id)
            return
        self._deliver(self.upstream, self._to_upstream, message, "browser_to_upstream")

    def _deliver(
        self,
        channel: RTCDataChannel | None,
        pending: deque[Message],
        message: Message,
        direction: str,
    ) -> None:
        if channel is not None and channel.readyState == "open" and not pending:
            if self._send(channel, message):
                self.counts[direction] += 1
                self._metrics.events_forwarded.inc(direction=direction)
            return
        if channel is not None and channel.readyState == "closed":
            self._drop(direction)
            return
        if len(pending) == pending.maxlen:
            self._drop(direction)
        pending.append(message)

    def _flush(self, channel: RTCDataChannel, pending: deque[Message], direction: str) -> None:
        while pending and channel.readyState == "open":
            if self._send(channel, pending.popleft()):
                self.counts[direction] += 1
                self._metrics.events_forwarded.inc(direction=direction)

    def _drop(self, direction: str) -> None:
        self.counts["dropped"] += 1
        self._metrics.events_dropped.inc(direction=direction)

    @staticmethod
    def _send(channel: RTCDataChannel, message: Message) -> bool:
        try:
            channel.send(message)
        except (InvalidStateError, ConnectionError):
            return False
        return True

    # ------------------------------------------------------------------ policy
    def _check(self, message: Message) -> tuple[str, str, str | None] | None:
        """None if ``message`` may go upstream, else (reason code, message, event_id)."""
        if not isinstance(message, str):
            return "invalid_event", "Binary messages are not accepted; send JSON text.", None
        if len(message) > self._max_bytes or len(message.encode("utf-8")) > self._max_bytes:
            return "event_too_large", f"Events are limited to {self._max_bytes} bytes.", None
        try:
            event: Any = json.loads(message)
        except (ValueError, RecursionError):
            # RecursionError: a deeply nested payload ("[[[[…") within the size cap. It
            # must not escape into aiortc's SCTP receive path, which it would kill.
            return "invalid_event", "The event is not valid JSON.", None
        if not isinstance(event, dict):
            return "invalid_event", "The event must be a JSON object.", None
        raw_id = event.get("event_id")
        event_id = raw_id[:128] if isinstance(raw_id, str) else None
        kind = event.get("type")
        if not isinstance(kind, str) or not kind:
            return "invalid_event", "The 'type' field is missing.", event_id
        if kind in ALWAYS_REFUSED:
            return (
                "event_not_allowed",
                f"'{kind[:64]}' is not allowed: the interview is configured by the server.",
                event_id,
            )
        if kind not in self._allowed:
            return "event_not_allowed", f"'{kind[:64]}' events are not accepted.", event_id
        return None

    def _reply_error(self, code: str, message: str, event_id: str | None) -> None:
        error = {
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
        channel = self.browser
        if channel is not None and channel.readyState == "open":
            self._send(channel, json.dumps(error))
