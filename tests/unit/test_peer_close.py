"""``close_peer``: aiortc's close runs as an owned task whose failure is logged, even when
it outlives the wait (a real aiortc peer whose close is held, then fails)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiortc import RTCPeerConnection

from relay import tasks
from relay.media import peers
from tests.integration.media_helpers import wait_until


async def test_a_close_that_outlives_the_wait_stays_owned_and_its_failure_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(peers, "PEER_CLOSE_WAIT_S", 0.05)
    pc = RTCPeerConnection()
    real_close = pc.close
    release = asyncio.Event()

    async def held_close() -> None:
        await real_close()
        await release.wait()  # a TURN server that does not answer the deallocation
        raise RuntimeError("deallocation failed")

    monkeypatch.setattr(pc, "close", held_close)
    owned = tasks.owned_count()
    with caplog.at_level(logging.WARNING, logger="relay.media"):
        await peers.close_peer(pc)
    assert "still running" in caplog.text
    assert tasks.owned_count() == owned + 1  # held by relay.tasks, not only weakly by asyncio
    release.set()
    await wait_until(lambda: tasks.owned_count() == owned, 5, "the close task ended")
    failures = [r for r in caplog.records if r.exc_info and "peer-close" in r.getMessage()]
    assert len(failures) == 1
    assert str(failures[0].exc_info[1]) == "deallocation failed"  # type: ignore[index]


async def test_a_close_that_fails_in_time_is_raised_to_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pc = RTCPeerConnection()
    real_close = pc.close

    async def failing_close() -> None:
        await real_close()
        raise RuntimeError("close failed")

    monkeypatch.setattr(pc, "close", failing_close)
    with pytest.raises(RuntimeError, match="close failed"):
        await peers.close_peer(pc)
