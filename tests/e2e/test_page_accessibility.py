"""axe-core finds nothing wrong with the candidate page in any of its states (pre-flight,
a blocked microphone, the interview, the end), on a desktop and on a phone, in headless
Chromium against the whole relay; a screenshot of each state goes to tests/artifacts/.
And what axe cannot see: what a screen reader is told as the interview goes on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import (
    RECORD_TEXTS,
    _write_wav,
    assert_focus_ring_seen,
    axe_violations,
    chromium_args,
    collect_page_errors,
    describe_violations,
    end_interview,
    launch_chromium,
)
from tests.integration.conftest import MakeRelay
from tests.integration.media_helpers import silence
from tests.integration.relay_harness import OPERATOR_TOKEN

CONNECT_S = 10
TURN_S = 15
# A desktop browser window, and a phone (an iPhone 12–15's CSS width).
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


async def chrome_ax_node(page: Page, selector: str) -> dict[str, Any]:
    """The node of ``selector``'s element in Chromium's own accessibility tree (what a screen
    reader is given): its role, name, description and properties."""
    cdp = await page.context.new_cdp_session(page)
    try:
        root = (await cdp.send("DOM.getDocument", {"depth": 0}))["root"]["nodeId"]
        node = await cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})
        tree = await cdp.send(
            "Accessibility.getPartialAXTree", {"nodeId": node["nodeId"], "fetchRelatives": False}
        )
    finally:
        await cdp.detach()
    found: dict[str, Any] = tree["nodes"][0]
    return found


async def chrome_ax_reads(page: Page, selector: str) -> list[str]:
    """The text a screen reader is given inside ``selector``'s element, read from
    Chromium's accessibility tree: its text nodes in order, those hidden from it
    (aria-hidden) left out."""
    cdp = await page.context.new_cdp_session(page)
    try:
        root = (await cdp.send("DOM.getDocument", {"depth": 0}))["root"]["nodeId"]
        node_id = await cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})
        described = await cdp.send("DOM.describeNode", {"nodeId": node_id["nodeId"]})
        backend = described["node"]["backendNodeId"]
        nodes = (await cdp.send("Accessibility.getFullAXTree"))["nodes"]
    finally:
        await cdp.detach()
    by_id = {n["nodeId"]: n for n in nodes}
    read: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("ignored"):
            return
        if node.get("role", {}).get("value") == "StaticText":
            read.append(ax_text(node, "name"))
        for child in node.get("childIds", []):
            if child in by_id:
                walk(by_id[child])

    [start] = [n for n in nodes if n.get("backendDOMNodeId") == backend]
    for child in start.get("childIds", []):
        walk(by_id[child])
    return read


def ax_text(node: dict[str, Any], field: str) -> str:
    return " ".join(str(node.get(field, {}).get("value", "")).split())


async def check_state(
    page: Page, artifact_path: Callable[[str], Path], state: str, size: str
) -> None:
    await page.screenshot(path=str(artifact_path(f"page-{state}-{size}.png")), full_page=True)
    found = await axe_violations(page)
    assert found == [], f"{state} at {size}:\n{describe_violations(found)}"


@pytest.mark.parametrize("size", list(SIZES))
async def test_every_state_is_accessible(
    make_relay: MakeRelay,
    simulator: RunningSimulator,
    page: Page,
    artifact_path: Callable[[str], Path],
    size: str,
) -> None:
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    width, height = SIZES[size]
    await page.set_viewport_size({"width": width, "height": height})

    # Typed token: the field is there.
    await page.goto(str(relay.client.make_url("/")))
    await expect(page.locator("#token")).to_be_visible()
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await check_state(page, artifact_path, "preflight-token-field", size)

    # From a link, with the practice banner and the recording notice.
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#simulated")).to_be_visible()
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await check_state(page, artifact_path, "preflight", size)

    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await expect(page.locator("#transcript li.interviewer").first).to_be_visible(timeout=15_000)
    await check_state(page, artifact_path, "live", size)

    await page.click("#mute")
    await expect(page.locator("#muted-note")).to_be_visible()
    await check_state(page, artifact_path, "live-muted", size)

    await page.click("#stop")
    await expect(page.get_by_role("dialog", name="End the interview?")).to_be_visible()
    await check_state(page, artifact_path, "end-confirm", size)
    await page.click("#end-now")
    await expect(page.locator("#ended")).to_be_visible()
    await check_state(page, artifact_path, "ended", size)


@pytest.mark.parametrize("size", list(SIZES))
async def test_the_microphone_guidance_is_accessible(
    make_relay: MakeRelay, fake_mic_wav: Path, artifact_path: Callable[[str], Path], size: str
) -> None:
    relay = await make_relay()
    width, height = SIZES[size]
    async with launch_chromium(chromium_args(fake_mic_wav, grant=False)) as chromium:
        page = await (await chromium.new_context()).new_page()
        await page.set_viewport_size({"width": width, "height": height})
        await page.goto(str(relay.client.make_url("/")))
        await page.click("#check")
        await expect(page.locator("#mic-problem")).to_have_attribute("data-code", "denied")
        await check_state(page, artifact_path, "preflight-denied", size)


async def test_the_conversation_is_not_read_out_over_the_interviewer(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The transcript, delta by delta, and the turn's "Listening…" / "The interviewer is
    speaking…" are on screen but in no live region: read out, they would talk over the
    interviewer, and a screen reader's voice from the speakers reaches the microphone. What
    the candidate must be told still is."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.add_init_script(RECORD_TEXTS)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    # A whole turn: the candidate heard, the interviewer's answer spoken and written.
    await page.wait_for_function(
        """() => ["Listening…", "The interviewer is speaking…"].every(
            (text) => window.pageTexts.some((t) => t.text === text))""",
        timeout=TURN_S * 1000,
    )
    await expect(page.locator("#transcript li.you").first).to_be_visible(timeout=TURN_S * 1000)
    await expect(page.locator("#transcript li.interviewer").first).to_be_visible()
    texts: list[dict[str, str]] = await page.evaluate("window.pageTexts")
    announced = [t for t in texts if t["live"] != "off"]
    connected = "Connected. Say hello when you are ready."
    assert {"id": "status", "live": "polite", "text": connected} in announced, announced
    # The interviewer's line was written in several steps (the deltas), all on screen.
    interviewer = [t["text"] for t in texts if t["text"].startswith("Interviewer:")]
    assert len(interviewer) > 1, texts
    read_out = [
        t
        for t in announced
        if t["id"] == "transcript"
        or t["text"].startswith(("Interviewer:", "You:"))
        or t["text"] in ("Listening…", "The interviewer is speaking…")
    ]
    assert read_out == [], read_out


async def page_texts(page: Page, since: int = 0) -> list[dict[str, str]]:
    """What the text recorder (RECORD_TEXTS) saw since entry ``since``."""
    texts: list[dict[str, str]] = await page.evaluate("(n) => window.pageTexts.slice(n)", since)
    return texts


async def test_a_retry_is_announced_once_and_its_countdown_is_not_read_out(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """A refused start waiting for its next attempt: the refusal and the retry are said once
    (the status line, a live region), the seconds counting down are on screen only (a screen
    reader would read out a live line that changed every second)."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    shed: list[str] = []

    async def busy_once(route: Route) -> None:
        if not shed:
            shed.append(route.request.url)
            await route.fulfill(
                status=503,
                headers={"Retry-After": "3"},
                json={"error": {"code": "overloaded", "message": "busy", "retryable": True}},
            )
            return
        await route.continue_()

    await page.route("**/api/realtime-session", busy_once)
    await page.add_init_script(RECORD_TEXTS)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    texts = await page_texts(page)
    retry = "The service is very busy right now. Retrying the session (attempt 2 of 4)…"
    waiting = [t for t in texts if t["live"] != "off" and "attempt" in t["text"]]
    assert waiting == [{"id": "status", "live": "polite", "text": retry}], texts
    shown = [t for t in texts if t["live"] == "off" and t["id"] == "activity"]
    assert [t["text"] for t in shown][:4] == [
        "Next attempt in 3 s.",
        "Next attempt in 2 s.",
        "Next attempt in 1 s.",
        "Trying again now (attempt 2 of 4)…",
    ], texts


# The browser's own autoplay policy, once: headless Chromium plays without a click (the
# tests' --autoplay-policy), a browser after a reload may not. The first play() is refused
# as such a browser refuses it.
REFUSE_SOUND_ONCE = """
(() => {
    const play = HTMLMediaElement.prototype.play;
    let refused = false;
    HTMLMediaElement.prototype.play = function () {
        if (refused) return play.call(this);
        refused = true;
        return Promise.reject(new DOMException(
            "play() failed because the user didn't interact with the document first.",
            "NotAllowedError"));
    };
})();
"""


async def test_sound_blocked_by_the_browser_is_said_and_its_button_has_the_focus(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The candidate hears nothing: the page says why (a live region) and puts the focus on
    "Play the interviewer's voice", which plays it."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.add_init_script(REFUSE_SOUND_ONCE)
    await page.add_init_script(RECORD_TEXTS)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    play = page.get_by_role("button", name="Play the interviewer’s voice")
    await expect(play).to_be_focused()
    said = (
        "Your browser blocked the interviewer’s voice: press “Play the interviewer’s voice” "
        "to hear it."
    )
    assert {"id": "play-note", "live": "polite", "text": said} in await page_texts(page)
    await page.keyboard.press("Enter")
    await expect(play).to_be_hidden()
    await expect(page.locator("#play-note")).to_be_empty()
    assert await page.evaluate("document.getElementById('remote').paused") is False
    await expect(page.get_by_role("heading", name="Interview", exact=True)).to_be_focused()


async def test_mute_and_unmute_are_each_said_once(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """One press, one announcement: "Microphone muted." / "Microphone on." (the status
    line). The microphone's hint beside the meter changes too, on screen only."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.add_init_script(RECORD_TEXTS)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    heard = page.locator("#heard")
    await expect(heard).to_have_text("We can hear you.")

    since = len(await page_texts(page))
    await page.click("#mute")
    await expect(heard).to_have_text("Muted: nothing you say is sent.")
    texts = await page_texts(page, since)
    announced = [t for t in texts if t["live"] != "off"]
    assert announced == [{"id": "status", "live": "polite", "text": "Microphone muted."}], texts

    since += len(texts)
    await page.click("#mute")
    # Speaking again: the hint goes from "Say a few words…" to "We can hear you.".
    await expect(heard).to_have_text("We can hear you.", timeout=TURN_S * 1000)
    texts = await page_texts(page, since)
    assert any(t["text"].startswith("Say a few words") for t in texts), texts
    announced = [t for t in texts if t["live"] != "off"]
    assert announced == [{"id": "status", "live": "polite", "text": "Microphone on."}], texts


READY = "Say a few words: the bar moves when we can hear you."
NOT_HEARD = "We cannot hear you yet. Speak up, or choose another microphone."


async def test_the_microphone_check_says_each_of_its_states_once(
    make_relay: MakeRelay, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """A microphone that hears nothing (a silent one): the check says "checking", then
    "ready", then "not heard yet", each once, in one live region (not the status line and
    the hint both); in the call, where the hint is on screen only, "not heard yet" after
    Unmute is said in the status line, after "Microphone on."."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    wav = tmp_path / "silent.wav"
    await asyncio.to_thread(_write_wav, wav, silence(4.0))
    async with launch_chromium(chromium_args(wav)) as chromium:
        page = await (await chromium.new_context()).new_page()
        await page.add_init_script(RECORD_TEXTS)
        # The site may use the microphone (the fake UI grants it): checked at once.
        await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
        heard = page.locator("#heard")
        await expect(heard).to_have_text(NOT_HEARD, timeout=CONNECT_S * 1000)
        texts = await page_texts(page)
        announced = [t for t in texts if t["live"] != "off"]
        assert announced == [
            {"id": "heard", "live": "polite", "text": "Checking your microphone…"},
            {"id": "heard", "live": "polite", "text": READY},
            {"id": "heard", "live": "polite", "text": NOT_HEARD},
        ], texts

        await page.click("#start")
        await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
        await page.click("#mute")
        await expect(heard).to_have_text("Muted: nothing you say is sent.")
        since = len(await page_texts(page))
        await page.click("#mute")
        await expect(page.locator("#status")).to_have_text(NOT_HEARD, timeout=CONNECT_S * 1000)
        await expect(heard).to_have_text(NOT_HEARD)
        texts = await page_texts(page, since)
        announced = [t for t in texts if t["live"] != "off"]
        assert announced == [
            {"id": "status", "live": "polite", "text": "Microphone on."},
            {"id": "status", "live": "polite", "text": NOT_HEARD},
        ], texts


async def test_the_time_left_is_read_in_words_and_the_title_says_the_state(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """The time left, "9:58" on screen, is read "nine fifty-eight" (and the dash before the
    time is known "en dash"): a screen reader is given "9 minutes 58 seconds", in no live
    region (it changes every second). The tab's title says where the interview is. Enter in
    the token field starts."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.add_init_script(RECORD_TEXTS)
    await page.goto(str(relay.client.make_url("/")))
    await expect(page).to_have_title("Voice interview")
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await page.fill("#token", token)
    await page.keyboard.press("Enter")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await expect(page).to_have_title("Voice interview — in progress")

    # The digits (and the dash before them) are hidden from the accessibility tree.
    assert (await chrome_ax_node(page, "#time-left")).get("ignored") is True
    shown = await page.locator("#time-left").inner_text()
    read = await chrome_ax_reads(page, "#call dd")
    assert len(read) == 1 and re.fullmatch(r"(10 minutes|9 minutes \d{1,2} seconds?)", read[0]), (
        shown,
        read,
    )
    # It counts down, in words too, and is never read out by itself.
    await expect(page.locator("#time-left")).not_to_have_text(shown, timeout=3000)
    assert await chrome_ax_reads(page, "#call dd") != read
    texts = await page_texts(page)
    ticking = [t for t in texts if t["id"].startswith("time-left")]
    assert ticking and all(t["live"] == "off" for t in ticking), ticking

    await end_interview(page)
    await expect(page.locator("#ended")).to_be_visible()
    await expect(page).to_have_title("Voice interview — ended")


async def tab_to(page: Page, target: str) -> list[str]:
    """Presses Tab until the element with id ``target`` has the focus (at most ten times):
    the ids of what took it on the way, in order."""
    order: list[str] = []
    for _ in range(10):
        await page.keyboard.press("Tab")
        order.append(await page.evaluate("document.activeElement.id"))
        if order[-1] == target:
            break
    return order


async def test_the_interview_goes_from_start_to_end_with_the_keyboard(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """Start, Mute and End with the keyboard alone; the focus follows each screen (the call's
    heading, the end's), never left behind on a control that went away."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    assert await tab_to(page, "start") == ["mic", "check", "start"]
    await page.keyboard.press("Enter")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await expect(page.get_by_role("heading", name="Interview", exact=True)).to_be_focused()
    assert await tab_to(page, "mute") == ["mute"]
    await page.keyboard.press("Enter")
    await expect(page.locator("#mute")).to_have_text("Unmute microphone")
    assert await tab_to(page, "stop") == ["stop"]
    await page.keyboard.press("Enter")
    await expect(page.locator("#keep-talking")).to_be_focused()
    assert await tab_to(page, "end-now") == ["end-now"]
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="The interview has ended")).to_be_focused()


async def test_the_page_works_where_the_browser_lacks_check_visibility(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """Element.checkVisibility is missing before Safari 17.4 and Firefox 106: the focus
    still follows the screens there (Start into the call's heading; "Keep talking" back to
    End), where the page threw."""
    await page.add_init_script("Element.prototype.checkVisibility = undefined;")
    errors = collect_page_errors(page)
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    assert await tab_to(page, "start") == ["mic", "check", "start"]
    await page.keyboard.press("Enter")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    await expect(page.get_by_role("heading", name="Interview", exact=True)).to_be_focused()
    assert await page.evaluate("typeof document.body.checkVisibility") == "undefined"
    # What the page's focus handling asks of an element: End is shown, Start is not.
    shown = await page.evaluate(
        """import("/static/page-view.js").then((view) => [
               view.shown(document.getElementById("stop")),
               view.shown(document.getElementById("start")),
           ])"""
    )
    assert shown == [True, False]
    await page.click("#stop")
    await page.click("#keep-talking")
    await expect(page.locator("#stop")).to_be_focused()
    assert errors == [], errors


async def test_end_asks_first(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """End is for good, and on a phone it is stacked 8 px from Mute: it asks first, in a
    dialog a screen reader names and describes, with "Keep talking" (the focus, and Escape)
    and "End now". A practice interview too. Nothing is sent to the relay before "End now";
    an end from the relay meanwhile closes the question."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.set_viewport_size({"width": 390, "height": 844})
    hang_ups: list[str] = []
    page.on("request", lambda r: hang_ups.append(r.url) if r.method == "DELETE" else None)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    async with page.expect_response("**/api/realtime-session") as created:
        await page.click("#start")
    session_id: str = (await (await created.value).json())["session_id"]
    await expect(page.locator("#simulated")).to_be_visible()
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    stop, dialog = page.locator("#stop"), page.get_by_role("dialog")

    # Escape: "Keep talking".
    await page.focus("#stop")
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_role("button", name="Keep talking")).to_be_focused()
    node = await chrome_ax_node(page, "#end-confirm")
    assert node["role"]["value"] == "dialog", node
    assert ax_text(node, "name") == "End the interview?", node
    assert ax_text(node, "description") == "You cannot come back to it.", node
    modal = {p["name"]: p["value"].get("value") for p in node.get("properties", [])}
    assert modal.get("modal") is True, node
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(stop).to_be_focused()

    # A tap on "Keep talking": the same.
    await stop.click()
    await page.get_by_role("button", name="Keep talking").click()
    await expect(dialog).to_be_hidden()
    await expect(stop).to_be_focused()
    await expect(page.locator("#connection")).to_have_text("Live")
    assert hang_ups == []

    # The relay ends it while the question is open: the end screen, with the focus.
    await stop.click()
    await expect(dialog).to_be_visible()
    async with relay.client.delete(
        f"/api/sessions/{session_id}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ) as resp:
        assert resp.status == 204
    await expect(page.locator("#end-reason")).to_have_text(
        "The interview was ended by the team running it."
    )
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("heading", name="The interview has ended")).to_be_focused()
    assert hang_ups == []


async def test_a_failed_start_leaves_the_focus_on_start(make_relay: MakeRelay, page: Page) -> None:
    relay = await make_relay()
    token = await relay.add_user(seconds=0)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    assert await tab_to(page, "start") == ["mic", "check", "start"]
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("No interview time is left")
    await expect(page.locator("#start")).to_be_enabled()
    await expect(page.locator("#start")).to_be_focused()


async def test_a_missing_or_refused_token_marks_its_field(
    make_relay: MakeRelay, page: Page
) -> None:
    """The field itself says what is wrong (invalid, described by the error) and has the
    focus, to type the token again; typing clears the mark."""
    relay = await make_relay()
    await page.goto(str(relay.client.make_url("/")))
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    field = page.get_by_label("Your interview token")
    for typed, error in [
        ("", "Please enter your interview token."),
        ("rt_not-a-token", "This token is not valid. Check the link or token you were given."),
    ]:
        await field.fill(typed)
        await expect(field).not_to_have_attribute("aria-invalid", "true")
        await page.focus("#start")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("alert")).to_contain_text(error)
        await expect(field).to_be_focused()
        node = await chrome_ax_node(page, "#token")
        invalid = {p["name"]: p["value"].get("value") for p in node["properties"]}["invalid"]
        assert invalid == "true", node
        assert ax_text(node, "description").startswith(error), node
    await page.keyboard.type("rt_")
    await expect(field).not_to_have_attribute("aria-invalid", "true")


async def test_start_is_described_by_the_recording_notice_and_the_practice_banner(
    make_relay: MakeRelay, page: Page
) -> None:
    """A screen reader user going from control to control with Tab never lands on the
    notice (plain text): Start itself says it, as its description."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#recording-notice")).to_be_visible()
    await expect(page.locator("#start")).to_be_enabled()
    start = await chrome_ax_node(page, "#start")
    assert ax_text(start, "name") == "Start interview"
    notice = " ".join(relay.services.settings.recording.notice_text.split())
    banner = "Practice mode: you are talking to a simulated interviewer, not the real one."
    assert ax_text(start, "description") == f"{banner} {notice}"


async def horizontal_overflow(page: Page) -> list[str]:
    """What sticks out to the right of a 320 px wide page (WCAG 1.4.10, Reflow: no scrolling
    sideways at 320 CSS px, a 1280 px window at 400 % zoom): the page itself, and each
    element wider than the window."""
    found: list[str] = await page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const out = [];
            if (document.documentElement.scrollWidth > width) {
                out.push(`page: ${document.documentElement.scrollWidth} px`);
            }
            for (const el of document.body.querySelectorAll("*")) {
                const box = el.getBoundingClientRect();
                if (box.width > 0 && box.right > width + 0.5) {
                    out.push(`${el.tagName.toLowerCase()}#${el.id}: right edge ${box.right} px`);
                }
            }
            return out;
        }"""
    )
    return found


async def test_the_page_reflows_at_320_px(
    make_relay: MakeRelay, simulator: RunningSimulator, page: Page
) -> None:
    """A phone held upright, or a window zoomed in: nothing scrolls sideways, the error with
    its long reference (req_ and 32 hex digits, no space to break at) included."""
    relay = await make_relay(overrides={"upstream": {"simulate": True}})
    token = await relay.add_user(seconds=600)
    await page.set_viewport_size({"width": 320, "height": 640})
    await page.goto(str(relay.client.make_url("/")))
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await page.fill("#token", "rt_not-a-token")
    await page.click("#start")
    await expect(page.locator("#error")).to_contain_text("(reference req_")
    assert await horizontal_overflow(page) == []

    # A new page load: a fragment changed on the loaded page reloads it (its hashchange),
    # which would race what the test reads next.
    await page.goto("about:blank")
    await page.goto(str(relay.client.make_url("/")) + f"#token={token}")
    await expect(page.locator("#recording-notice")).to_be_visible()
    assert await horizontal_overflow(page) == []
    await page.click("#start")
    await expect(page.locator("#connection")).to_have_text("Live", timeout=CONNECT_S * 1000)
    interviewer = page.locator("#transcript li.interviewer").first
    await expect(interviewer).to_be_visible(timeout=TURN_S * 1000)
    assert await horizontal_overflow(page) == []
    await end_interview(page)
    await expect(page.locator("#ended")).to_be_visible()
    assert await horizontal_overflow(page) == []


async def test_the_keyboard_focus_is_seen_against_the_page(
    make_relay: MakeRelay, page: Page
) -> None:
    """The ring around what has the keyboard's focus contrasts 3:1 at least with the page
    behind it (WCAG 1.4.11, Non-text Contrast; it is drawn 2 px outside the control, on the
    page's background)."""
    relay = await make_relay()
    await page.goto(str(relay.client.make_url("/")))
    await expect(page.locator("#heard")).to_have_text("We can hear you.")
    await page.focus("#token")
    for target in ("mic", "check", "start"):
        await tab_to(page, target)
        await assert_focus_ring_seen(page, f"#{target}")
