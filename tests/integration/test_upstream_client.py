"""The upstream client against the simulator over real HTTP (and a real aiortc peer).

Run inside a private network namespace (the WebRTC tests gather loopback candidates):
``unshare -n sh -c 'ip link set lo up && .venv/bin/pytest <this file>'``
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from relay.config import ConfigError, IceConfig, Settings, UpstreamConfig
from relay.media.ice import rtc_configuration
from relay.observability.metrics import SLOW_BUCKETS, MetricsRegistry
from relay.upstream.base import MintedSession, UpstreamError, UpstreamTimeout
from relay.upstream.client import OpenAIRealtimeClient
from relay.upstream.factory import build_upstream_client
from relay.upstream.simulator.server import RunningSimulator, start_simulator

API_KEY = "sk-sim-local"
# Slack on top of a configured timeout for "answered within the timeout" checks.
MARGIN_S = 0.4
CONNECT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------- helpers
def requests_total(metrics: MetricsRegistry, stage: str, outcome: str) -> float:
    counter = metrics.counter("relay_upstream_requests_total", "", ["stage", "outcome"])
    return counter.value(stage=stage, outcome=outcome)


def retries_total(metrics: MetricsRegistry, stage: str) -> float:
    return metrics.counter("relay_upstream_retries_total", "", ["stage"]).value(stage=stage)


def latency_count(metrics: MetricsRegistry, stage: str) -> int:
    histogram = metrics.histogram(
        "relay_upstream_duration_seconds", "", ["stage"], buckets=SLOW_BUCKETS
    )
    return histogram.count(stage=stage)


def assert_no_secrets(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    text = caplog.text
    assert text, "nothing was logged"
    for secret in (API_KEY, *secrets):
        assert secret not in text


def assert_clean(exc: BaseException, *secrets: str) -> None:
    for secret in (API_KEY, *secrets):
        assert secret not in str(exc) and secret not in repr(exc)


async def set_faults(sim: RunningSimulator, changes: dict[str, Any]) -> None:
    """Runtime faults over the simulator's own HTTP control surface."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.root_url}/_sim/faults",
            json=changes,
            headers={"Authorization": f"Bearer {sim.control_token}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


def refused_base_url() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class OfferingPeer:
    """What the relay's upstream leg looks like: one audio track plus ``oai-events``."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(rtc_configuration(IceConfig()))
        self.pc.addTrack(AudioStreamTrack())  # silence, paced in real time
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connected = asyncio.Event()

        @self.channel.on("message")
        def _on_message(message: str | bytes) -> None:
            self.events.put_nowait(json.loads(message))

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    async def first_event(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), CONNECT_TIMEOUT_S)


MakeClient = Callable[..., OpenAIRealtimeClient]
MakeSim = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    sims: list[RunningSimulator] = []

    async def factory() -> RunningSimulator:
        sim = await start_simulator(host="127.0.0.1", port=0)
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        await sim.close()


@pytest.fixture
async def sim(make_sim: MakeSim) -> RunningSimulator:
    return await make_sim()


@pytest.fixture
def metrics() -> MetricsRegistry:
    return MetricsRegistry()


@pytest.fixture
async def make_client(metrics: MetricsRegistry) -> AsyncIterator[MakeClient]:
    clients: list[OpenAIRealtimeClient] = []

    def factory(base_url: str, **changes: Any) -> OpenAIRealtimeClient:
        config = UpstreamConfig(
            api_key=API_KEY,
            base_url=base_url,
            mint_timeout_s=5.0,
            sdp_timeout_s=5.0,
            hangup_timeout_s=2.0,
            mint_retries=2,
            backoff_base_s=0.01,
            retry_after_max_s=2.0,
        )
        client = OpenAIRealtimeClient(config.model_copy(update=changes), metrics=metrics)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def peer() -> AsyncIterator[OfferingPeer]:
    p = OfferingPeer()
    yield p
    await p.pc.close()


@pytest.fixture(autouse=True)
def _capture_relay_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")


# ---------------------------------------------------------------------- happy paths
@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_mint_exchange_connect_and_hang_up(
    dialect: str,
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    peer: OfferingPeer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if dialect == "beta":
        await set_faults(sim, {"beta_disabled": False})  # a simulator started for beta
    client = make_client(sim.base_url, dialect=dialect)
    assert client.dialect == dialect

    minted = await client.mint(request_id="req_happy")
    assert minted.secret.startswith("ek_")
    assert minted.expires_at > time.time()
    assert minted.model == client.model
    assert minted.upstream_session_id and minted.upstream_session_id.startswith("sess_")
    assert sim.state.requests["mint"] == 1

    answer = await client.exchange_sdp(minted, await peer.offer(), request_id="req_happy")
    assert answer.sdp.startswith("v=0")
    await peer.accept(answer.sdp)
    await asyncio.wait_for(peer.connected.wait(), CONNECT_TIMEOUT_S)
    first = await peer.first_event()
    assert first["type"] == "session.created"
    assert first["session"]["model"] == client.model
    assert first["session"]["instructions"] == UpstreamConfig().instructions

    record = sim.state.last_call
    assert record is not None and record.dialect == dialect
    assert record.data_channel_label == "oai-events"
    if dialect == "ga":
        assert answer.call_id == record.call_id
        await client.hangup(answer.call_id)
        await sim.state.wait_for(lambda: record.state == "closed", CONNECT_TIMEOUT_S)
        assert record.hung_up
        assert requests_total(metrics, "hangup", "ok") == 1
    else:
        # Beta has no call id and nothing to hang up server-side.
        assert answer.call_id is None
        await client.hangup(record.call_id)
        assert sim.state.requests["hangup"] == 0
        assert record.state == "connected"

    assert requests_total(metrics, "mint", "ok") == 1
    assert requests_total(metrics, "sdp", "ok") == 1
    assert latency_count(metrics, "mint") == latency_count(metrics, "sdp") == 1
    assert "[req_happy] OPENAI_SESSION_START" in caplog.text
    assert "[req_happy] OPENAI_SESSION_COMPLETE - " in caplog.text
    assert "[req_happy] OPENAI_SDP_EXCHANGE_COMPLETE - " in caplog.text
    assert_no_secrets(caplog, minted.secret)


async def test_factory_overrides_base_url_and_key(sim: RunningSimulator) -> None:
    settings = Settings().replace("upstream", api_key="", base_url="https://api.openai.com/v1")
    client = build_upstream_client(
        settings, MetricsRegistry(), base_url=sim.base_url, api_key=API_KEY
    )
    try:
        minted = await client.mint(request_id="req_factory")
        assert minted.model == "gpt-realtime-2.1" and sim.state.requests["mint"] == 1
    finally:
        await client.close()
    with pytest.raises(ConfigError, match="upstream.api_key"):
        build_upstream_client(settings, MetricsRegistry())


# ---------------------------------------------------------------------- mint errors
async def test_slow_mint_times_out_within_the_timeout(
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await set_faults(sim, {"mint": {"latency_s": 3.0}})
    client = make_client(sim.base_url, mint_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await client.mint(request_id="req_slow")
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.5 + MARGIN_S
    assert info.value.stage == "mint"
    assert sim.state.requests["mint"] == 1
    assert requests_total(metrics, "mint", "timeout") == 1
    assert "[req_slow] OPENAI_SESSION_TIMEOUT" in caplog.text
    assert_no_secrets(caplog)


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retried_then_reported(
    status: int,
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await set_faults(sim, {"mint": {"status": status, "retry_after_s": 0.02}})
    client = make_client(sim.base_url, mint_retries=2)
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_5xx")
    assert (info.value.stage, info.value.status, info.value.code) == (
        "mint",
        status,
        "server_error",
    )
    assert "The server had an error" in info.value.message
    assert sim.state.requests["mint"] == 1 + 2
    assert requests_total(metrics, "mint", "server_error") == 3
    assert retries_total(metrics, "mint") == 2
    assert f"[req_5xx] OPENAI_SESSION_FAILED status={status} code=server_error" in caplog.text
    assert_clean(info.value)
    assert_no_secrets(caplog)


async def test_one_503_then_success(
    sim: RunningSimulator, make_client: MakeClient, metrics: MetricsRegistry
) -> None:
    await set_faults(sim, {"mint": {"status": 503, "times": 1, "retry_after_s": 0.02}})
    client = make_client(sim.base_url)
    minted = await client.mint(request_id="req_once")
    assert minted.secret.startswith("ek_")
    assert sim.state.requests["mint"] == 2
    assert retries_total(metrics, "mint") == 1
    assert requests_total(metrics, "mint", "ok") == 1


@pytest.mark.parametrize(("status", "code"), [(408, "request_timeout"), (409, "conflict")])
async def test_408_and_409_are_retried_as_the_sdk_does(
    status: int, code: str, sim: RunningSimulator, make_client: MakeClient, metrics: MetricsRegistry
) -> None:
    await set_faults(sim, {"mint": {"status": status, "code": code, "times": 1}})
    client = make_client(sim.base_url)
    minted = await client.mint(request_id="req_408")
    assert minted.secret.startswith("ek_")
    assert sim.state.requests["mint"] == 2 and retries_total(metrics, "mint") == 1


async def test_x_should_retry_header_overrides_the_status(
    sim: RunningSimulator, make_client: MakeClient, metrics: MetricsRegistry
) -> None:
    # "true" makes a 400 worth another attempt…
    await set_faults(sim, {"mint": {"status": 400, "times": 1, "should_retry": True}})
    client = make_client(sim.base_url)
    assert (await client.mint(request_id="req_hint")).secret.startswith("ek_")
    assert sim.state.requests["mint"] == 2
    # …and "false" stops a 503 from being retried.
    await set_faults(
        sim, {"mint": {"status": 503, "times": None, "should_retry": False, "retry_after_s": 0}}
    )
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_hint_2")
    assert info.value.status == 503
    assert sim.state.requests["mint"] == 3
    assert retries_total(metrics, "mint") == 1


@pytest.mark.parametrize(("status", "code"), [(400, "unknown_parameter"), (403, "model_not_found")])
async def test_client_errors_are_not_retried(
    status: int,
    code: str,
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await set_faults(sim, {"mint": {"status": status, "code": code}})
    client = make_client(sim.base_url, mint_retries=3)
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_4xx")
    assert (info.value.status, info.value.code) == (status, code)
    assert sim.state.requests["mint"] == 1
    assert retries_total(metrics, "mint") == 0
    assert_no_secrets(caplog)


async def test_wrong_api_key_gives_401_once_and_never_shows_the_key(
    sim: RunningSimulator,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "sk-wrong-0123456789abcdef"
    client = make_client(sim.base_url, api_key=wrong, mint_retries=3)
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_401")
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert sim.state.requests["mint"] == 1
    assert wrong not in repr(client)
    assert_clean(info.value, wrong)
    assert_no_secrets(caplog, wrong)


async def test_beta_disabled_upstream_is_reported_with_its_code(
    sim: RunningSimulator, make_client: MakeClient
) -> None:
    # Like the real service, the simulator refuses the beta shape unless started for it.
    client = make_client(sim.base_url, dialect="beta")
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_beta_off")
    assert (info.value.status, info.value.code) == (400, "beta_api_shape_disabled")
    assert sim.state.requests["mint"] == 1


async def test_429_waits_as_long_as_retry_after_says(
    sim: RunningSimulator, make_client: MakeClient, metrics: MetricsRegistry
) -> None:
    await set_faults(sim, {"mint": {"status": 429, "times": 1, "retry_after_s": 0.6}})
    # The exponential schedule alone would wait at most 10 ms here.
    client = make_client(sim.base_url, backoff_base_s=0.01, retry_after_max_s=2.0)
    started = time.monotonic()
    minted = await client.mint(request_id="req_429")
    elapsed = time.monotonic() - started
    assert minted.secret.startswith("ek_")
    assert sim.state.requests["mint"] == 2
    assert requests_total(metrics, "mint", "rate_limit_exceeded") == 1
    assert elapsed >= 0.6


async def test_retry_after_is_capped(sim: RunningSimulator, make_client: MakeClient) -> None:
    await set_faults(sim, {"mint": {"status": 429, "times": 1, "retry_after_s": 30}})
    client = make_client(sim.base_url, retry_after_max_s=0.2, mint_timeout_s=10.0)
    started = time.monotonic()
    await client.mint(request_id="req_cap")
    elapsed = time.monotonic() - started
    assert sim.state.requests["mint"] == 2
    assert 0.2 <= elapsed < 0.2 + 2 * MARGIN_S


async def test_no_retry_whose_wait_would_pass_the_deadline(
    sim: RunningSimulator, make_client: MakeClient, metrics: MetricsRegistry
) -> None:
    await set_faults(sim, {"mint": {"status": 503, "retry_after_s": 0.35}})
    client = make_client(sim.base_url, mint_timeout_s=0.5, mint_retries=5)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_deadline")
    elapsed = time.monotonic() - started
    # One wait of 0.35 s fits in 0.5 s, a second does not: the 503 comes back early.
    assert info.value.status == 503
    assert sim.state.requests["mint"] == 2
    assert retries_total(metrics, "mint") == 1
    assert 0.35 <= elapsed < 0.5 + MARGIN_S


async def test_slow_retries_share_one_deadline(
    sim: RunningSimulator, make_client: MakeClient
) -> None:
    await set_faults(sim, {"mint": {"status": 503, "latency_s": 0.3, "retry_after_s": 0}})
    client = make_client(sim.base_url, mint_timeout_s=0.5, mint_retries=2)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await client.mint(request_id="req_shared")
    elapsed = time.monotonic() - started
    # Three attempts of 0.3 s each would take 0.9 s; the deadline cuts the second short.
    assert elapsed < 0.5 + MARGIN_S
    assert sim.state.requests["mint"] == 2


async def test_connection_refused_is_upstream_unreachable(
    make_client: MakeClient, metrics: MetricsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(refused_base_url(), mint_retries=2)
    with pytest.raises(UpstreamError) as info:
        await client.mint(request_id="req_refused")
    assert (info.value.status, info.value.code) == (None, "upstream_unreachable")
    # Connection errors are retried too.
    assert requests_total(metrics, "mint", "upstream_unreachable") == 3
    assert retries_total(metrics, "mint") == 2
    minted = MintedSession(secret="ek_not_a_real_secret_0001", expires_at=0, model="gpt-realtime")
    with pytest.raises(UpstreamError) as sdp_info:
        await client.exchange_sdp(minted, "v=0\r\n", request_id="req_refused")
    assert (sdp_info.value.stage, sdp_info.value.code) == ("sdp", "upstream_unreachable")
    assert requests_total(metrics, "sdp", "upstream_unreachable") == 1
    await client.hangup("rtc_gone")  # best effort: no exception
    assert requests_total(metrics, "hangup", "upstream_unreachable") == 1
    assert_clean(sdp_info.value, minted.secret)
    assert_no_secrets(caplog, minted.secret)


# ---------------------------------------------------------------------- SDP errors
async def test_sdp_server_error_is_not_retried(
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    peer: OfferingPeer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(sim.base_url)
    minted = await client.mint(request_id="req_sdp5xx")
    await set_faults(sim, {"calls": {"status": 502}})
    with pytest.raises(UpstreamError) as info:
        await client.exchange_sdp(minted, await peer.offer(), request_id="req_sdp5xx")
    assert (info.value.stage, info.value.status, info.value.code) == ("sdp", 502, "server_error")
    assert sim.state.requests["calls"] == 1
    assert requests_total(metrics, "sdp", "server_error") == 1
    assert "[req_sdp5xx] OPENAI_SDP_EXCHANGE_FAILED status=502 code=server_error" in caplog.text
    assert_clean(info.value, minted.secret)
    assert_no_secrets(caplog, minted.secret)


async def test_sdp_hang_times_out(
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    peer: OfferingPeer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(sim.base_url, sdp_timeout_s=0.5)
    minted = await client.mint(request_id="req_sdphang")
    await set_faults(sim, {"calls": {"hang": True}})
    offer = await peer.offer()
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await client.exchange_sdp(minted, offer, request_id="req_sdphang")
    assert time.monotonic() - started < 0.5 + MARGIN_S
    assert info.value.stage == "sdp"
    assert requests_total(metrics, "sdp", "timeout") == 1
    assert_no_secrets(caplog, minted.secret)


async def test_sdp_error_body_is_read_before_any_sdp(
    sim: RunningSimulator, make_client: MakeClient, peer: OfferingPeer
) -> None:
    client = make_client(sim.base_url)
    minted = await client.mint(request_id="req_offer")
    with pytest.raises(UpstreamError) as info:
        await client.exchange_sdp(minted, "not an offer", request_id="req_offer")
    assert (info.value.status, info.value.code) == (400, "invalid_offer")
    # A model the project can no longer use: minted before, the call is refused.
    await set_faults(sim, {"accepted_models": ["gpt-realtime-mini"]})
    with pytest.raises(UpstreamError) as refused:
        await client.exchange_sdp(minted, await peer.offer(), request_id="req_offer")
    assert (refused.value.status, refused.value.code) == (400, "invalid_value")
    assert sim.state.requests["calls"] == 2


async def test_hangup_is_best_effort(
    sim: RunningSimulator,
    make_client: MakeClient,
    metrics: MetricsRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(sim.base_url, hangup_timeout_s=0.5)
    await client.hangup("rtc_unknown")
    assert requests_total(metrics, "hangup", "call_id_not_found") == 1
    await set_faults(sim, {"hangup": {"hang": True}})
    started = time.monotonic()
    await client.hangup("rtc_unknown")
    assert time.monotonic() - started < 0.5 + MARGIN_S
    assert requests_total(metrics, "hangup", "timeout") == 1
    assert sim.state.requests["hangup"] == 2
    assert "OPENAI_HANGUP_FAILED" in caplog.text
    assert_no_secrets(caplog)


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"api_key": ""}, "upstream.api_key"),
        ({"api_key": "   "}, "upstream.api_key"),
        ({"base_url": "ftp://example.com/v1"}, "upstream.base_url"),
        ({"base_url": "api.openai.com/v1"}, "upstream.base_url"),
        ({"mint_timeout_s": 0}, "upstream.mint_timeout_s"),
        ({"mint_retries": -1}, "upstream.mint_retries"),
    ],
)
def test_invalid_configuration_is_refused(changes: dict[str, Any], key: str) -> None:
    # Unvalidated on purpose: the client checks its configuration on its own too.
    config = UpstreamConfig(api_key="sk-config-test").model_copy(update=changes)
    with pytest.raises(ConfigError, match=key):
        OpenAIRealtimeClient(config, metrics=MetricsRegistry())


def test_mismatched_model_is_a_warning_and_repr_hides_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = UpstreamConfig(
        api_key="sk-config-test",
        base_url="https://user:hunter2@api.example.com/v1",
        model="gpt-4o-realtime-preview-2024-12-17",
    )
    client = OpenAIRealtimeClient(config, metrics=MetricsRegistry())
    assert client.model == "gpt-4o-realtime-preview-2024-12-17" and client.dialect == "ga"
    assert "beta-era preview model" in caplog.text
    assert "hunter2" not in repr(client) and "sk-config-test" not in repr(client)


def test_the_beta_dialect_warns_that_the_service_refuses_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = UpstreamConfig(api_key="sk-config-test", dialect="beta")
    OpenAIRealtimeClient(config, metrics=MetricsRegistry())
    assert "refuses the beta Realtime shape (400 beta_api_shape_disabled)" in caplog.text
    caplog.clear()
    OpenAIRealtimeClient(UpstreamConfig(api_key="sk-config-test"), metrics=MetricsRegistry())
    assert "beta" not in caplog.text
