"""relay.event_loop: the loop `relay serve` runs on, and the one the tests run on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from relay.config import ConfigError, ServerConfig, load_settings
from relay.event_loop import loop_policy


def test_uvloop_by_default_and_the_standard_loop_on_request() -> None:
    assert ServerConfig().event_loop == "uvloop"
    assert isinstance(loop_policy("uvloop"), uvloop.EventLoopPolicy)
    standard = loop_policy("asyncio")
    assert isinstance(standard, asyncio.DefaultEventLoopPolicy)
    assert not isinstance(standard, uvloop.EventLoopPolicy)


def test_other_loops_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="server.event_loop"):
        load_settings(environ={"RELAY__SERVER__EVENT_LOOP": "trio"})


async def test_the_suite_runs_on_the_shipped_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
