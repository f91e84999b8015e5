"""The candidate page follows the real service's semantics, in headless Chromium against the
whole relay and the simulator: transcript lines are ordered by conversation item (not by
arrival), and End while the interviewer speaks stops it (response.cancel when a response is
still being generated, then output_audio_buffer.clear) before hanging up."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Page, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import _write_wav, end_interview
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import silence, speech_like
from tests.support.openai_oracle import validate_client_event

CONNECT_S = 10
TURN_S = 15


@pytest.fixture
async def fake_mic_wav(tmp_path: Path) -> Path:
    """2 s of speech, then 30 s of silence: one turn and no barge-in while the reply plays
    (Chromium loops the file)."""
    path = tmp_path / "fake-mic-one-turn.wav"
    pcm = np.concatenate([speech_like(2.0), silence(30.0)])
    await asyncio.to_thread(_write_wav, path, pcm)
    return path


def _audio_playing(events_sent: list[str]) -> bool:
    """The interviewer's audio is playing (started, neither stopped nor cleared since)."""
    buffer = [t for t in events_sent if t.startswith("output_audio_buffer.")]
    return bool(buffer) and buffer[-1] == "output_audio_buffer.started"


async def test_transcript_order_and_end_while_the_interviewer_speaks(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=600)
    await page.goto(str(relay.client.make_url(f"/?token={token}")))
    await page.click("#start")
    await expect(page.locator("#stop")).to_be_enabled(timeout=CONNECT_S * 1000)

    you = page.locator("#transcript li.you").first
    interviewer = page.locator("#transcript li.interviewer").first
    await expect(you).to_have_text(re.compile(r"^You: \(candidate spoke"), timeout=TURN_S * 1000)
    await expect(interviewer).to_have_text(re.compile(r"^Interviewer: \S"), timeout=TURN_S * 1000)
    call = simulator.state.last_call
    assert call is not None

    # The candidate's transcription arrived after the reply had started…
    types = call.events_sent
    assert types.index("response.output_audio_transcript.delta") < types.index(
        "conversation.item.input_audio_transcription.completed"
    )
    # …yet the candidate's line is first: lines follow the items, not the arrival order.
    visible = page.locator("#transcript li:not([hidden])")
    await expect(visible).to_have_count(2)
    await expect(visible.nth(0)).to_have_class("you")
    await expect(visible.nth(1)).to_have_class("interviewer")

    # End while the reply's audio plays.
    await simulator.state.wait_for(lambda: _audio_playing(call.events_sent), TURN_S)
    sent_before = len(call.client_events)
    await end_interview(page)
    await expect(page.locator("#status")).to_have_text("Interview ended.")
    # The stops travel on the event channel and the hang-up over HTTP: the call can hear
    # the hang-up before it has read the stops, so wait for its answer to the clear too.
    await simulator.state.wait_for(
        lambda: call.hung_up and "output_audio_buffer.cleared" in call.events_sent, CONNECT_S
    )
    sent = list(call.client_events)[sent_before:]
    stops = [e["type"] for e in sent]
    assert stops in (
        ["output_audio_buffer.clear"],
        ["response.cancel", "output_audio_buffer.clear"],
    ), stops
    for event in sent:
        validate_client_event(event)
    assert "output_audio_buffer.cleared" in call.events_sent
    await expect(page.locator("#error")).to_be_hidden()
