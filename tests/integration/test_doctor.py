"""`relay doctor` as an operator runs it, against the simulator over real HTTP: every check
passes on a healthy upstream (the simulator playing the real service: it does not name
itself); a refused key or an unavailable model fails with a clear line and a non-zero exit;
checks the built-in simulator answered (no key, or `relay simulate` at OPENAI_BASE_URL) say
SIMULATED and do not pass."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.upstream.simulator import RunningSimulator, SimulatorOptions, start_simulator

KEY = "sk-sim-local"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    """The simulator standing in for the real service (it does not name itself)."""
    simulator = await start_simulator(options=SimulatorOptions(identify=False))
    try:
        yield simulator
    finally:
        await simulator.close()


@pytest.fixture
async def named_sim() -> AsyncIterator[RunningSimulator]:
    """The simulator as `relay simulate` runs it."""
    simulator = await start_simulator(options=SimulatorOptions())
    try:
        yield simulator
    finally:
        await simulator.close()


async def _doctor(tmp_path: Path, base_url: str, **env: str) -> tuple[int, list[str], str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("RELAY", "OPENAI", "DATABASE"))
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "doctor",
        env={**clean, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": base_url, **env},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def _outcomes(lines: list[str]) -> dict[str, str]:
    return {line[6:].split(":", 1)[0]: line[:4].strip() for line in lines if ":" in line}


def _line(lines: list[str], check: str) -> str:
    return next(line for line in lines if line[6:].startswith(f"{check}:"))


async def test_every_check_passes_against_a_healthy_upstream(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    code, lines, err = await _doctor(tmp_path, sim.base_url)
    assert code == 0, (lines, err)
    assert _outcomes(lines) == {
        # Which fast path this installation forwards with (the compiled loop is built by
        # the test command's install; relay/media/fastloop.py).
        "media forwarding": "OK",
        "config": "OK",
        "key": "OK",
        "model": "OK",
        "transcription model": "OK",
        "mint": "OK",
    }
    assert lines[-1] == "all checks passed"
    assert "gpt-realtime-2.1" in _line(lines, "config")
    assert "compiled loop" in _line(lines, "media forwarding")
    assert KEY not in "\n".join(lines) + err
    assert sim.state.requests["models"] == 3 and sim.state.requests["mint"] == 1


async def test_a_refused_key_fails_with_what_to_do(sim: RunningSimulator, tmp_path: Path) -> None:
    await sim.state.update_faults({"reject_api_keys": True})
    code, lines, err = await _doctor(tmp_path, sim.base_url)
    assert code == 1
    outcomes = _outcomes(lines)
    assert (outcomes["key"], outcomes["model"], outcomes["mint"]) == ("FAIL", "SKIP", "SKIP")
    key_line = next(line for line in lines if line.startswith("FAIL  key:"))
    assert "401 invalid_api_key" in key_line and "-> set OPENAI_API_KEY" in key_line
    assert lines[-1] == "1 check(s) failed"
    assert KEY not in "\n".join(lines) + err
    assert sim.state.requests["mint"] == 0


async def test_an_unavailable_model_fails_with_what_to_do(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    await sim.state.update_faults({"accepted_models": ["gpt-realtime-2", "gpt-realtime-whisper"]})
    code, lines, _ = await _doctor(tmp_path, sim.base_url)
    assert code == 1
    outcomes = _outcomes(lines)
    assert (outcomes["key"], outcomes["model"], outcomes["mint"]) == ("OK", "FAIL", "SKIP")
    model_line = next(line for line in lines if line.startswith("FAIL  model:"))
    assert "gpt-realtime-2.1: HTTP 404 model_not_found" in model_line
    assert "-> set upstream.model" in model_line


async def test_a_deprecated_model_warns_and_an_unreachable_upstream_fails(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    code, lines, _ = await _doctor(tmp_path, sim.base_url, RELAY__UPSTREAM__MODEL="gpt-realtime")
    assert code == 0  # deprecated but not shut down: a warning, the checks still pass
    currency = next(line for line in lines if "currency:" in line)
    assert currency.startswith(("WARN", "FAIL")) and "2027-01-20" in currency
    assert "-> set upstream.model = 'gpt-realtime-2.1'" in currency

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env: dict[str, Any] = {"RELAY__UPSTREAM__MINT_TIMEOUT_S": "3"}
    code, lines, _ = await _doctor(tmp_path, f"http://127.0.0.1:{port}/v1", **env)
    assert code == 1
    key_line = next(line for line in lines if line.startswith("FAIL  key:"))
    assert "unreachable" in key_line and "OPENAI_BASE_URL" in key_line


async def test_the_media_line_names_the_python_fast_path_when_configured(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    env = {"RELAY__MEDIA__COMPILED_FAST_PATH": "false"}
    code, lines, err = await _doctor(tmp_path, sim.base_url, **env)
    assert code == 0, (lines, err)
    assert _line(lines, "media forwarding") == (
        "OK    media forwarding: Python fast path (media.compiled_fast_path = false)"
    )


async def test_without_a_key_the_built_in_simulator_is_checked_and_says_simulated(
    tmp_path: Path,
) -> None:
    code, lines, err = await _doctor(tmp_path, "https://api.openai.com/v1", OPENAI_API_KEY="")
    assert code == 4, (lines, err)
    assert "the built-in simulator" in _line(lines, "config")
    outcomes = _outcomes(lines)
    # Every check still runs (the relay's own client against its own simulator)...
    assert (outcomes["key"], outcomes["model"], outcomes["mint"]) == ("OK", "OK", "OK")
    # ... and the verdict says what they are worth.
    upstream = next(line for line in lines if line.startswith("WARN  upstream:"))
    assert "SIMULATED" in upstream and "-> set OPENAI_API_KEY" in upstream
    assert lines[-1].startswith("SIMULATED: no real upstream was checked")
    assert "all checks passed" not in lines


async def test_a_simulator_at_the_configured_url_says_simulated(
    named_sim: RunningSimulator, tmp_path: Path
) -> None:
    code, lines, err = await _doctor(tmp_path, named_sim.base_url)
    assert code == 4, (lines, err)
    upstream = next(line for line in lines if line.startswith("WARN  upstream:"))
    assert f"SIMULATED: {named_sim.base_url}" in upstream
    assert "-> point OPENAI_BASE_URL at the real service" in upstream
    assert lines[-1].startswith("SIMULATED:")
    # A failure still wins over SIMULATED: the exit status says the key is wrong.
    await named_sim.state.update_faults({"reject_api_keys": True})
    code, lines, _ = await _doctor(tmp_path, named_sim.base_url)
    assert code == 1 and lines[-1] == "1 check(s) failed"
    assert any(line.startswith("WARN  upstream: SIMULATED") for line in lines)


async def test_a_shared_simulator_url_is_checked_where_the_relays_reach_it(
    named_sim: RunningSimulator, tmp_path: Path
) -> None:
    """upstream.simulator_url (the simulator every relay shares): the doctor checks that
    one, not a simulator of its own: down, it fails; up, it answers as SIMULATED."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    simulate = {"OPENAI_API_KEY": "", "RELAY__UPSTREAM__SIMULATE": "true"}
    code, lines, err = await _doctor(
        tmp_path, "https://api.openai.com/v1", **simulate, RELAY__UPSTREAM__SIMULATOR_URL=closed
    )
    assert code == 1, (lines, err)
    assert _outcomes(lines)["key"] == "FAIL", lines
    assert lines[-1].endswith("check(s) failed"), lines
    code, lines, err = await _doctor(
        tmp_path,
        "https://api.openai.com/v1",
        **simulate,
        RELAY__UPSTREAM__SIMULATOR_URL=named_sim.base_url,
    )
    assert code == 4, (lines, err)
    upstream = next(line for line in lines if line.startswith("WARN  upstream:"))
    assert f"SIMULATED: {named_sim.base_url}" in upstream, lines
