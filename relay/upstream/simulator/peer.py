"""One simulated call: an aiortc peer answering the caller's offer, the ``oai-events`` data
channel, an energy VAD on the received audio and the reply voice on the outbound track.

Decoding of the caller's audio happens in aiortc's decoder thread; on the loop each 20 ms
frame costs one numpy RMS and a few comparisons. Reply audio is pre-encoded (``voice``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError

from relay.config import IceConfig
from relay.media.ice import rtc_configuration
from relay.media.peers import close_peer
from relay.tasks import cancel_and_wait, spawn
from relay.upstream.simulator.conversation import (
    Conversation,
    Event,
    Step,
    TranscriptionPlan,
)
from relay.upstream.simulator.errors import invalid_offer
from relay.upstream.simulator.faults import AnswerCodec
from relay.upstream.simulator.state import MAX_EVENTS_KEPT, CallRecord, SimulatorState
from relay.upstream.simulator.track import ReplyTrack
from relay.upstream.simulator.vad import (
    EnergyVad,
    SpeechStarted,
    VadEvent,
    VadParams,
    frame_rms,
)
from relay.upstream.simulator.voice import EncodedLine, VoiceBank

log = logging.getLogger("relay.simulator")

EVENTS_LABEL = "oai-events"
_MIME_TO_CODEC = {"audio/opus": "opus", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
_PREFERENCES: dict[AnswerCodec, tuple[str, ...]] = {
    "opus": ("audio/opus", "audio/PCMU", "audio/PCMA"),
    "pcmu": ("audio/PCMU",),
}
# How long a closing call waits for its last event (e.g. an error) to leave the channel.
_FLUSH_TIMEOUT_S = 2.0


class SimCall:
    def __init__(
        self,
        record: CallRecord,
        *,
        state: SimulatorState,
        conversation: Conversation,
        voice: VoiceBank,
        ice: IceConfig,
        generation_speed: float = 4.0,
        transcription_delay_s: float = 0.3,
        on_closed: Callable[[SimCall], None] | None = None,
    ) -> None:
        self.record = record
        self._on_closed = on_closed
        self._state = state
        self._conversation = conversation
        self._voice = voice
        self._generation_speed = generation_speed
        self._transcription_delay_s = transcription_delay_s
        # The reply being generated and how many of its frames exist so far.
        self._generating: EncodedLine | None = None
        self._generated = 0.0
        self._timers: set[asyncio.TimerHandle] = set()
        self._pc = RTCPeerConnection(rtc_configuration(ice))
        self._track = ReplyTrack(voice.for_codec("opus"), self)
        self._channel: RTCDataChannel | None = None
        # Events decided before the channel opened (sent after session.created); bounded
        # in case the caller never opens ``oai-events``.
        self._pending: deque[Event] = deque(maxlen=MAX_EVENTS_KEPT)
        self._vad = EnergyVad(self._vad_params())
        self._tasks: set[asyncio.Task[None]] = set()
        self._consuming = False
        self._closing = False
        self.closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"SimCall({self.record.call_id}, {self.record.dialect}, {self.record.state})"

    @property
    def call_id(self) -> str:
        return self.record.call_id

    # -- negotiation -------------------------------------------------------------------

    async def answer(self, offer_sdp: str, codec: AnswerCodec) -> str:
        """Answer the offer; ICE, DTLS and media then proceed on their own."""
        pc = self._pc
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        await self._set_offer(offer_sdp, codec)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
            answer: str = pc.localDescription.sdp
            self._use_codec(answer)
        except Exception:
            await close_peer(pc)
            raise
        self._set_state("connecting")
        return answer

    async def answer_unreachable(self, offer_sdp: str, host: str, port: int) -> str:
        """A well-formed answer whose only candidate is ``host:port``, where nothing answers.

        The peer never starts ICE (it is closed right away): were it alive, its own checks
        would reach the caller, which would then find it through a peer-reflexive candidate.
        """
        await self._set_offer(offer_sdp, "opus")
        description = aiortc_sdp.SessionDescription.parse((await self._pc.createAnswer()).sdp)
        await close_peer(self._pc)
        for media in description.media:
            media.host, media.port = host, port
            media.ice_candidates = [
                RTCIceCandidate(
                    component=1,
                    foundation="1",
                    ip=host,
                    port=port,
                    priority=2130706431,
                    protocol="udp",
                    type="host",
                )
            ]
            media.ice_candidates_complete = True
        answer = str(description)
        self._use_codec(answer)
        self._set_state("connecting")
        return answer

    async def _set_offer(self, offer_sdp: str, codec: AnswerCodec) -> None:
        transceiver = self._pc.addTransceiver(self._track, direction="sendrecv")
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences(
            [c for mime in _PREFERENCES[codec] for c in capabilities if c.mimeType == mime]
        )
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except Exception as exc:
            await close_peer(self._pc)
            raise invalid_offer(f"cannot apply the offer: {exc}") from None

    def _use_codec(self, answer_sdp: str) -> None:
        description = aiortc_sdp.SessionDescription.parse(answer_sdp)
        audio = next(m for m in description.media if m.kind == "audio")
        codec = _MIME_TO_CODEC.get(audio.rtp.codecs[0].mimeType.lower(), "opus")
        self.record.codec = codec
        self._track.set_voice(self._voice.for_codec(codec))

    # -- peer events -------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected":
            self._set_state("connected")
        elif state == "failed" and not self._closing:
            self._spawn(self.close("ice_or_dtls_failed"))
        elif state == "closed" and not self._closing:
            self._spawn(self.close("peer_closed"))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.record.data_channel_label = channel.label
        self._state.notify()
        if channel.label != EVENTS_LABEL or self._channel is not None:
            return
        self._channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _on_channel_open(self) -> None:
        self.record.data_channel_open = True
        if self.record.dialect == "beta" and self._state.faults.beta_disabled:
            self._apply(self._conversation.beta_disabled())
            return
        pending = list(self._pending)
        self._pending.clear()
        self._apply(self._conversation.opened())
        self._send(pending)

    def _on_message(self, message: str | bytes) -> None:
        try:
            logged: Any = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            logged = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.record.client_events.append(logged)
        self._apply(self._conversation.client_event(message))

    def _on_track(self, track: MediaStreamTrack) -> None:
        # One caller voice: the first audio track feeds the VAD, any other is ignored.
        if track.kind == "audio" and not self._consuming:
            self._consuming = True
            self._spawn(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        """Measure the caller's audio and run the VAD on it, frame by frame."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            rms = frame_rms(frame.to_ndarray())
            duration_ms = round(1000 * frame.samples / frame.sample_rate)
            record = self.record
            record.frames_received += 1
            record.audio_ms_received += duration_ms
            record.rms_sum += rms
            record.rms_max = max(record.rms_max, rms)
            if self._conversation.turn_detection is not None:
                self._on_vad(self._vad.process(rms, duration_ms))
            self._state.notify()

    def _on_vad(self, event: VadEvent | None) -> None:
        if event is None:
            return
        segments = self.record.vad_segments
        if isinstance(event, SpeechStarted):
            segments.append((event.onset_ms, None))
            self._apply(self._conversation.speech_started(event.audio_start_ms))
            return
        if segments and segments[-1][1] is None:
            segments[-1] = (segments[-1][0], event.audio_end_ms)
        spoken_ms = event.audio_end_ms - event.onset_ms
        self._apply(self._conversation.speech_stopped(event.audio_end_ms, spoken_ms))

    # -- reply audio (ReplyListener) ---------------------------------------------------

    def on_tick(self) -> None:
        """Generation runs ``generation_speed`` frames per 20 ms, ahead of playback."""
        line = self._generating
        if line is None or self._closing:
            return
        self._generated += self._generation_speed
        words = bisect.bisect_left(line.word_frames, self._generated)
        self._apply(self._conversation.generation_progress(words))
        if self._generated >= len(line.payloads) and self._generating is line:
            self._generating = None
            self._apply(self._conversation.generation_finished())

    def on_reply_frame(self, frames_sent: int, words_started: int) -> None:
        self.record.reply_frames_sent += 1

    def on_reply_end(self) -> None:
        self._apply(self._conversation.playback_finished())

    # -- applying steps ----------------------------------------------------------------

    def _apply(self, step: Step) -> None:
        conversation = self._conversation
        self.record.conversation_items = len(conversation.item_ids)
        self.record.items_created = conversation.items_created
        if step.stop_generation:
            self._generating = None
            self._track.limit(int(self._generated))
        if step.clear_audio:
            self._track.stop_reply()
        self._send(step.events)
        if step.session_changed:
            self._vad.params = self._vad_params()
        if step.start_reply is not None:
            line = self._voice.for_codec(self.record.codec or "opus").lines[step.start_reply.text]
            self.record.responses_started += 1
            self._generating, self._generated = line, 0.0
            self._track.play(line)
        if step.transcribe is not None and not self._closing:
            self._schedule_transcription(step.transcribe)
        if step.close_reason is not None:
            self._spawn(self.close(step.close_reason))

    def _schedule_transcription(self, plan: TranscriptionPlan) -> None:
        """Transcription is asynchronous: it may land after the reply started."""
        loop = asyncio.get_running_loop()

        def deliver() -> None:
            self._timers.discard(handle)
            if not self._closing:
                self._apply(self._conversation.transcription(plan))

        handle = loop.call_later(self._transcription_delay_s, deliver)
        self._timers.add(handle)

    def _send(self, events: list[Event]) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open" or not self.record.data_channel_open:
            self._pending.extend(events)
            return
        for event in events:
            channel.send(json.dumps(event))
            self.record.server_events.append(event)
        if events:
            self._state.notify()

    def _vad_params(self) -> VadParams:
        turn = self._conversation.turn_detection
        return VadParams.from_turn_detection(turn) if turn is not None else VadParams()

    # -- runtime faults ----------------------------------------------------------------

    def end_beta_disabled(self) -> None:
        """The beta shape was switched off while this beta call is open."""
        if self.record.dialect == "beta" and not self._closing:
            self._apply(self._conversation.beta_disabled())

    # -- lifecycle ---------------------------------------------------------------------

    async def refresh_stats(self) -> None:
        """Read the received-packet count from the peer's RTP statistics."""
        if not self._closing:
            await self._read_packet_count()

    async def _read_packet_count(self) -> None:
        report = await self._pc.getStats()
        received = sum(
            int(getattr(s, "packetsReceived", 0) or 0)
            for s in report.values()
            if getattr(s, "type", "") == "inbound-rtp"
        )
        self.record.packets_received = max(self.record.packets_received, received)

    async def close(self, reason: str, *, hung_up: bool = False) -> None:
        """End the call: flush the event channel, close the peer, stop every task."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.record.hung_up = self.record.hung_up or hung_up
        self.record.closed_reason = reason
        self._generating = None
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._track.stop_reply()
        try:
            with contextlib.suppress(Exception):
                await self._read_packet_count()
            await self._close_channel()
            await close_peer(self._pc)
        except Exception:
            log.exception("simulator: closing call %s failed", self.call_id)
        finally:
            self._track.stop()
            current = asyncio.current_task()
            others = [t for t in self._tasks if t is not current]
            for task in others:
                await cancel_and_wait(task)
            self._set_state("closed")
            self.closed.set()
            if self._on_closed is not None:
                self._on_closed(self)

    async def _close_channel(self) -> None:
        """Close the event channel first: its stream reset is queued behind the last
        messages (e.g. an error event), so they reach the caller before the peer goes."""
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        done = asyncio.Event()
        channel.on("close", done.set)
        channel.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), _FLUSH_TIMEOUT_S)

    def _set_state(self, state: str) -> None:
        if self.record.state != "closed":
            self.record.state = state
        self._state.notify()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Owned by this call: a failure is logged, and close() stops whatever still runs.
        task = spawn(coro, name=f"sim-call-{self.call_id}", log=log)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
