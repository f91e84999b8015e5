"""axe-core finds nothing wrong with the candidate page in any of its states (pre-flight,
a blocked microphone, the interview, the end), on a desktop and on a phone, in headless
Chromium against the whole relay; a screenshot of each state goes to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from relay.upstream.simulator.server import RunningSimulator
from tests.e2e.conftest import axe_violations, chromium_args, describe_violations, launch_chromium
from tests.integration.conftest import MakeRelay

CONNECT_S = 10
# A desktop browser window, and a phone (an iPhone 12–15's CSS width).
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


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
