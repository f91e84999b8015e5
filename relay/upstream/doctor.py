"""``relay doctor``: check a deployment's upstream end to end, one line per check.

Checks, in order: the configuration (dialect, model currency), the API key
(``GET /v1/models``), the realtime model and the transcription model
(``GET /v1/models/{model}``), and minting a client secret exactly as an interview would (the
relay's own upstream client). A check that cannot run because an earlier one failed is
skipped. Every line says what to do when it is not OK. Minting creates an upstream session
that is never used (it expires unused; no audio, no cost).

Checks answered by the built-in simulator (no OpenAI key, or an upstream that names itself
the simulator: ``SIMULATOR_HEADER``) prove nothing about OpenAI: the doctor then says
SIMULATED and does not pass. Exit status: 0 every check passed against a real upstream,
1 a check failed, 4 the simulator answered (``EXIT_SIMULATED``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import aiohttp

from relay.config import UpstreamConfig, model_for
from relay.observability.metrics import MetricsRegistry
from relay.upstream.base import UpstreamError, UpstreamTimeout
from relay.upstream.client import OpenAIRealtimeClient, public_url
from relay.upstream.dialects import parse_error
from relay.upstream.model_currency import status
from relay.upstream.simulation import SIMULATOR_HEADER

Outcome = Literal["OK", "WARN", "FAIL", "SKIP"]
EXIT_FAILED = 1
# Distinct from a failure, so that a script can tell "the key is wrong" from "no real
# upstream was checked" (2 and 3 are the command line's configuration and database errors).
EXIT_SIMULATED = 4


@dataclass(frozen=True)
class Check:
    outcome: Outcome
    name: str
    detail: str
    # What to do (empty when OK).
    todo: str = ""

    def line(self) -> str:
        text = f"{self.outcome:<4}  {self.name}: {self.detail}"
        return f"{text} -> {self.todo}" if self.todo else text


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    # The built-in simulator answered: nothing was checked against OpenAI.
    simulated: bool = False

    @property
    def ok(self) -> bool:
        return all(c.outcome != "FAIL" for c in self.checks)

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks]


async def run_doctor(config: UpstreamConfig, *, simulated: bool = False) -> Report:
    """Run every check against ``config``'s upstream (``simulated``: the built-in simulator
    stands in because no key is configured)."""
    checks: list[Check] = [_configuration(config, simulated), *_currency(config)]
    timeout = aiohttp.ClientTimeout(total=config.mint_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        key, answered_by_simulator = await _key(http, config)
        checks.append(key)
        if simulated or answered_by_simulator:
            checks.append(_simulated(config, built_in=simulated))
            simulated = True
        if key.outcome == "OK":
            checks.append(await _model(http, config, model_for(config), "model"))
            if config.transcription_model:
                checks.append(
                    await _model(http, config, config.transcription_model, "transcription model")
                )
        else:
            checks.append(Check("SKIP", "model", "needs a working key"))
        if all(c.outcome != "FAIL" for c in checks):
            checks.append(await _mint(config, http))
        else:
            checks.append(Check("SKIP", "mint", "needs a working key and model"))
    return Report(tuple(checks), simulated=simulated)


def _configuration(config: UpstreamConfig, simulated: bool) -> Check:
    where = (
        "the built-in simulator (no OPENAI_API_KEY)" if simulated else public_url(config.base_url)
    )
    detail = f"dialect {config.dialect}, model {model_for(config)}, upstream {where}"
    if config.dialect == "beta":
        return Check(
            "WARN",
            "config",
            detail,
            "OpenAI answers the beta shape 400 beta_api_shape_disabled; set upstream.dialect = "
            '"ga" unless this upstream still serves beta',
        )
    return Check("OK", "config", detail)


def _simulated(config: UpstreamConfig, *, built_in: bool) -> Check:
    if built_in:
        return Check(
            "WARN",
            "upstream",
            "SIMULATED: these checks ran against the built-in simulator, not OpenAI",
            "set OPENAI_API_KEY to check the real upstream",
        )
    return Check(
        "WARN",
        "upstream",
        f"SIMULATED: {public_url(config.base_url)} is the relay's built-in simulator, not OpenAI",
        "point OPENAI_BASE_URL at the real service (or unset it) and set a real OPENAI_API_KEY",
    )


def _currency(config: UpstreamConfig) -> list[Check]:
    checks = []
    for setting, model in (
        ("upstream.model", model_for(config)),
        ("upstream.transcription_model", config.transcription_model),
    ):
        currency = status(model, setting=setting) if model else None
        if currency is None:
            continue
        outcome: Outcome = "FAIL" if currency.level == "error" else "WARN"
        checks.append(
            Check(
                outcome,
                "currency",
                currency.message,
                f"set {setting} = {currency.replacement!r}",
            )
        )
    return checks


async def _get(
    http: aiohttp.ClientSession, config: UpstreamConfig, path: str
) -> tuple[int, bytes, bool]:
    """Status, body, and whether the built-in simulator answered."""
    async with http.get(
        config.base_url.rstrip("/") + path,
        headers={"Authorization": f"Bearer {config.api_key}"},
        allow_redirects=False,
    ) as resp:
        return resp.status, await resp.read(), SIMULATOR_HEADER in resp.headers


def _unreachable(name: str, exc: BaseException) -> Check:
    kind = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
    return Check(
        "FAIL",
        name,
        f"upstream unreachable ({kind})",
        "check upstream.base_url / OPENAI_BASE_URL and the network path to it",
    )


async def _key(http: aiohttp.ClientSession, config: UpstreamConfig) -> tuple[Check, bool]:
    """The key check, and whether the built-in simulator answered it."""
    try:
        status_, body, simulator = await _get(http, config, "/models")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _unreachable("key", exc), False
    if status_ == 200:
        return Check("OK", "key", "accepted"), simulator
    code, message = parse_error(status_, body, (config.api_key,))
    todo = (
        "set OPENAI_API_KEY to a valid key of a project with Realtime access"
        if status_ in (401, 403)
        else "retry later; if it persists, check the upstream's status page"
    )
    return Check("FAIL", "key", f"refused: HTTP {status_} {code}: {message}", todo), simulator


async def _model(
    http: aiohttp.ClientSession, config: UpstreamConfig, model: str, name: str
) -> Check:
    setting = "upstream.model" if name == "model" else "upstream.transcription_model"
    try:
        status_, body, _ = await _get(http, config, f"/models/{quote(model, safe='')}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _unreachable(name, exc)
    if status_ == 200:
        return Check("OK", name, f"{model} is available to this key")
    code, message = parse_error(status_, body, (config.api_key,))
    return Check(
        "FAIL",
        name,
        f"{model}: HTTP {status_} {code}: {message}",
        f"set {setting} to a model this project can use (or grant the project access)",
    )


async def _mint(config: UpstreamConfig, http: aiohttp.ClientSession) -> Check:
    # One attempt, no retries: the doctor reports what happens, it does not hide it.
    client = OpenAIRealtimeClient(
        config.model_copy(update={"mint_retries": 0}), metrics=MetricsRegistry(), session=http
    )
    try:
        minted = await client.mint(request_id="doctor")
    except UpstreamTimeout as exc:
        return Check(
            "FAIL",
            "mint",
            exc.message,
            "raise upstream.mint_timeout_s or check the upstream's status",
        )
    except UpstreamError as exc:
        return Check(
            "FAIL",
            "mint",
            f"HTTP {exc.status} {exc.code}: {exc.message}",
            "fix the setting the error names (relay/upstream/dialects.py builds the body)",
        )
    finally:
        await client.close()
    return Check(
        "OK",
        "mint",
        f"a client secret was minted for {minted.model} (it expires unused)",
    )


async def doctor_main(config: UpstreamConfig, *, simulated: bool = False) -> int:
    """Print one line per check and a verdict (the last line): ``all checks passed`` (0),
    ``N check(s) failed`` (1), or ``SIMULATED: …`` when the built-in simulator answered
    (``EXIT_SIMULATED``; a failure takes precedence)."""
    try:
        # Each check has its own timeout; this bounds the whole run as well.
        async with asyncio.timeout(config.mint_timeout_s * 5 + 5):
            report = await run_doctor(config, simulated=simulated)
    except TimeoutError:
        print("FAIL  doctor: the checks did not finish in time -> check the network", flush=True)
        return EXIT_FAILED
    for line in report.lines():
        print(line, flush=True)
    if not report.ok:
        failed = sum(1 for c in report.checks if c.outcome == "FAIL")
        print(f"{failed} check(s) failed", flush=True)
        return EXIT_FAILED
    if report.simulated:
        print(
            "SIMULATED: no real upstream was checked (the built-in simulator answered)", flush=True
        )
        return EXIT_SIMULATED
    print("all checks passed", flush=True)
    return 0
