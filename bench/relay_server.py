"""The relay side of the benchmark: the project's ``Bridge`` behind a tiny HTTP API.

Run by ``bench/run.py`` pinned to one core (``taskset -c 0``); not meant to be run by hand.
``POST /session`` answers a browser offer with a real ``relay.media.bridge.Bridge``, whose
upstream leg offers to the benchmark's endpoint process (``--upstream`` URL), exactly as it
would offer to OpenAI. ``GET /stats`` reports this process's CPU, RSS, threads and event
loop lag and the bridges' drop counters.

Modes: ``passthrough`` (the relay's normal Opus path: the fast path), ``aiortc`` (Opus
passthrough through aiortc's receiver and sender, ``media.fast_path = false``),
``recording`` (the same as ``passthrough`` with a ``SessionRecorder`` per bridge: taps, the
writer thread and its packet logs in a temporary directory; finalisation runs after the
session, in other processes, and is not part of this process's cost) and ``decode`` (the
bridge forced onto its decode/re-encode fallback with aiortc's own audio-level function,
i.e. aiortc's default relay cost).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiortc.rtp
from aiohttp import web

from bench.loop_lag import LoopLag
from relay.config import EventsConfig, IceConfig, MediaConfig, SessionConfig
from relay.media import aiortc_private
from relay.media.bridge import Bridge, BridgeSettings, EndState
from relay.media.metrics import MediaMetrics
from relay.observability.metrics import MetricsRegistry
from relay.recording.recorder import RecordingWriter, SessionRecorder
from relay.upstream.base import MintedSession, SdpAnswer, SessionOverrides

SETTINGS = BridgeSettings(
    session=SessionConfig(connect_timeout_s=60, idle_media_timeout_s=600, ice_gather_timeout_s=10),
    media=MediaConfig(queue_max_frames=50),
    events=EventsConfig(),
    ice=IceConfig(),
)

# Passthrough through aiortc's receiver hook and sender (``media.fast_path = false``).
AIORTC_SETTINGS = dataclasses.replace(
    SETTINGS, media=SETTINGS.media.model_copy(update={"fast_path": False})
)


class EndpointUpstream:
    """The benchmark's endpoint process in the role of OpenAI's /realtime/calls."""

    dialect = "ga"
    model = "bench"

    def __init__(self, url: str) -> None:
        self._url = url
        self._http: aiohttp.ClientSession | None = None

    async def mint(
        self, *, request_id: str, overrides: SessionOverrides | None = None
    ) -> MintedSession:
        return MintedSession(secret="ek_bench", expires_at=0, model=self.model)

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        async with self._http.post(self._url, json={"sdp": offer_sdp, "id": request_id}) as r:
            r.raise_for_status()
            body = await r.json()
        return SdpAnswer(sdp=body["sdp"], call_id=None)

    async def hangup(self, call_id: str) -> None:
        return None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class NoHooks:
    async def on_connecting(self) -> None:
        return None

    async def on_active(self, upstream_call_id: str | None) -> None:
        return None

    async def on_finished(self, state: EndState, reason: str, duration_s: float) -> None:
        return None


class GcPauses:
    """Garbage-collector pauses in this process (per generation, since the last reset)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.pauses: list[tuple[int, float]] = []
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._started))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for generation in (0, 1, 2):
            pauses = [p for g, p in self.pauses if g == generation]
            out[f"gen{generation}"] = {
                "count": len(pauses),
                "max_ms": round(max(pauses, default=0.0) * 1000, 2),
                "total_ms": round(sum(pauses) * 1000, 2),
            }
        return out


def proc_status(field: str) -> int:
    """An integer field of /proc/self/status (kB for memory fields)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    return proc_status("VmRSS") / 1024.0


class RelayServer:
    def __init__(self, mode: str, upstream_url: str, *, keep_rtp_history: bool = False) -> None:
        self.mode = mode
        self.keep_rtp_history = keep_rtp_history
        self.upstream = EndpointUpstream(upstream_url)
        self.metrics = MediaMetrics(MetricsRegistry())
        self.bridges: list[Bridge] = []
        self.lag = LoopLag()
        self.gc = GcPauses()
        self.recordings = tempfile.mkdtemp(prefix="bench-rec-") if mode == "recording" else None
        self.writer = RecordingWriter() if mode == "recording" else None

    def recorder(self, session_id: str) -> SessionRecorder | None:
        if self.writer is None or self.recordings is None:
            return None
        recorder = SessionRecorder(
            recording_id=f"rec_{session_id}",
            session_id=session_id,
            directory=Path(self.recordings) / session_id,
            instance_id="bench",
            audio_format="ogg",
            on_failed=lambda r: print(f"recording failed: {r.failure}", flush=True),
            on_closed=lambda r: None,
            loop=asyncio.get_running_loop(),
        )
        self.writer.add(recorder)
        return recorder

    async def session(self, request: web.Request) -> web.Response:
        body = await request.json()
        # The endpoint process names the session; its upstream peer finds it by that name.
        bridge = Bridge(
            session_id=f"bench{body['id']}",
            request_id=str(body["id"]),
            settings=SETTINGS if self.mode != "aiortc" else AIORTC_SETTINGS,
            upstream=self.upstream,
            minted=MintedSession(secret="ek_bench", expires_at=0, model="bench"),
            max_duration_s=3600,
            metrics=self.metrics,
            hooks=NoHooks(),
            force_decode=self.mode == "decode",
            recorder=self.recorder(f"bench{body['id']}"),
        )
        self.bridges.append(bridge)
        answer = await bridge.start(body["sdp"])
        if self.keep_rtp_history:
            # Undo the bridge's "no retransmission history" (to measure what it saves).
            for pc in (bridge.browser_pc, bridge.upstream_pc):
                for sender in pc.getSenders() if pc else []:
                    setattr(sender, "_RTCRtpSender__rtp_history", {})  # noqa: B010
        if self.mode == "decode":
            # The decode path installs the numpy audio level; the baseline is aiortc as shipped.
            setattr(aiortc.rtp, "compute_audio_level_dbov", aiortc_private.AIORTC_AUDIO_LEVEL)  # noqa: B010
        return web.json_response({"sdp": answer})

    async def stats(self, request: web.Request) -> web.Response:
        times = os.times()
        lag = sorted(self.lag.samples) or [0.0]
        drops = {
            "queue_full": 0,
            "other_codec": 0,
            "duplicate": 0,
            "decoder_backlog": 0,
            "before_connect": 0,
            "late": 0,
        }
        modes: dict[str, int] = {}
        packets_in = 0
        for bridge in self.bridges:
            snapshot = bridge.stats()
            for direction in ("browser_to_upstream", "upstream_to_browser"):
                d: dict[str, Any] = snapshot[direction]
                packets_in += d["packets_in"]
                modes[d["mode"]] = modes.get(d["mode"], 0) + 1
                for key in drops:
                    drops[key] += d["dropped"][key]
        return web.json_response(
            {
                "cpu": times.user + times.system,
                "user": times.user,
                "sys": times.system,
                "wall": time.time(),
                "rss_mb": rss_mb(),
                # Times the kernel took the CPU away from us (other processes on our core).
                "preempted": proc_status("nonvoluntary_ctxt_switches"),
                "threads": threading.active_count(),
                "bridges": len(self.bridges),
                "active": sum(1 for b in self.bridges if b.state == "active"),
                "modes": modes,
                "packets_in": packets_in,
                "drops": drops,
                "lag_p50_ms": lag[len(lag) // 2] * 1000,
                "lag_p99_ms": lag[min(len(lag) - 1, int(len(lag) * 0.99))] * 1000,
                "lag_max_ms": lag[-1] * 1000,
                "gc": self.gc.summary(),
                "stalls": self.lag.stalls[-50:],
                "stall_count": len(self.lag.stalls),
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.lag.samples = []
        self.lag.stalls = []
        self.gc.pauses = []
        return web.json_response({})

    async def close(self, request: web.Request) -> web.Response:
        await asyncio.gather(*(b.close("bench_over") for b in self.bridges))
        self.bridges = []
        return web.json_response({"rss_mb": rss_mb(), "threads": threading.active_count()})


async def serve(mode: str, port: int, upstream_url: str, keep_rtp_history: bool) -> None:
    server = RelayServer(mode, upstream_url, keep_rtp_history=keep_rtp_history)
    lag_task = asyncio.create_task(server.lag.run())
    app = web.Application()
    app.router.add_post("/session", server.session)
    app.router.add_get("/stats", server.stats)
    app.router.add_post("/reset", server.reset)
    app.router.add_post("/close", server.close)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        lag_task.cancel()
        await server.upstream.close()
        if server.writer is not None and server.recordings is not None:
            await asyncio.to_thread(server.writer.close)
            shutil.rmtree(server.recordings, ignore_errors=True)
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--mode", choices=["passthrough", "aiortc", "recording", "decode"], required=True
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--keep-rtp-history", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.mode, args.port, args.upstream, args.keep_rtp_history))


if __name__ == "__main__":
    main()
