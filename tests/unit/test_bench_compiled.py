"""The benchmark's compiled parts: the generator's endpoints carry audio byte for byte, and
the per-packet harnesses measure what they say they do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench import compiled_cost, compiled_endpoints, srtp_libraries
from bench.run import Endpoints, Pair, analyse
from tests.integration.media_helpers import wait_until


@pytest.fixture
async def generator() -> AsyncIterator[None]:
    compiled_endpoints.enable(True)
    try:
        yield
    finally:
        compiled_endpoints.enable(False)


@pytest.mark.usefixtures("generator")
async def test_compiled_endpoints_carry_the_audio_both_ways_byte_for_byte() -> None:
    # Two of the generator's peers talking directly (no relay): each endpoint's audio
    # leaves aiortc for the compiled loop once it was first heard, and keeps arriving.
    endpoints = Endpoints()
    pair = compiled_endpoints.new_pair(0, True)
    media = compiled_endpoints.CompiledMedia()
    try:
        await endpoints.setup(pair, None)
        await wait_until(lambda: bool(pair.at_browser.t and pair.at_upstream.t), 10, "audio")
        media.take_over(pair)
        browser = media.endpoints[(0, "browser")]
        upstream = media.endpoints[(0, "upstream")]
        await wait_until(
            lambda: browser.sink.packets_in > 5 and upstream.sink.packets_in > 5, 10, "compiled"
        )
        media.reset()
        started = time.time()
        await wait_until(
            lambda: browser.sink.packets_in > 160 and upstream.sink.packets_in > 160,
            10,
            "three seconds of audio each way",
        )
        wall = time.time() - started
        media.collect()
        result: dict[str, object] = {}
        analyse(result, [pair], wall)
        assert result["packets_not_identical"] == 0
        assert result["frames_missing"] == 0 and result["seq_missing"] == 0
        assert int(result["latency_samples"]) >= 300  # type: ignore[call-overload]
        # The kernel's receive times follow the compiled sources' send times closely.
        assert 0 <= float(result["latency_p50_ms"]) < 20  # type: ignore[arg-type]
        assert media.counts()["send_refused"] == 0
        # The sources' ticker kept their pace: each packet left within 20 ms of its due time.
        late = media.lateness_summary()
        assert 0 <= late["generator_send_late_p50_ms"] <= late["generator_send_late_max_ms"] < 20  # type: ignore[operator]
        assert media.hops([pair]) == [
            (browser.source.ssrc, upstream.sink.ssrc),
            (upstream.source.ssrc, browser.sink.ssrc),
        ]
    finally:
        await media.close()
        await pair.close()


def test_generator_peers_use_media_sockets_only_when_enabled() -> None:
    async def scenario() -> tuple[bool, bool]:
        results = []
        for enabled in (True, False):
            compiled_endpoints.enable(enabled)
            pair = Pair(0, probe=False)
            endpoints = Endpoints()
            try:
                await endpoints.setup(pair, None)
                assert pair.browser is not None
                transceiver = pair.browser.getTransceivers()[0]
                from relay.media import aiortc_private, udp

                selected = aiortc_private.nominated_pairs(transceiver.receiver.transport)[1]
                transport = aiortc_private.pair_endpoint(selected)[0]
                results.append(isinstance(transport, udp.MediaDatagramTransport))
            finally:
                await pair.close()
        compiled_endpoints.enable(False)
        return results[0], results[1]

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()) == (True, False)
    finally:
        loop.close()


def test_compiled_cost_forwards_every_packet_on_both_paths() -> None:
    for path in compiled_cost.PATHS:
        assert compiled_cost.run(path, 6, 40)["us_per_packet"] > 0
    row = compiled_cost.measure([4], 400, 1)
    assert set(row["ready_4"]) == {"compiled", "python"}
    assert "| 4 |" in compiled_cost.table([row])


def test_srtp_libraries_measures_the_bundled_library() -> None:
    row = srtp_libraries.measure(2000, 1, callgrind=False)
    bundled = row["libraries"]["pylibsrtp (bundled)"]
    assert bundled["version"].startswith("libsrtp2")
    assert bundled["protect_ns"][0] > 0 and bundled["unprotect_ns"][0] > 0
    assert "pylibsrtp (bundled)" in srtp_libraries.table([row])


def test_session_overhead_table_splits_forwarding_from_the_rest() -> None:
    from bench.session_overhead import table

    row = {
        "harness": "session_overhead",
        "sessions": 100,
        "relay_core_idle": 0.002,
        "relay_core_with_audio": 0.2,
        "relay_core_without_audio": 0.13,
        "ms_per_session_s_with_audio": 2.0,
        "ms_per_session_s_without_audio": 1.3,
        "us_per_packet_forwarding_only": 7.0,
    }
    assert "| 100 | 0.002 | 0.2 | 0.13 | 2.0 / 1.3 | 7.0 |" in table([row])


def test_capacity_lists_every_relay_point_with_its_cost_per_packet_and_per_core() -> None:
    from bench.capacity import table

    def point(mode: str, n: int, **values: Any) -> dict[str, Any]:
        row = {"harness": "shipped", "mode": mode, "sessions": n, "frames_missing": 0}
        row |= {"seq_missing": 0, "packets_not_identical": 0}
        return row | values

    rows = [
        point("direct", 30, endpoint_cpu=0.3),
        point("fast", 500, relay_cpu=0.5, relay_cpu_ms_per_session_s=1.0, relay_us_per_packet=10.0),
        point("fast", 600, error="set-up failed"),
    ]
    text = table(rows)
    assert "relay / direct pair at 30, per session" in text
    assert "| 500 | fast | [0.5] | [1.0] | [10.0] | [1000] | [0.1] |" in text
    assert "| 600 |" not in text  # a point that did not run is not a result
