"""One interview set up end to end, as the benchmark's generator does it: the browser peer,
admission (``POST /api/realtime-session``), the exchange (``POST /api/webrtc-exchange``;
or straight to the upstream for the direct control), both legs connected, and the time
to first reply audio split into its steps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.ga_upstream import GaUpstream
from bench.relay_process import RELAY_PORT
from bench.run import Pair, hook_receiver, new_peer


async def sent_ssrc(pc: RTCPeerConnection) -> int:
    """A peer's sending audio SSRC, from its statistics."""
    for stats in (await pc.getStats()).values():
        if stats.type == "outbound-rtp":
            return int(stats.ssrc)
    raise RuntimeError("a peer sends no audio")


async def probe_hops(pairs: list[Pair]) -> list[tuple[int, int]]:
    """(SSRC into the relay, SSRC out of it) for both directions of every pair."""
    hops = []
    for pair in pairs:
        assert pair.browser is not None and pair.upstream is not None
        if pair.at_upstream.ssrc is None or pair.at_browser.ssrc is None:
            raise RuntimeError(f"session {pair.index} has not received audio both ways")
        hops += [
            (await sent_ssrc(pair.browser), pair.at_upstream.ssrc),
            (await sent_ssrc(pair.upstream), pair.at_browser.ssrc),
        ]
    return hops


async def open_session(
    pair: Pair,
    upstream: GaUpstream,
    http: aiohttp.ClientSession | None,
    token: str,
    lock: asyncio.Lock,
    events: dict[int, int],
    first_audio: dict[int, dict[str, float]],
    after: Callable[[Pair], None] | None = None,
) -> None:
    """Admission, exchange, both legs connected (``http`` None: direct, no relay); then
    ``after(pair)`` (the compiled generator takes the endpoints' audio over)."""
    upstream.pairs[pair.index] = pair
    pc = pair.browser = new_peer()
    pc.addTransceiver(pair.browser_tx, direction="sendrecv")
    channel = pc.createDataChannel("oai-events")
    events[pair.index] = 0

    def on_message(message: Any) -> None:
        events[pair.index] += 1

    channel.on("message", on_message)
    hook_receiver(pc, pair.at_browser)
    await pc.setLocalDescription(await pc.createOffer())
    offer = str(pc.localDescription.sdp)
    browser_at = watch_browser_leg(pc)
    server_timing = ""
    async with lock:
        upstream.current = pair.index
        if http is None:
            exchange_at = time.time()
            answer = await upstream.answer_timed(pair.index, offer)
        else:
            auth = {"Authorization": f"Bearer {token}"}
            base = f"http://127.0.0.1:{RELAY_PORT}"
            # As the page says it: the recording notice was shown (required while recording).
            notice = {"recording_notice_shown": True}
            async with http.post(f"{base}/api/realtime-session", json=notice, headers=auth) as r:
                body = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"admission {r.status}: {body}")
            exchange = {"session_id": body["session_id"], "type": "offer", "sdp": offer}
            # From the exchange request on (admission is a request of its own).
            exchange_at = time.time()
            async with http.post(f"{base}/api/webrtc-exchange", json=exchange, headers=auth) as r:
                reply = await r.json()
                if r.status != 201:
                    raise RuntimeError(f"exchange {r.status}: {reply}")
                server_timing = r.headers.get("Server-Timing", "")
            answer = reply["sdp"]
        upstream.current = None
    browser_at["answer"] = time.time()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    deadline = time.monotonic() + 60
    while not (
        pc.connectionState == "connected"
        and pair.upstream is not None
        and pair.upstream.connectionState == "connected"
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {pair.index} did not connect")
        await asyncio.sleep(0.05)
    while not pair.at_browser.t:
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {pair.index}: no upstream audio at the browser")
        await asyncio.sleep(0.005)
    relay_side: dict[str, float] = {}
    if http is not None:
        relay_side = await relay_first_audio(http, token, body["session_id"])
    first_audio[pair.index] = (
        relay_side
        | first_audio_split(
            exchange_at,
            pair.at_browser.t[0],
            upstream.answer_s.get(pair.index, 0.0),
            upstream.connected_at.get(pair.index),
            pair.upstream_tx.sent.get(0),
        )
        | first_audio_timeline(
            exchange_at,
            browser_at
            | {
                "upstream_answered": upstream.answered_at.get(pair.index),
                "upstream_connected": upstream.connected_at.get(pair.index),
                "upstream_first_sent": pair.upstream_tx.sent.get(0),
                "heard": pair.at_browser.t[0],
            },
            server_timing,
        )
    )
    if after is not None:
        after(pair)


async def relay_first_audio(
    http: aiohttp.ClientSession, token: str, session_id: str
) -> dict[str, float]:
    """What the relay saw of the reply audio so far: upstream packets it had to drop
    because the browser leg was not up yet (20 ms each), and when the first arrived."""
    async with http.get(
        f"http://127.0.0.1:{RELAY_PORT}/api/sessions/{session_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        media = (await r.json()).get("media") or {}
    out: dict[str, float] = {}
    direction = media.get("upstream_to_browser") or {}
    dropped = (direction.get("dropped") or {}).get("before_connect")
    if dropped is not None:
        out["relay_dropped_before_browser_leg"] = dropped
    first = media.get("time_to_first_upstream_audio_ms")
    if first is not None:
        out["relay_first_upstream_packet_ms"] = first
    return out


def watch_browser_leg(pc: RTCPeerConnection) -> dict[str, float | None]:
    """When the browser's leg completed ICE and connected (DTLS), wall clock."""
    at: dict[str, float | None] = {}

    @pc.on("iceconnectionstatechange")
    def on_ice() -> None:
        if pc.iceConnectionState in ("connected", "completed"):
            at.setdefault("browser_ice", time.time())

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            at.setdefault("browser_connected", time.time())

    return at


def first_audio_timeline(
    exchange_at: float, at: dict[str, float | None], server_timing: str
) -> dict[str, float]:
    """Each step of one session's set-up in ms since the exchange request (``at_*``), and
    the relay's own ``Server-Timing`` segments of the exchange (``st_*``, ms)."""
    out = {f"at_{k}_ms": round((t - exchange_at) * 1000, 2) for k, t in at.items() if t}
    for part in server_timing.split(","):
        name, _, dur = part.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            out[f"st_{name}_ms"] = float(dur)
    return out


def first_audio_split(
    exchange_at: float,
    heard_at: float,
    upstream_answer_s: float,
    upstream_connected_at: float | None,
    upstream_first_sent_at: float | None,
) -> dict[str, float]:
    """Exchange request → first upstream audio heard at the browser, in ms, split into
    the upstream's own share (answering the SDP; from its leg connecting to its first
    packet) and the rest: the relay's share (both legs, forwarding) plus the browser
    leg's ICE/DTLS, which the direct control measures alone."""
    total = heard_at - exchange_at
    own = upstream_answer_s
    if upstream_connected_at is not None and upstream_first_sent_at is not None:
        own += max(0.0, upstream_first_sent_at - upstream_connected_at)
    return {
        "total_ms": round(total * 1000, 2),
        "upstream_ms": round(own * 1000, 2),
        "rest_ms": round((total - own) * 1000, 2),
    }
