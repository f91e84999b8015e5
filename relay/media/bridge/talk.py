"""What the relay itself says on the events channels, for one bridge.

To the page, the ``relay.*`` events (relay.media.relay_events): the time left, the wrap-up,
the ending before a hang-up, and a resumed leg's greeting (reconnected, the transcript,
the time left). To the upstream: the reply in progress cancelled when nobody hears it,
the wrap-up (a system message, then a response once the reply in progress is over), and a
taken-over session's (or a rejoined interview's new session's) new upstream session seeded
with the conversation so far.

``Talk`` decides nothing about the bridge's state: the bridge says when (it alone knows
its state) and ``Talk`` says what, through the bridge's ``EventRelay``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relay.media import relay_events
from relay.media.conversation import ConversationLog, TranscriptItem, seed_events, system_message
from relay.media.events import EventRelay

log = logging.getLogger("relay.media")

# How long the ending may take to leave the page's channel before teardown closes it.
ENDING_FLUSH_S = 0.3
# At most this many of the latest transcript items seed a taken-over upstream session.
SEED_MAX_ITEMS = 200
# How long the seeding may wait for the upstream's channel, and for room in it.
SEED_TIMEOUT_S = 10.0
CONTINUE_NOTE = (
    "The interview was interrupted by a technical problem and continues now with the same "
    "candidate. Do not greet the candidate again or start over: continue from where the "
    "conversation above left off."
)
WRAP_UP_NOTE = (
    "About {seconds} seconds of interview time remain. Bring the interview to a close now: "
    "ask nothing new, thank the candidate and say goodbye briefly."
)


class Talk:
    def __init__(
        self,
        *,
        session_id: str,
        events: EventRelay,
        conversation: ConversationLog,
        dialect: str,
    ) -> None:
        self._session_id = session_id
        self._events = events
        self._conversation = conversation
        self._dialect = dialect
        # The wrap-up's response waits for the reply in progress to be over.
        self._response_waiting = False
        # The wrap-up's system message, once sent: a new upstream session healing a lost
        # leg is given it again after the conversation (the seed holds no system items).
        self._wrap_up_note: str | None = None

    # ------------------------------------------------------------------ to the page
    def time_left(self, seconds: float) -> None:
        self._events.send_to_browser(relay_events.time_left(seconds))

    def greet(self, gap_s: float, time_left_s: float) -> None:
        """A resumed (or taken-over) leg's first events: it is back, after how long, what
        was said so far, the time left; then upstream events flow to it again."""
        events = self._events
        events.send_to_browser(relay_events.reconnected(gap_s))
        events.send_to_browser(relay_events.transcript(self._conversation.items))
        events.send_to_browser(relay_events.time_left(time_left_s))
        events.resume_browser_delivery()

    def upstream_reconnecting(self, attempt: int) -> None:
        """The interviewer's leg dropped: a new one is being opened (attempt 1, 2, ...)."""
        self._events.send_to_browser(relay_events.upstream_reconnecting(attempt))

    def upstream_reconnected(self, gap_s: float, time_left_s: float) -> None:
        """A new upstream leg is up: the page clears its notice; the time left (unchanged
        while it was away)."""
        self._events.send_to_browser(relay_events.upstream_reconnected(gap_s))
        self._events.send_to_browser(relay_events.time_left(time_left_s))

    async def ending(self, reason: str) -> None:
        """``relay.session.ending`` before the hang-up, when the relay decided it and the
        page can hear it; then up to ``ENDING_FLUSH_S`` for it to leave."""
        page_reason = relay_events.page_reason(reason)
        if page_reason is None or not self._events.browser_open:
            return
        self._events.end_browser_delivery(relay_events.ending(page_reason))
        await self._events.drain_browser(ENDING_FLUSH_S)

    # ------------------------------------------------------------------ to the upstream
    def cancel_reply(self) -> None:
        """Nobody hears the reply in progress: stop its generation and its audio."""
        conversation = self._conversation
        if conversation.generating is not None:
            self._events.send_upstream({"type": "response.cancel"})
        if conversation.playing is not None:
            self._events.send_upstream({"type": "output_audio_buffer.clear"})
        self._response_waiting = False

    def wrap_up(self, seconds: float) -> None:
        """Ask the interviewer to close: the page is told, the upstream gets a system
        message, then a response once the reply in progress (if any) is over."""
        log.info(
            "session %s: %.0fs left: the interviewer is asked to wrap up", self._session_id, seconds
        )
        self._events.send_to_browser(relay_events.wrap_up(seconds))
        note = WRAP_UP_NOTE.format(seconds=relay_events.whole_seconds(seconds))
        self._wrap_up_note = note
        self._events.send_upstream(system_message(note))
        if self._conversation.replying:
            self._response_waiting = True
        else:
            self._events.send_upstream({"type": "response.create"})

    def reply_over(self) -> None:
        """The reply in progress is over (the bridge calls it only while the page hears;
        also once a healed upstream leg is seeded: a wrap-up that waited for the cut reply
        asks the new session for its response)."""
        if self._response_waiting:
            self._response_waiting = False
            self._events.send_upstream({"type": "response.create"})

    async def seed_healed(self, items: Sequence[TranscriptItem]) -> None:
        """A new upstream session replacing a lost leg: the conversation so far, then the
        wrap-up's note again if it was given (the interview is closing). (The bridge then
        calls ``reply_over``: a wrap-up that waited for the cut reply asks for its
        response.)"""
        await self.seed(items)
        note = self._wrap_up_note
        if note is not None:
            await self._events.send_upstream_paced([system_message(note)], SEED_TIMEOUT_S)

    async def seed(self, items: Sequence[TranscriptItem]) -> None:
        """A taken-over session's (or a rejoined interview's new session's, or a healed
        upstream leg's) new upstream session gets the conversation so far."""
        events = seed_events(list(items)[-SEED_MAX_ITEMS:], self._dialect, note=CONTINUE_NOTE)
        sent = await self._events.send_upstream_paced(events, SEED_TIMEOUT_S)
        log.info(
            "session %s: seeded the new upstream session with %d of %d items",
            self._session_id,
            sent,
            len(events),
        )
