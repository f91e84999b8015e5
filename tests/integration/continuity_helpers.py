"""Helpers of the continuity tests: a page that notes when each event arrived, and the
exchange and resume requests as a page makes them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from relay.media.bridge import Bridge
from tests.integration.cluster_helpers import Client
from tests.integration.media_helpers import BrowserPeer, encode_opus, speech_like, wait_until
from tests.integration.relay_harness import RelayHarness

SPEECH = encode_opus(speech_like(1.6))


def bridge_of(relay: RelayHarness, session_id: str) -> Bridge:
    bridge = relay.services.bridges.get(session_id)
    assert bridge is not None
    return bridge


def state_of(bridge: Bridge) -> str:
    # A call, not an attribute: mypy would keep ``bridge.state`` narrowed across awaits.
    return bridge.state


class Page(BrowserPeer):
    """A ``BrowserPeer`` that notes, for each event, when it arrived (``time.monotonic``:
    the relay under test runs in this process) and its peer's state at that moment."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[tuple[float, str, str]] = []

    def _on_message(self, message: str | bytes) -> None:
        super()._on_message(message)
        kind = str(self.events[-1].get("type"))
        self.arrivals.append((time.monotonic(), kind, self.pc.connectionState))

    def arrival_of(self, kind: str) -> tuple[float, str]:
        """When the first event of ``kind`` arrived, and the peer's state then."""
        for at, seen, state in self.arrivals:
            if seen == kind:
                return at, state
        raise AssertionError(f"no {kind} among {[k for _, k, _ in self.arrivals]}")

    def relay_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if str(e.get("type")).startswith("relay.")]


@dataclass
class Live:
    """A live interview: its session, the candidate's token, the page and its answer."""

    session_id: str
    token: str
    page: Page
    resume_token: str


async def go_live(
    relay: RelayHarness,
    token: str | None = None,
    *,
    seconds: int = 1800,
    payloads: list[bytes] | None = None,
) -> Live:
    """A live session of ``token`` (by default, a new user's with ``seconds``)."""
    if token is None:
        token = await relay.add_user(seconds=seconds)
    status, body, _ = await relay.create_session(token)
    assert status == 201, body
    session_id = str(body["session_id"])
    page = Page(payloads=SPEECH if payloads is None else payloads)
    offer = {"session_id": session_id, "type": "offer", "sdp": await page.offer()}
    async with relay.client.post(
        "/api/webrtc-exchange", json=offer, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    await page.accept(answer["sdp"])
    await page.wait_connected()
    await wait_until(
        lambda: (b := relay.services.bridges.get(session_id)) is not None and b.state == "active",
        10,
        "bridge active",
    )
    return Live(session_id, token, page, str(answer["resume_token"]))


async def resume(
    relay: RelayHarness,
    session_id: str,
    *,
    token: str | None,
    resume_token: str | None,
    page: BrowserPeer,
    sdp: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST /api/sessions/{id}/resume as a page does; (status, body)."""
    body: dict[str, Any] = {"type": "offer", "sdp": sdp if sdp is not None else await page.offer()}
    if resume_token is not None:
        body["resume_token"] = resume_token
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with relay.client.post(
        f"/api/sessions/{session_id}/resume", json=body, headers=headers
    ) as resp:
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer


async def go_live_at(
    client: Client, token: str, session_id: str, pages: list[BrowserPeer]
) -> tuple[Page, str]:
    """Exchange on ``client``'s relay with a page that speaks at once (added to ``pages``,
    which the test closes); (page, resume token)."""
    page = Page(payloads=SPEECH)
    pages.append(page)
    _, answer = await client.go_live(token, session_id, page)
    return page, str(answer["resume_token"])


async def a_full_turn(page: BrowserPeer, *, heard: bool = False) -> None:
    """The upstream transcribes the candidate and replies (``heard``: and the candidate's
    page hears the reply's audio before its transcript is done)."""
    await page.wait_type("conversation.item.input_audio_transcription.completed", 25)
    if heard:
        await wait_until(lambda: page.speaker.loud_frames() > 0, 10, "the interviewer heard")
    await page.wait_type("response.output_audio_transcript.done", 25)


async def told_it_resumed(page: BrowserPeer, kept: list[Any]) -> dict[str, Any]:
    """What a page that resumed an interview its holder lost is told, checked: reconnected
    after a gap, then the transcript kept so far (``kept``: its rows, role and text);
    returns the time-left event that follows."""
    greeting = await page.wait_type("relay.session.reconnected", 10)
    assert greeting["gap_ms"] > 0
    transcript = await page.wait_type("relay.transcript", 10)
    assert [(i["role"], i["text"]) for i in transcript["items"]] == [
        (r["role"], r["text"]) for r in kept
    ]
    time_left: dict[str, Any] = await page.wait_type("relay.session.time_left", 10)
    return time_left
