"""OpenAI's own Python client (the ``openai`` package) against the simulator, as a product
written against OpenAI would use it by changing its base URL: a client secret minted with
a standard key, the call made with that ``ek_`` and a real aiortc offer, events and audio,
the hang-up. The simulator over real HTTP and WebRTC on loopback; run inside
``unshare -n``."""

from __future__ import annotations

import json

from openai import AsyncOpenAI

from relay.upstream.simulator.options import DEFAULT_API_KEY
from relay.upstream.simulator.server import RunningSimulator
from tests.integration.interview_helpers import SPEECH
from tests.integration.media_helpers import BrowserPeer, wait_until
from tests.support.openai_oracle import validate_client_secret_response, validate_server_event

WITHIN_S = 15.0
INSTRUCTIONS = "You interview for the backend role; ask one question at a time."


async def test_the_openai_client_mints_calls_talks_and_hangs_up_with_the_simulator(
    simulator: RunningSimulator,
) -> None:
    server = AsyncOpenAI(api_key=DEFAULT_API_KEY, base_url=simulator.base_url)
    minted = await server.realtime.client_secrets.with_raw_response.create(
        session={
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": INSTRUCTIONS,
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        }
    )
    assert minted.status_code == 200
    validate_client_secret_response(json.loads(minted.text))
    secret = minted.parse()
    assert secret.value.startswith("ek_")

    browser = BrowserPeer(payloads=SPEECH)
    try:
        caller = AsyncOpenAI(api_key=secret.value, base_url=simulator.base_url)
        answered = await caller.realtime.calls.with_raw_response.create(sdp=await browser.offer())
        assert answered.status_code == 201
        call_id = answered.headers["location"].rsplit("/", 1)[-1]
        assert call_id.startswith("rtc_")
        await browser.accept(answered.text)
        await browser.wait_connected(WITHIN_S)

        created = await browser.wait_type("session.created", WITHIN_S)
        assert created["session"]["instructions"] == INSTRUCTIONS
        transcribed = await browser.wait_type(
            "conversation.item.input_audio_transcription.completed", WITHIN_S
        )
        await browser.wait_type("response.done", WITHIN_S)
        await wait_until(lambda: browser.speaker.loud_frames() > 20, WITHIN_S, "the reply")
        # A GA client event the Agents SDK sends for every transcribed item.
        browser.send_event(
            {"type": "conversation.item.retrieve", "item_id": transcribed["item_id"]}
        )
        retrieved = await browser.wait_type("conversation.item.retrieved")
        assert retrieved["item"]["id"] == transcribed["item_id"]
        for event in browser.events:
            validate_server_event(event)
        assert "error" not in browser.event_types()

        call = simulator.state.last_call
        assert call is not None
        # Hanging up takes the product's standard key, as with OpenAI (not the client's ek_).
        await server.realtime.calls.hangup(call_id)
        await simulator.state.wait_for(lambda: call.hung_up, WITHIN_S)
    finally:
        await browser.close()
