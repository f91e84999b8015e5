"""The bridge as one state machine: the transition table, each allowed transition taken by a
real bridge (real aiortc peers on loopback), refused ones raising, teardown exactly once
from every state, and the bridge's modules free of import circles."""

from __future__ import annotations

import ast
import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from relay.media.bridge import TRANSITIONS, Bridge, BridgeClosed, BridgeState, InvalidTransition
from relay.media.bridge.state import STATES, check_transition
from relay.upstream.base import MintedSession
from tests.integration.media_helpers import encode_opus, speech_like, wait_until
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)
from tests.unit.test_media_bridge_races import HeldUpstream

SPEECH = encode_opus(speech_like(0.5))
Move = tuple[BridgeState, BridgeState]

# The rules, stated a second time: changing the table must be a deliberate change here too.
ALLOWED: set[Move] = {
    ("new", "negotiating"),
    ("new", "closing"),
    ("negotiating", "connecting"),
    ("negotiating", "closing"),
    ("connecting", "active"),
    ("connecting", "closing"),
    ("active", "closing"),
    ("active", "browser_lost"),
    ("browser_lost", "resuming"),
    ("browser_lost", "closing"),
    ("resuming", "active"),
    ("resuming", "browser_lost"),
    ("resuming", "closing"),
    ("active", "upstream_lost"),
    ("upstream_lost", "active"),
    ("upstream_lost", "closing"),
    ("closing", "closed"),
}

# How a real bridge reaches each state before it closes (see ``_bring_to``).
PATHS: dict[BridgeState, list[Move]] = {
    "new": [],
    "negotiating": [("new", "negotiating")],
    "connecting": [("new", "negotiating"), ("negotiating", "connecting")],
    "active": [("new", "negotiating"), ("negotiating", "connecting"), ("connecting", "active")],
    "browser_lost": [
        ("new", "negotiating"),
        ("negotiating", "connecting"),
        ("connecting", "active"),
        ("active", "browser_lost"),
    ],
    "resuming": [
        ("new", "negotiating"),
        ("negotiating", "connecting"),
        ("connecting", "active"),
        ("active", "browser_lost"),
        ("browser_lost", "resuming"),
    ],
    "upstream_lost": [
        ("new", "negotiating"),
        ("negotiating", "connecting"),
        ("connecting", "active"),
        ("active", "upstream_lost"),
    ],
}
CLOSING: list[Move] = [("closing", "closed")]
# Taken by the resume tests (tests/unit/test_bridge_resume.py): a resumed leg connected,
# and one that failed.
RESUMED: set[Move] = {("resuming", "active"), ("resuming", "browser_lost")}
# Taken by the heal tests (tests/unit/test_bridge_heal.py): a new upstream leg connected.
HEALED: set[Move] = {("upstream_lost", "active")}


# ---------------------------------------------------------------------- the table


@pytest.mark.parametrize(("current", "new"), [(a, b) for a in STATES for b in STATES])
def test_the_table_allows_exactly_the_lifecycle_moves(
    current: BridgeState, new: BridgeState
) -> None:
    if (current, new) in ALLOWED:
        check_transition(current, new)
        assert new in TRANSITIONS[current]
    else:
        with pytest.raises(InvalidTransition) as refused:
            check_transition(current, new)
        assert (refused.value.current, refused.value.new) == (current, new)
        assert f"{current} -> {new}" in str(refused.value)


def test_closing_is_reachable_from_every_state_before_it_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for state in (
        "new",
        "negotiating",
        "connecting",
        "active",
        "browser_lost",
        "resuming",
        "upstream_lost",
    ):
        assert "closing" in TRANSITIONS[state]
    assert TRANSITIONS["closing"] == {"closed"}
    assert TRANSITIONS["closed"] == frozenset()


def test_the_bridges_below_take_every_allowed_transition() -> None:
    """``test_teardown_runs_exactly_once_from_every_state`` checks each of these paths,
    then closing and closed, on a real bridge: together they are the whole table."""
    taken = {move for state, path in PATHS.items() for move in [*path, (state, "closing")]}
    assert taken | set(CLOSING) | RESUMED | HEALED == ALLOWED


# ---------------------------------------------------------------------- real bridges


def state_of(bridge: Bridge) -> BridgeState:
    # A call, not an attribute: mypy would keep ``bridge.state`` narrowed across awaits.
    return bridge.state


@pytest.fixture
def moves(caplog: pytest.LogCaptureFixture) -> Callable[[Bridge], list[tuple[str, str]]]:
    """The transitions a bridge made, in order (``Bridge._set_state`` logs each one)."""
    caplog.set_level(logging.DEBUG, logger="relay.media")

    def of(bridge: Bridge) -> list[tuple[str, str]]:
        pattern = re.compile(rf"session {bridge.session_id}: bridge (\w+) -> (\w+)$")
        found = [pattern.match(record.getMessage()) for record in caplog.records]
        return [(m[1], m[2]) for m in found if m is not None]

    return of


async def _bring_to(rig: Rig, state: BridgeState) -> tuple[Bridge, Callable[[], Awaitable[None]]]:  # noqa: F811
    """A bridge in ``state``, and what to await once it was closed there."""
    if state == "negotiating":
        held = HeldUpstream()  # holds the upstream exchange, so the bridge stays negotiating
        rig.upstream = held
        bridge = rig.bridge()
        start = asyncio.create_task(bridge.start(await rig.browser().offer()))
        async with asyncio.timeout(10):
            await held.entered.wait()

        async def finish_negotiating() -> None:
            held.release.set()
            with pytest.raises(BridgeClosed):
                await start

        return bridge, finish_negotiating

    held_mint = asyncio.Event()

    async def mint_held(request_id: str) -> MintedSession:
        await held_mint.wait()  # the new upstream session never comes: stays upstream_lost
        raise AssertionError("never released")

    bridge = rig.bridge(mint_upstream=mint_held)
    browser = rig.browser(payloads=SPEECH)

    async def nothing() -> None:
        return None

    if state == "connecting":
        await bridge.start(await browser.offer())  # the browser never applies the answer
    elif state == "active":
        await rig.connect(bridge, browser)
    elif state in ("browser_lost", "resuming"):
        await rig.connect(bridge, browser)
        await browser.pc.close()  # the page went away; the interview waits for it
        await wait_until(lambda: bridge.state == "browser_lost", 10, "browser leg lost")
        if state == "resuming":
            # A new page's offer, answered; it never applies the answer.
            await bridge.resume(await rig.browser(payloads=SPEECH).offer())
    elif state == "upstream_lost":
        await rig.connect(bridge, browser)
        await rig.upstream.calls[0].pc.close()  # the interviewer's service dropped the call
        await wait_until(lambda: bridge.state == "upstream_lost", 10, "upstream leg lost")
    return bridge, nothing


@pytest.mark.parametrize("state", list(PATHS))
async def test_teardown_runs_exactly_once_from_every_state(
    rig: Rig,  # noqa: F811
    moves: Callable[[Bridge], list[tuple[str, str]]],
    state: BridgeState,
) -> None:
    bridge, finish = await _bring_to(rig, state)
    assert state_of(bridge) == state
    assert moves(bridge) == PATHS[state]

    teardown = bridge.begin_close("hangup")
    assert state_of(bridge) == "closing"
    # From closing (teardown under way) and then from closed: the same teardown, no other.
    assert bridge.begin_close("relay_shutdown", state="failed") is teardown
    await asyncio.gather(bridge.close("operator_hangup"), bridge.close("idle_media"))
    assert bridge.closed and state_of(bridge) == "closed"
    await bridge.close("again", state="failed")
    await finish()

    assert [f[:2] for f in rig.hooks.finished] == [("ended", "hangup")]
    assert bridge.end_state == "ended" and bridge.end_reason == "hangup"
    assert moves(bridge) == [*PATHS[state], (state, "closing"), *CLOSING]
    # Every upstream call that came into being was hung up, once.
    assert rig.upstream.hangups == [c.call_id for c in rig.upstream.calls]
    for pc in (bridge.browser_pc, bridge.upstream_pc):
        assert pc is None or pc.connectionState == "closed"


async def test_start_after_close_raises_bridge_closed_and_stays_closed(
    rig: Rig,  # noqa: F811
    moves: Callable[[Bridge], list[tuple[str, str]]],
) -> None:
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    await bridge.close("relay_shutdown")
    with pytest.raises(BridgeClosed) as closed:
        await bridge.start(await browser.offer())
    assert closed.value.reason == "relay_shutdown"
    assert bridge.state == "closed"
    assert moves(bridge) == [("new", "closing"), ("closing", "closed")]
    assert rig.hooks.finished == [("ended", "relay_shutdown", 0.0)]
    assert rig.upstream.calls == []


async def test_a_second_start_is_a_refused_transition(
    rig: Rig,  # noqa: F811
    moves: Callable[[Bridge], list[tuple[str, str]]],
) -> None:
    held = HeldUpstream()
    rig.upstream = held
    bridge = rig.bridge()
    browser = rig.browser(payloads=SPEECH)
    offer = await browser.offer()
    first = asyncio.create_task(bridge.start(offer))
    async with asyncio.timeout(10):
        await held.entered.wait()

    # While negotiating: refused, and the first negotiation goes on untouched.
    with pytest.raises(InvalidTransition) as refused:
        await bridge.start(offer)
    assert (refused.value.current, refused.value.new) == ("negotiating", "negotiating")
    assert state_of(bridge) == "negotiating"
    held.release.set()
    await browser.accept(await first)
    await browser.wait_connected()
    await wait_until(lambda: bridge.state == "active", 10, "bridge active")

    # Once active: refused again; the session is still the first one's.
    with pytest.raises(InvalidTransition) as refused:
        await bridge.start(offer)
    assert (refused.value.current, refused.value.new) == ("active", "negotiating")
    assert state_of(bridge) == "active"
    assert len(held.calls) == 1 and rig.hooks.finished == []

    await bridge.close("hangup")
    assert [f[:2] for f in rig.hooks.finished] == [("ended", "hangup")]
    assert moves(bridge) == [*PATHS["active"], ("active", "closing"), *CLOSING]


# ---------------------------------------------------------------------- module structure

BRIDGE = Path(__file__).resolve().parents[2] / "relay" / "media" / "bridge"
PACKAGE = "relay.media.bridge"


def _sibling_imports(path: Path) -> set[str]:
    """The modules of the bridge package ``path`` imports (TYPE_CHECKING ones included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
                found.add("__init__")
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + "."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.removeprefix(PACKAGE).lstrip(".") or "__init__")
    return found


def test_the_bridge_modules_import_one_another_without_a_circle() -> None:
    graph = {
        path.stem: _sibling_imports(path)
        for path in sorted(BRIDGE.glob("*.py"))
        if path.stem != "__init__"
    }
    assert set(graph) >= {"core", "state", "negotiation", "supervision", "teardown"}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as circle:
        pytest.fail(f"import circle in {PACKAGE}: {circle.args[1]}")
    # Only the package's __init__ imports the Bridge; no part reaches back for it.
    assert "__init__" not in order
    assert not [name for name, imports in graph.items() if "core" in imports]
