"""Open and close 25 bridged sessions after a warm-up batch; tasks, threads, peers and
file descriptors must not stay above where they were before them (aiortc starts a
decoder thread per receiver, the relay two peers per session, the simulator one)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from dataclasses import dataclass, fields

import pytest

from relay.media.peers import open_peer_count
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import RelayHarness

# A leak of any kind grows with every session: 25 show one as surely as 50 did, in half
# the time.
SESSIONS = 25
CONCURRENCY = 5
SPEECH = encode_opus(speech_like(0.3))


# Pooled things that come and go with load, within bounds, are counted apart: the
# default executor's workers ("asyncio_N" on the standard library's loop, "uvloop_N" on
# uvloop's, up to its max_workers) and HTTP keep-alive connections (a TCP socket each
# side, an aiohttp handler task on the server side).
EXECUTOR_THREAD_PREFIX = ("asyncio_", "uvloop_")
HTTP_HANDLER = "RequestHandler.start"


@dataclass(frozen=True)
class Footprint:
    # Tasks by their coroutine's name: a leak raises a name's count, while a transient
    # task of the baseline's moment (one finishing its work) may be gone at the end.
    tasks: Counter[str]
    threads: int
    decoder_threads: int
    relay_peers: int
    udp_sockets: int
    other_fds: int
    simulator_calls: int

    def above(self, baseline: Footprint) -> dict[str, object]:
        """What this footprint holds beyond the baseline (empty: nothing left behind)."""
        extra: dict[str, object] = {}
        tasks = self.tasks - baseline.tasks
        if tasks:
            extra["tasks"] = dict(tasks)
        for field in fields(self):
            if field.name != "tasks":
                now, then = getattr(self, field.name), getattr(baseline, field.name)
                if now > then:
                    extra[field.name] = f"{then} -> {now}"
        return extra


@dataclass(frozen=True)
class Pools:
    executor_threads: int
    tcp_sockets: int
    http_handler_tasks: int


def _socket_inodes(*tables: str) -> set[str]:
    inodes: set[str] = set()
    for table in tables:
        with open(f"/proc/net/{table}") as f:
            inodes.update(line.split()[9] for line in list(f)[1:])
    return inodes


def _fds() -> tuple[int, int, int]:
    """(UDP sockets, TCP sockets, everything else) among this process's descriptors."""
    udp, tcp = _socket_inodes("udp", "udp6"), _socket_inodes("tcp", "tcp6")
    counts = [0, 0, 0]
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the directory listing's own descriptor
        inode = target[len("socket:[") : -1] if target.startswith("socket:[") else ""
        counts[0 if inode in udp else 1 if inode in tcp else 2] += 1
    return counts[0], counts[1], counts[2]


def footprint(simulator: RunningSimulator) -> Footprint:
    live_calls = sum(1 for c in simulator.state.calls.values() if c.state != "closed")
    names = [t.name for t in threading.enumerate()]
    tasks = [getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks()]
    udp, _, other = _fds()
    return Footprint(
        tasks=Counter(t for t in tasks if t != HTTP_HANDLER),
        threads=sum(1 for n in names if not n.startswith(EXECUTOR_THREAD_PREFIX)),
        decoder_threads=sum(1 for n in names if n.endswith("-decoder")),
        relay_peers=open_peer_count(),
        udp_sockets=udp,
        other_fds=other,
        simulator_calls=live_calls,
    )


def pools() -> Pools:
    return Pools(
        executor_threads=sum(
            1 for t in threading.enumerate() if t.name.startswith(EXECUTOR_THREAD_PREFIX)
        ),
        tcp_sockets=_fds()[1],
        http_handler_tasks=sum(1 for t in asyncio.all_tasks() if HTTP_HANDLER in repr(t)),
    )


async def one_session(relay: RelayHarness, token: str, index: int) -> None:
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = body["session_id"]
    auth = {"Authorization": f"Bearer {token}"}
    browser = BrowserPeer(payloads=SPEECH)
    try:
        offer = await browser.offer()
        async with relay.client.post(
            "/api/webrtc-exchange",
            json={"session_id": session_id, "type": "offer", "sdp": offer},
            headers=auth,
        ) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
        await browser.accept(answer["sdp"])
        assert relay.services.bridges is not None
        bridge = relay.services.bridges.get(session_id)
        assert bridge is not None
        await wait_until(
            lambda: (
                bridge.upstream_to_browser.forwarded > 2
                and bridge.browser_to_upstream.forwarded > 2
            ),
            10,
            "media both ways",
        )
        if index % 2:
            async with relay.client.delete(f"/api/sessions/{session_id}", headers=auth) as resp:
                assert resp.status == 204
        else:
            await browser.pc.close()
        await bridge.wait_closed()
        assert bridge.end_reason in (
            "hangup",
            "browser_disconnected",
            "browser_channel_closed",
            "browser_gone",
        )
    finally:
        await browser.close()


@pytest.mark.slow
async def test_sessions_leave_nothing_behind(
    make_relay: MakeRelay, simulator: RunningSimulator
) -> None:
    relay = await make_relay(
        overrides={
            "limits": {
                "per_user_concurrent_sessions": CONCURRENCY,
                "per_user_requests_per_minute": 10 * SESSIONS,
            },
            # The sessions whose page vanishes wait briefly for a resume (browser_lost:
            # the lost leg released, the upstream's audio parked), then end browser_gone.
            # The bridge's monitor notices that end at its next tick, a quarter of the idle
            # media timeout (at most 5 s, the default's): 4 s makes it 1 s, so half the
            # sessions no longer take 5 s each (no session here is quiet for that long).
            "session": {"reconnect_grace_s": 0.5, "idle_media_timeout_s": 4.0},
            # The memory keeper's collection is awaited before each footprint: a short
            # delay keeps that wait short (and no pause share: the test process's own
            # objects would make its bound wait longer).
            "server": {"memory_release_delay_s": 1.0, "memory_release_pause_share": 0},
        }
    )
    token = await relay.add_user(seconds=36000)

    async def batch(start: int) -> None:
        await asyncio.gather(*(one_session(relay, token, start + i) for i in range(CONCURRENCY)))

    # Warm up at the same concurrency: HTTP keep-alive pools, the default executor's
    # worker threads and the codecs' one-time state exist from here on.
    await batch(0)
    await wait_until(lambda: footprint(simulator).simulator_calls == 0, 10, "warm-up calls closed")
    # Each session's recording closes its files and is finalised after the session ends
    # (the render pool's threads and pipes exist from the first one on).
    recordings = relay.services.recordings
    assert recordings is not None
    await wait_until(lambda: recordings.idle, 60, "warm-up recordings finalised")
    # The memory keeper's collection after the last ended interview is still pending.
    await relay.services.memory.settled()
    baseline = footprint(simulator)
    assert baseline.relay_peers == 0 and baseline.decoder_threads == 0

    for start in range(CONCURRENCY, SESSIONS + CONCURRENCY, CONCURRENCY):
        await batch(start)

    await wait_until(lambda: recordings.idle, 120, "recordings finalised")
    await relay.services.memory.settled()
    try:
        await wait_until(lambda: not footprint(simulator).above(baseline), 10, "back to baseline")
    except AssertionError:
        end = footprint(simulator)
        tasks = "\n".join(sorted(repr(t.get_coro()) for t in asyncio.all_tasks()))
        threads = [t.name for t in threading.enumerate()]
        raise AssertionError(
            f"left behind: {end.above(baseline)}\n{end}\nbaseline: {baseline}\n"
            f"{pools()}\n{threads}\n{tasks}"
        ) from None
    pooled = pools()
    assert pooled.executor_threads <= min(32, (os.cpu_count() or 1) + 4)  # the pool's bound
    # Keep-alive connections: the test client's, the relay's to the simulator, both ends.
    assert pooled.http_handler_tasks <= 4 * CONCURRENCY
    assert pooled.tcp_sockets <= 8 * CONCURRENCY + 4
    rows = await relay.sql(
        "SELECT state, count(*) AS n FROM interview_sessions GROUP BY state ORDER BY state"
    )
    assert [(r["state"], r["n"]) for r in rows] == [("ended", SESSIONS + CONCURRENCY)]
    assert len(relay.services.registry) == 0
    assert relay.services.bridges is not None and len(relay.services.bridges) == 0
